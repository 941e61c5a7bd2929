"""Baselines: composition features by hand, label frequency, light attention honours its mask."""
import numpy as np
import torch

from proloc_lib.features.batching import pad_batch
from proloc_lib.training import baselines


def test_composition_features_by_hand():
    f = baselines.composition_features("AACX")      # X is ignored
    aac, dpc = f[:20], f[20:].reshape(20, 20)
    a, c = baselines._AA_INDEX["A"], baselines._AA_INDEX["C"]
    assert np.isclose(aac[a], 2 / 3) and np.isclose(aac[c], 1 / 3) and np.isclose(aac.sum(), 1)
    assert np.isclose(dpc[a, a], 0.5) and np.isclose(dpc[a, c], 0.5) and np.isclose(dpc.sum(), 1)


def test_label_frequency_is_training_prevalence():
    y = np.array([[1, 0], [1, 1], [0, 0], [1, 0]])
    np.testing.assert_allclose(baselines.label_frequency(y, 3), [[0.75, 0.25]] * 3)


def test_light_attention_ignores_padding_and_learns():
    torch.manual_seed(0)
    model = baselines.LightAttention(6, 3, d_hidden=8).eval()
    seqs = [torch.randn(9, 6), torch.randn(4, 6)]
    x, mask = pad_batch(seqs)
    out = model(x, mask)
    x2 = x.clone()
    x2[~mask] = 50.0
    torch.testing.assert_close(model(x2, mask), out)
    torch.testing.assert_close(model(*pad_batch(seqs[1:])), out[1:], atol=1e-5, rtol=0)
    # a learnable signal: label j on iff feature j is raised somewhere in the sequence
    rng = np.random.default_rng(0)
    Y = (rng.random((80, 3)) < 0.5).astype(np.float32)
    X = []
    for y in Y:
        t = torch.randn(int(rng.integers(5, 15)), 6) * 0.3
        t[int(rng.integers(0, len(t))), :3] += torch.tensor(y) * 3
        X.append(t)
    predict = baselines.fit_light_attention(X[:60], Y[:60], X[60:], Y[60:], epochs=25, seed=0)
    assert ((predict(X[60:]) >= 0.5) == Y[60:]).mean() > 0.85
