"""The composition baseline's logistic regression on splits where a label never varies."""
import warnings

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from proloc_lib.training.baselines import fit_logreg


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
