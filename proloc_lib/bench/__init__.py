"""Benchmarks (they print JSON): the feature store, training throughput, image extraction, and
the dry run's estimate."""
