"""Stage 02's parts: the encoders and the feature store.

``encoders`` (ProtT5 and ViT, real or random-weight), ``store`` (safetensors shard stores),
``sequence`` and ``image`` (extraction), ``batching`` (length buckets, padding),
``variants`` (a profile's extra image stores).
"""
