"""The old entry ``python -m proloc_lib.benchmarks``: replaced by `proloc bench*`, `proloc dry-run`
(it forwards there)."""

if __name__ == "__main__":
    from proloc_lib.cli.legacy import forward

    forward("benchmarks")
