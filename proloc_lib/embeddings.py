"""The old entry ``python -m proloc_lib.embeddings``: replaced by `proloc extract` and `proloc merge`
(it forwards there)."""

if __name__ == "__main__":
    from proloc_lib.cli.legacy import forward

    forward("embeddings")
