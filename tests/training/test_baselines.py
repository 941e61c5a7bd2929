"""Baselines: composition features by hand, label frequency, light attention honours its mask."""
import warnings

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from proloc_lib.features.batching import pad_batch
from proloc_lib.training import baselines
from proloc_lib.training.baselines import fit_logreg


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


def _sklearn(X, Y, Xn):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # its "Label not 1 is present in all training examples"
        clf = make_pipeline(StandardScaler(), OneVsRestClassifier(LogisticRegression(max_iter=3000, random_state=0)))
        return clf.fit(X, Y).predict_proba(Xn)


def test_a_constant_label_gets_its_value_without_a_warning_and_the_rest_are_unchanged():
    rng = np.random.default_rng(0)
    X, Xn = rng.normal(size=(40, 6)), rng.normal(size=(7, 6))
    Y = (rng.random((40, 4)) < 0.5).astype(int)
    Y[:, 1] = 0                                    # no positive training protein
    Y[:, 3] = 1                                    # every training protein positive
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = fit_logreg(X, Y)(Xn)
    assert got.shape == (7, 4)
    assert (got[:, 1] == 0).all() and (got[:, 3] == 1).all()
    np.testing.assert_allclose(got, _sklearn(X, Y, Xn), atol=1e-12)


def test_one_varying_label_and_none():
    rng = np.random.default_rng(1)
    X, Xn = rng.normal(size=(30, 5)), rng.normal(size=(4, 5))
    Y = np.zeros((30, 3), dtype=int)
    Y[:, 0] = rng.random(30) < 0.5
    got = fit_logreg(X, Y)(Xn)
    np.testing.assert_allclose(got, _sklearn(X, Y, Xn), atol=1e-12)
    assert 0 < got[:, 0].min() and got[:, 0].max() < 1
    assert (fit_logreg(X, np.ones((30, 2), dtype=int))(Xn) == 1).all()
