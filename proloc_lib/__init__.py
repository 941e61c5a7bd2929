"""proloc_lib: the helper library behind the ProLoc-IHS reproduction notebooks.

One module per concern: ``config`` (profiles, paths, devices), ``manifest`` (stage
provenance), ``labels`` (location -> five-label mapping), ``sequences`` and ``images``
(validated inputs), ``demo_data`` and ``synthetic`` (the offline demo data), ``hpa`` and
``download`` (the real data), ``splits``, ``encoders`` and ``embeddings`` (feature store),
``model``, ``losses``, ``training``, ``metrics``, ``baselines``, ``figures``.
"""

__version__ = "0.1.0"
