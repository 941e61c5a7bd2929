"""Bootstrap intervals over a test split of too few proteins: a one-line warning, and the
threshold the tables use to mark them as not informative."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from proloc_lib.evaluation import statistics

LABELS = ["a", "b"]


def _pred(model: str, y: np.ndarray, p: np.ndarray) -> pd.DataFrame:
    df = pd.DataFrame({"protein_id": [f"P{i}" for i in range(len(y))], "model": model, "seed": 0,
                       "split": "test", "level": "protein"})
    for j, lab in enumerate(LABELS):
        df[f"y:{lab}"], df[f"p:{lab}"], df[f"t:{lab}"] = y[:, j], p[:, j], 0.5
    return df


def test_one_test_protein_gives_a_degenerate_interval_and_a_one_line_warning():
    pred = _pred("m", np.array([[1, 0]]), np.array([[0.9, 0.2]]))
    with pytest.warns(UserWarning) as record:
        out = statistics.bootstrap_per_label(pred, LABELS, n_boot=50)
    f1 = out[(out["label"] == "a") & (out["metric"] == "f1")].iloc[0]
    assert (f1["value"], f1["ci_low"], f1["ci_high"], f1["n"]) == (1.0, 1.0, 1.0, 1)   # "1.000 [1.000, 1.000]"
    msg = str(record[0].message)
    assert msg == ("per-label intervals of m over only 1 protein(s): a bootstrap interval needs at least 10 to say "
                   "anything; tables mark it as not informative") and "\n" not in msg
    with pytest.warns(UserWarning, match="paired sample-F1 difference over only 1 protein"):
        statistics.bootstrap_f1_difference(pred, pred, LABELS, n_boot=20)


def test_enough_proteins_give_no_warning():
    rng = np.random.default_rng(0)
    y = (rng.random((statistics.MIN_INTERVAL_PROTEINS, 2)) < 0.5).astype(int)
    pred = _pred("m", y, rng.random(y.shape))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        statistics.bootstrap_per_label(pred, LABELS, n_boot=20)
        statistics.bootstrap_f1_difference(pred, pred, LABELS, n_boot=20)


@pytest.mark.parametrize("n, note", [(1, "n=1: too few proteins for an interval"),
                                     (9, "n=9: too few proteins for an interval"), (10, None), (500, None)])
def test_too_few_for_interval(n, note):
    assert statistics.too_few_for_interval(n) == note
