"""Length buckets: every item once, within the token budget; one function for embedding and training."""
import numpy as np

from proloc_lib.features import batching
from proloc_lib.training.datasets import bucketed_batches


def test_length_buckets_respect_budget_and_cover_all():
    lengths = {f"k{i}": n for i, n in enumerate([5, 500, 20, 18, 490, 7, 3000])}
    batches = batching.length_buckets(lengths, token_budget=1000)
    assert sorted(k for b in batches for k in b) == sorted(lengths)
    for b in batches:
        assert len(b) == 1 or max(lengths[k] for k in b) * len(b) <= 1000


def test_one_length_bucketing_function_serves_embedding_and_training():
    rng_lengths = np.random.default_rng(1).integers(10, 2000, size=300)
    for seed in range(3):
        ours = batching.length_buckets(rng_lengths, 16384, 32, rng=np.random.default_rng(seed), jitter=0.1,
                                       shuffle=True)
        theirs = bucketed_batches(rng_lengths, 32, np.random.default_rng(seed), batch_tokens=16384)
        assert ours == theirs
    batches = batching.length_buckets(list(rng_lengths), 5000, 16)
    assert sorted(i for b in batches for i in b) == list(range(300))
    for b in batches:
        assert len(b) <= 16 and (len(b) == 1 or max(rng_lengths[b]) * len(b) <= 5000)
    for a, b in zip(batches, batches[1:]):     # without jitter: buckets of neighbouring lengths, in order
        assert rng_lengths[a].max() <= rng_lengths[b].min()
    # keys in, keys out
    by_key = batching.length_buckets({"a": 5, "b": 500, "c": 7}, 600)
    assert by_key == [["a", "c"], ["b"]]
