"""Notebook 05's tables: an interval over too few test proteins is marked as not informative,
never shown as if it meant something ("1.000 [1.000, 1.000]")."""
from __future__ import annotations

import pandas as pd

from proloc_lib.stages.figures import interval_cell, mark_uninformative


def test_interval_cells():
    assert interval_cell(1.0, 1.0, 1.0, 1) == "1.000 (n=1: too few proteins for an interval)"
    assert interval_cell(0.8125, 0.7011, 0.905, 54) == "0.812 [0.701, 0.905]"
    assert interval_cell(float("nan"), float("nan"), float("nan"), 3) == "undefined (no positive)"


def test_paired_comparisons_over_too_few_proteins_are_marked():
    table = pd.DataFrame({"model A": ["x", "x"], "model B": ["y", "z"], "mean_difference": [0.0, 0.1],
                          "ci_low": [0.0, 0.02], "ci_high": [0.0, 0.2], "n_proteins": [1, 54], "n_boot": [200, 200]})
    out = mark_uninformative(table)
    assert list(out["ci_low"]) == ["n=1: too few proteins for an interval", 0.02]
    assert list(out["ci_high"]) == ["n=1: too few proteins for an interval", 0.2]
    assert list(out["mean_difference"]) == [0.0, 0.1] and table["ci_low"].tolist() == [0.0, 0.02]   # input unchanged
    assert mark_uninformative(pd.DataFrame()).empty
