"""Image- and protein-level evaluation into one tidy results table.

One row per model, configuration, seed, level, split, label ("overall" for the sample/micro
figures) and metric, so every notebook appends to the same shape and the figures notebook
reads one format. Runs of the training stage add ``truth`` (which labels the row is scored
against: the image table's own, named by stage 01, or ``authors_table``: the authors' published
test labels, image level, test split, where the build fetched them) and what the run trained
on (``train_on``, ``train_proteins``, ``train_images``, ``train_samples``). Thresholds are chosen
on the validation split only: ``evaluate`` tunes on the validation predictions it is given and
applies them to the test predictions, and ``tune_thresholds`` refuses any split but "val".
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from proloc_lib.data.hpa import AUTHORS_PREFIX
from proloc_lib.evaluation import metrics

COLUMNS = ["model", "config", "config_hash", "seed", "fold", "level", "split", "label", "metric", "value"]
TRUTH_AUTHORS = "authors_table"     # the authors' own test labels (proloc_ihs_test.csv), image level


def primary_truth(results: pd.DataFrame) -> pd.DataFrame:
    """The rows scored against the image table's own labels (every row of results without ``truth``)."""
    if "truth" not in results.columns:
        return results
    return results[results["truth"] != TRUTH_AUTHORS]


def authors_truth(samples: pd.DataFrame, labels: list[str]) -> np.ndarray | None:
    """The authors' own labels of these image samples, or None unless every sample has them."""
    cols = [AUTHORS_PREFIX + lab for lab in labels]
    if len(samples) == 0 or not all(c in samples.columns for c in cols):
        return None
    y = samples[cols].to_numpy(dtype=float)
    return None if np.isnan(y).any() else y.astype(int)
THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.05), 2)


def protein_level(samples: pd.DataFrame, probs: np.ndarray, proteins: pd.DataFrame, labels: list[str]):
    """Mean of a protein's image probabilities; returns (protein ids, y_true, probs)."""
    ids, p = metrics.aggregate_by_group(probs, samples["protein_id"].to_numpy())
    y = proteins.set_index("protein_id").loc[list(ids), labels].to_numpy(dtype=int)
    return np.asarray(ids), y, p


# The threshold of a label that cannot be tuned (no positive in the validation split: its F1 is
# undefined at every threshold). Recorded as such: ``threshold_fallback`` rows in the tidy metrics,
# ``threshold_fallback`` in the checkpoint.
FALLBACK_THRESHOLD = 0.5


def untunable(y_true) -> np.ndarray:
    """Per label: True where the split has no positive, so no threshold can be tuned on it."""
    return np.asarray(y_true).sum(0) == 0


def tune_thresholds(y_true, y_prob, split: str, grid=THRESHOLD_GRID) -> np.ndarray:
    """Per-label threshold maximising that label's F1 on the validation split.

    Ties go to the threshold closest to 0.5; a label without positives (``untunable``) gets
    ``FALLBACK_THRESHOLD``, not a value "tuned" on an undefined F1.
    """
    if split != "val":
        raise ValueError(f"thresholds may be tuned on the validation split only, not '{split}'")
    y_true, y_prob = np.asarray(y_true), np.asarray(y_prob)
    out = np.full(y_true.shape[1], FALLBACK_THRESHOLD)
    for j in np.flatnonzero(~untunable(y_true)):
        f1 = metrics.f1_at_thresholds(y_true[:, j], y_prob[:, j], grid)
        best = np.flatnonzero(f1 == f1.max())
        out[j] = grid[best[np.argmin(np.abs(grid[best] - 0.5))]]
    return out


def tidy(model: str, level: str, split: str, seed: int, y_true, y_prob, labels: list[str],
         thresholds=0.5, config: str = "", config_hash: str = "", fold: int | None = None, *,
         strict_threshold: bool = False, provenance: str | None = None, fallback=None) -> pd.DataFrame:
    """One run's metrics as tidy rows. Undefined values (a label without positives) are NaN.
    ``provenance`` (``core.provenance.provenance_note``): added as a column, so the CSV says what it is.
    ``fallback`` (one bool per label): the thresholds that are ``FALLBACK_THRESHOLD`` because
    the label could not be tuned; a ``threshold_fallback`` row (1.0 / 0.0) per label."""
    rep = metrics.full_report(np.asarray(y_true), np.asarray(y_prob), thresholds=thresholds, labels=labels,
                              strict=strict_threshold)
    rows = [{"label": "overall", "metric": k, "value": v} for k, v in rep["overall"].items()]
    for lab, d in rep["per_label"].items():
        rows += [{"label": lab, "metric": k, "value": v} for k, v in d.items()]
    th = np.broadcast_to(np.asarray(thresholds, dtype=float), (len(labels),))
    rows += [{"label": lab, "metric": "threshold", "value": float(t)} for lab, t in zip(labels, th)]
    fb = np.zeros(len(labels), dtype=bool) if fallback is None else np.asarray(fallback, dtype=bool)
    rows += [{"label": lab, "metric": "threshold_fallback", "value": float(f)} for lab, f in zip(labels, fb)]
    df = pd.DataFrame(rows).assign(model=model, config=config, config_hash=config_hash, seed=seed,
                                   fold=fold, level=level, split=split)
    if provenance is not None:
        return df[COLUMNS].assign(provenance=provenance)
    return df[COLUMNS]


def evaluate(model: str, labels: list[str], proteins: pd.DataFrame, val: tuple, test: tuple, seed: int = 0,
             tune: bool = False, config: str = "", config_hash: str = "", image_level: bool = True,
             fold: int | None = None, *, strict_threshold: bool = False, provenance: str | None = None,
             truth: str | None = None, training_set: dict | None = None):
    """Score ``(samples, probs)`` pairs for val and test, at image and protein level.

    With ``tune``, per-label thresholds come from the validation predictions of the same
    level; the test predictions are only ever scored; a label without a positive in validation
    keeps ``FALLBACK_THRESHOLD`` (``threshold_fallback`` rows; its label names under
    ``thresholds["fallback"][level]``). ``strict_threshold``: a call is ``prob > t`` (the
    published code) instead of ``prob >= t``. Returns (tidy frame, thresholds by level (and
    ``"fallback"``), prediction frame of both splits; both carry a ``provenance`` column when
    it is given). The tidy frame holds the standard metrics
    (``metrics.METRIC_NAMES``), the paper's formulas (``metrics.PAPER_ONLY_NAMES``), macro F1 /
    AP over the labels with positives, ECE and Brier, and per-label rows (NaN = undefined).

    ``truth`` names the labels the samples carry (a ``truth`` column); when the image-level test
    samples also carry the authors' own labels (``authors_table:<label>``), the test images are
    scored against those too, in rows with ``truth = "authors_table"`` (same predictions and
    thresholds). ``training_set`` (``train_on``, counts) is added as columns.
    """
    frames, thresholds = [], {"fallback": {}}
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
        fallback = untunable(pairs["val"][0]) if tune else np.zeros(len(labels), dtype=bool)
        thresholds[level] = th.tolist()
        thresholds["fallback"][level] = [lab for lab, f in zip(labels, fallback) if f]
        for split, (y, p) in pairs.items():
            frames.append(tidy(model, level, split, seed, y, p, labels, th, config, config_hash, fold,
                               strict_threshold=strict_threshold, provenance=provenance, fallback=fallback))
            if truth is not None:
                frames[-1]["truth"] = truth
        theirs = authors_truth(test[0], labels) if level == "image" and truth is not None else None
        if theirs is not None:
            frames.append(tidy(model, level, "test", seed, theirs, test[1], labels, th, config, config_hash, fold,
                               strict_threshold=strict_threshold, provenance=provenance,
                               fallback=fallback).assign(truth=TRUTH_AUTHORS))
    preds = pd.concat([prediction_frame(model, seed, split, samples, probs, proteins, labels, thresholds)
                       for split, (samples, probs) in (("val", val), ("test", test))], ignore_index=True)
    if provenance is not None:
        preds["provenance"] = provenance
    out = pd.concat(frames, ignore_index=True)
    for key, value in (training_set or {}).items():
        out[key] = value
    return out, thresholds, preds


def prediction_frame(model: str, seed: int, split: str, samples: pd.DataFrame, probs: np.ndarray,
                     proteins: pd.DataFrame, labels: list[str], thresholds: dict | None = None) -> pd.DataFrame:
    """Long-lived predictions for figures and paired tests: one row per image and per protein."""
    frames, levels = [], []
    if "image_id" in samples:   # image-level samples; protein-level tables have no image rows
        img = pd.DataFrame({"id": samples["image_id"].to_numpy(), "protein_id": samples["protein_id"].to_numpy()})
        levels.append(("image", img, samples[labels].to_numpy(dtype=int), probs))
    ids, y, p = protein_level(samples, probs, proteins, labels)
    levels.append(("protein", pd.DataFrame({"id": ids, "protein_id": ids}), y, p))
    for level, keys, y_true, prob in levels:
        th = np.asarray((thresholds or {}).get(level, [0.5] * len(labels)))
        df = keys.assign(model=model, seed=seed, split=split, level=level)
        for j, lab in enumerate(labels):
            df[f"y:{lab}"] = y_true[:, j]
            df[f"p:{lab}"] = prob[:, j]
            df[f"t:{lab}"] = th[j]
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def unpack(pred: pd.DataFrame, labels: list[str]):
    """(y_true, probs, thresholds) arrays from a prediction frame slice."""
    return (pred[[f"y:{lab}" for lab in labels]].to_numpy(dtype=int), pred[[f"p:{lab}" for lab in labels]].to_numpy(),
            pred[[f"t:{lab}" for lab in labels]].iloc[0].to_numpy() if len(pred) else np.full(len(labels), 0.5))
