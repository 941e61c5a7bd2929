"""Thresholds: a label that cannot be tuned keeps a stated fallback, recorded as such."""
import numpy as np
import pandas as pd

from proloc_lib.evaluation import scoring

LABELS = ["a", "b", "c"]


def test_a_label_without_validation_positive_keeps_the_fallback_and_says_so():
    rng = np.random.default_rng(0)
    y = (rng.random((60, 3)) < 0.4).astype(int)
    y[:30, 2] = 0                                          # validation half: no positive of c
    p = np.clip(0.3 * y + 0.3 * rng.random((60, 3)), 0, 1)
    th = scoring.tune_thresholds(y[:30], p[:30], "val")
    assert th[2] == scoring.FALLBACK_THRESHOLD and (th[:2] < 0.5).all()
    prot = pd.DataFrame(y, columns=LABELS).assign(protein_id=[f"P{i}" for i in range(60)])
    res, ths, pred = scoring.evaluate("m", LABELS, prot, (prot.iloc[:30], p[:30]), (prot.iloc[30:], p[30:]),
                                      tune=True, image_level=False)
    assert ths["fallback"] == {"protein": ["c"]}
    fb = res[(res["metric"] == "threshold_fallback") & (res["split"] == "test")].set_index("label")["value"]
    assert fb.to_dict() == {"a": 0.0, "b": 0.0, "c": 1.0}
    thr = res[(res["metric"] == "threshold") & (res["split"] == "test")].set_index("label")["value"]
    assert thr["c"] == scoring.FALLBACK_THRESHOLD
    # a fixed-threshold configuration tunes nothing, so nothing is a fallback
    res, ths, _ = scoring.evaluate("m", LABELS, prot, (prot.iloc[:30], p[:30]), (prot.iloc[30:], p[30:]),
                                   tune=False, image_level=False)
    assert ths["fallback"] == {"protein": []} and (res.loc[res["metric"] == "threshold_fallback", "value"] == 0).all()
