"""What the evaluation tests share: toy scores for three labels with a known signal."""
import numpy as np
import pytest


def _toy_scores(n=80, seed=0, signal=0.5):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 3)) < [0.5, 0.3, 0.2]).astype(int)
    p = np.clip(signal * 0.5 * y + rng.random((n, 3)) * (1 - 0.5 * signal), 0, 1)
    return y, p


@pytest.fixture
def toy_scores():
    """Factory (n=80, seed=0, signal=0.5) -> (y, p): n samples of three labels with prevalence 0.5,
    0.3 and 0.2 (the tests name them a, b, c); the positives' probabilities sit `signal` / 2 higher."""
    return _toy_scores
