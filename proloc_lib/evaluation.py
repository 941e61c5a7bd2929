"""Image- and protein-level evaluation into one tidy results table.

One row per model, level, split, label ("overall" for the sample/micro figures) and metric,
so every notebook appends to the same shape and the figures notebook reads one format.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from . import metrics

COLUMNS = ["model", "level", "split", "seed", "label", "metric", "value"]


def protein_level(samples: pd.DataFrame, probs: np.ndarray, proteins: pd.DataFrame, labels: list[str]):
    """Mean of a protein's image probabilities; returns (protein ids, y_true, probs)."""
    ids, p = metrics.aggregate_by_group(probs, samples["protein_id"].to_numpy())
    y = proteins.set_index("protein_id").loc[list(ids), labels].to_numpy(dtype=int)
    return np.asarray(ids), y, p


def tidy(model: str, level: str, split: str, seed: int, y_true, y_prob, labels: list[str],
         thresholds=0.5) -> pd.DataFrame:
    rep = metrics.full_report(np.asarray(y_true), np.asarray(y_prob), thresholds=thresholds, labels=labels)
    rows = [{"label": "overall", "metric": k, "value": v} for k, v in rep["overall"].items()]
    for lab, d in rep["per_label"].items():
        rows += [{"label": lab, "metric": k, "value": v} for k, v in d.items()]
    df = pd.DataFrame(rows)
    df.insert(0, "seed", seed)
    df.insert(0, "split", split)
    df.insert(0, "level", level)
    df.insert(0, "model", model)
    return df[COLUMNS]


def paper_table(results: pd.DataFrame, level: str = "protein", split: str = "test") -> pd.DataFrame:
    """Models x the paper's nine metrics (+ macro F1), mean over seeds."""
    sel = results[(results["level"] == level) & (results["split"] == split) & (results["label"] == "overall")]
    wide = sel.pivot_table(index="model", columns="metric", values="value", aggfunc="mean")
    cols = [c for c in metrics.METRIC_NAMES + ["macro_f1"] if c in wide.columns]
    return wide[cols].rename(columns=metrics.PAPER_NAMES)
