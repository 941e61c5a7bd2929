"""Image- and protein-level evaluation into one tidy results table.

One row per model, configuration, seed, level, split, label ("overall" for the sample/micro
figures) and metric, so every notebook appends to the same shape and the figures notebook
reads one format. Thresholds are chosen on the validation split only: ``evaluate`` tunes
on the validation predictions it is given and applies them to the test predictions, and
``tune_thresholds`` refuses any split but "val".
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from . import metrics

COLUMNS = ["model", "config", "config_hash", "seed", "level", "split", "label", "metric", "value"]
THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.05), 2)


def protein_level(samples: pd.DataFrame, probs: np.ndarray, proteins: pd.DataFrame, labels: list[str]):
    """Mean of a protein's image probabilities; returns (protein ids, y_true, probs)."""
    ids, p = metrics.aggregate_by_group(probs, samples["protein_id"].to_numpy())
    y = proteins.set_index("protein_id").loc[list(ids), labels].to_numpy(dtype=int)
    return np.asarray(ids), y, p


def tune_thresholds(y_true, y_prob, split: str, grid=THRESHOLD_GRID) -> np.ndarray:
    """Per-label threshold maximising that label's F1 on the validation split.

    Ties go to the threshold closest to 0.5; a label without positives keeps 0.5.
    """
    if split != "val":
        raise ValueError(f"thresholds may be tuned on the validation split only, not '{split}'")
    y_true, y_prob = np.asarray(y_true), np.asarray(y_prob)
    out = np.full(y_true.shape[1], 0.5)
    for j in range(y_true.shape[1]):
        if y_true[:, j].sum() == 0:
            continue
        f1 = []
        for t in grid:
            pred = y_prob[:, j] >= t
            tp = np.sum(pred & (y_true[:, j] == 1))
            f1.append(2 * tp / max(1, pred.sum() + y_true[:, j].sum()))
        f1 = np.array(f1)
        best = np.flatnonzero(f1 == f1.max())
        out[j] = grid[best[np.argmin(np.abs(grid[best] - 0.5))]]
    return out


def tidy(model: str, level: str, split: str, seed: int, y_true, y_prob, labels: list[str],
         thresholds=0.5, config: str = "", config_hash: str = "") -> pd.DataFrame:
    rep = metrics.full_report(np.asarray(y_true), np.asarray(y_prob), thresholds=thresholds, labels=labels)
    rows = [{"label": "overall", "metric": k, "value": v} for k, v in rep["overall"].items()]
    for lab, d in rep["per_label"].items():
        rows += [{"label": lab, "metric": k, "value": v} for k, v in d.items()]
    th = np.broadcast_to(np.asarray(thresholds, dtype=float), (len(labels),))
    rows += [{"label": lab, "metric": "threshold", "value": float(t)} for lab, t in zip(labels, th)]
    df = pd.DataFrame(rows).assign(model=model, config=config, config_hash=config_hash, seed=seed,
                                   level=level, split=split)
    return df[COLUMNS]


def evaluate(model: str, labels: list[str], proteins: pd.DataFrame, val: tuple, test: tuple, seed: int = 0,
             tune: bool = False, config: str = "", config_hash: str = "", image_level: bool = True):
    """Score ``(samples, probs)`` pairs for val and test, at image and protein level.

    With ``tune``, per-label thresholds come from the validation predictions of the same
    level; the test predictions are only ever scored. Returns (tidy frame, thresholds by level).
    """
    frames, thresholds = [], {}
    levels = (["image"] if image_level else []) + ["protein"]
    for level in levels:
        pairs = {}
        for split, (samples, probs) in (("val", val), ("test", test)):
            if level == "image":
                pairs[split] = (samples[labels].to_numpy(dtype=int), probs)
            else:
                _, y, p = protein_level(samples, probs, proteins, labels)
                pairs[split] = (y, p)
        th = tune_thresholds(*pairs["val"], split="val") if tune else np.full(len(labels), 0.5)
        thresholds[level] = th.tolist()
        for split, (y, p) in pairs.items():
            frames.append(tidy(model, level, split, seed, y, p, labels, th, config, config_hash))
    return pd.concat(frames, ignore_index=True), thresholds


def paper_table(results: pd.DataFrame, level: str = "protein", split: str = "test") -> pd.DataFrame:
    """Models x the paper's nine metrics (+ macro F1), mean over seeds."""
    sel = results[(results["level"] == level) & (results["split"] == split) & (results["label"] == "overall")]
    wide = sel.pivot_table(index="model", columns="metric", values="value", aggfunc="mean")
    cols = [c for c in metrics.METRIC_NAMES + ["macro_f1"] if c in wide.columns]
    return wide[cols].rename(columns=metrics.PAPER_NAMES)
