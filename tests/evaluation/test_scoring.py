"""Scoring: thresholds are tuned on validation only; test labels cannot move them; a label that
cannot be tuned keeps a stated fallback, recorded as such."""
import numpy as np
import pandas as pd
import pytest

from proloc_lib.data.labels import LABELS
from proloc_lib.evaluation import scoring

ABC = ["a", "b", "c"]


def test_thresholds_are_tuned_on_validation_only():
    rng = np.random.default_rng(0)
    y = (rng.random((60, 5)) < 0.3).astype(int)
    p = np.clip(y * 0.3 + rng.random((60, 5)) * 0.3, 0, 1)   # positives sit higher, below 0.5
    th = scoring.tune_thresholds(y, p, split="val")
    assert (th < 0.5).all()
    with pytest.raises(ValueError, match="validation"):
        scoring.tune_thresholds(y, p, split="test")
    prot = pd.DataFrame(y, columns=LABELS).assign(protein_id=[f"P{i}" for i in range(60)])
    val, test = prot.iloc[:30], prot.iloc[30:]
    res, ths, _ = scoring.evaluate("m", LABELS, prot, (val, p[:30]), (test, p[30:]), tune=True, image_level=False)
    np.testing.assert_allclose(ths["protein"], scoring.tune_thresholds(y[:30], p[:30], "val"))
    # changing test labels cannot change the thresholds
    prot2 = prot.copy()
    prot2.loc[30:, LABELS] = 1 - prot2.loc[30:, LABELS]
    _, ths2, _ = scoring.evaluate("m", LABELS, prot2, (prot2.iloc[:30], p[:30]), (prot2.iloc[30:], p[30:]),
                                  tune=True, image_level=False)
    assert ths == ths2


def test_a_label_without_validation_positive_keeps_the_fallback_and_says_so():
    rng = np.random.default_rng(0)
    y = (rng.random((60, 3)) < 0.4).astype(int)
    y[:30, 2] = 0                                          # validation half: no positive of c
    p = np.clip(0.3 * y + 0.3 * rng.random((60, 3)), 0, 1)
    th = scoring.tune_thresholds(y[:30], p[:30], "val")
    assert th[2] == scoring.FALLBACK_THRESHOLD and (th[:2] < 0.5).all()
    prot = pd.DataFrame(y, columns=ABC).assign(protein_id=[f"P{i}" for i in range(60)])
    res, ths, pred = scoring.evaluate("m", ABC, prot, (prot.iloc[:30], p[:30]), (prot.iloc[30:], p[30:]),
                                      tune=True, image_level=False)
    assert ths["fallback"] == {"protein": ["c"]}
    fb = res[(res["metric"] == "threshold_fallback") & (res["split"] == "test")].set_index("label")["value"]
    assert fb.to_dict() == {"a": 0.0, "b": 0.0, "c": 1.0}
    thr = res[(res["metric"] == "threshold") & (res["split"] == "test")].set_index("label")["value"]
    assert thr["c"] == scoring.FALLBACK_THRESHOLD
    # a fixed-threshold configuration tunes nothing, so nothing is a fallback
    res, ths, _ = scoring.evaluate("m", ABC, prot, (prot.iloc[:30], p[:30]), (prot.iloc[30:], p[30:]),
                                   tune=False, image_level=False)
    assert ths["fallback"] == {"protein": []} and (res.loc[res["metric"] == "threshold_fallback", "value"] == 0).all()
