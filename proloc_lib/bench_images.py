"""The old entry ``python -m proloc_lib.bench_images``: replaced by `proloc bench-images` (it forwards there)."""

if __name__ == "__main__":
    from proloc_lib.cli.legacy import forward

    forward("bench_images")
