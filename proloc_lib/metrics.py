"""Multi-label metrics for the five-label localization task, as reported by ProLoc-IHS.

The nine paper metrics follow Zhou et al. / Chou (Y_i = true label set of sample i,
Z_i = predicted set, N samples, L labels):

* sample-based, averaged over samples: absolute true ``mean(Y_i == Z_i)``,
  accuracy ``|Y∩Z|/|Y∪Z|``, precision ``|Y∩Z|/|Z|``, recall ``|Y∩Z|/|Y|``,
  F1 ``2|Y∩Z|/(|Y|+|Z|)``;
* label-based micro (primes in the paper; TP/FP/TN/FN pooled over all labels and
  samples): accuracy' ``(TP+TN)/(N*L)``, precision' ``TP/(TP+FP)``,
  recall' ``TP/(TP+FN)``, F1' ``2TP/(2TP+FP+FN)``.

Zero-denominator convention (the ONE rule used everywhere in this module)
-------------------------------------------------------------------------
A ratio whose denominator is zero is **1.0 when the two sets compared are both empty**
(nothing to find and nothing claimed: perfect agreement) and **0.0 otherwise**. So:

* Y_i and Z_i both empty: accuracy = precision = recall = F1 = 1 (and absolute true = 1);
* Z_i empty, Y_i not: precision 0 (recall, accuracy and F1 are 0 anyway);
* Y_i empty, Z_i not: recall 0 (precision, accuracy and F1 are 0 anyway).

The same rule applies to the micro metrics (on the pooled sets) and to per-label
precision/recall/F1 (on one label's column). Nothing here returns NaN or divides by zero.

Relation to scikit-learn (checked in ``tests/test_metrics.py``):

* absolute true = ``accuracy_score``; hamming loss = ``hamming_loss``; micro accuracy
  = ``1 - hamming_loss``;
* sample accuracy = ``jaccard_score(average="samples", zero_division=1)`` and sample F1
  = ``f1_score(average="samples", zero_division=1)`` exactly, edge cases included
  (sklearn only hits zero_division when both sets are empty, as we do);
* sample/micro/per-label precision and recall equal sklearn's wherever the denominator
  is non-zero. They differ on purpose where it is zero: sklearn returns the constant
  ``zero_division`` whatever the other set holds, so ``zero_division=1`` would score an
  empty prediction of a non-empty truth as precision 1; our rule scores it 0;
* per-label F1 and macro F1 = ``f1_score(average=None / "macro", zero_division=1)``
  exactly (a label absent from both truth and prediction scores F1 = 1);
* per-label average precision = ``average_precision_score`` on that column; it is
  undefined for a label with no positives and is reported as ``None`` (sklearn would
  return a misleading 0.0 with a warning).

Binarization: ``prob >= threshold`` is a positive.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score

from .labels import LABELS

METRIC_NAMES: list[str] = [
    "absolute_true", "accuracy", "precision", "recall", "f1",
    "micro_accuracy", "micro_precision", "micro_recall", "micro_f1",
]
PAPER_NAMES: dict[str, str] = dict(zip(
    METRIC_NAMES,
    ["Absolute true", "Acc", "Pre", "Rec", "F1", "Acc'", "Pre'", "Rec'", "F1'"],
))
PER_LABEL_METRICS: list[str] = ["precision", "recall", "f1", "average_precision",
                                "support", "prevalence"]


# ----------------------------------------------------------------------------- validation

def _as_2d(x, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_samples, n_labels), got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {a.shape}); need at least one sample and one label")
    return a


def _check_same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {name_a} has shape {a.shape}, {name_b} has shape {b.shape}")


def _as_binary(x, name: str) -> np.ndarray:
    """0/1 (or bool) array -> bool array; anything else (2, 0.5, NaN, -1) is an error."""
    a = _as_2d(x, name)
    if a.dtype == bool:
        return a
    if not np.issubdtype(a.dtype, np.number):
        raise ValueError(f"{name} must be numeric 0/1, got dtype {a.dtype}")
    bad = ~((a == 0) | (a == 1))  # NaN compares False to both, so it is caught too
    if bad.any():
        raise ValueError(f"{name} must contain only 0/1; {int(bad.sum())} of {a.size} entries are not "
                         f"(e.g. {a[bad].flat[0]!r}); binarize probabilities first")
    return a == 1


def _as_prob(x, name: str) -> np.ndarray:
    a = _as_2d(x, name)
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise ValueError(f"{name} must be numeric probabilities, got dtype {a.dtype}")
    a = a.astype(np.float64)
    n_nan = int(np.isnan(a).sum())
    if n_nan:
        raise ValueError(f"{name} contains {n_nan} NaN value(s)")
    n_out = int(((a < 0) | (a > 1)).sum())
    if n_out:
        raise ValueError(f"{name} must be probabilities in [0, 1]; {n_out} value(s) are outside "
                         f"(min {a.min():.4g}, max {a.max():.4g})")
    return a


def _thresholds(thresholds, n_labels: int) -> np.ndarray:
    t = np.asarray(thresholds, dtype=np.float64)
    if t.ndim == 0:
        t = np.full(n_labels, float(t))
    elif t.ndim != 1 or t.shape[0] != n_labels:
        raise ValueError(f"thresholds must be a float or one value per label: got shape {t.shape} "
                         f"for {n_labels} labels")
    if np.isnan(t).any() or ((t < 0) | (t > 1)).any():
        raise ValueError(f"thresholds must lie in [0, 1], got {t.tolist()}")
    return t


def _ratio(num, den, both_empty):
    """num/den, with the module's rule where den == 0: 1.0 if both sets are empty, else 0.0.

    Works elementwise on arrays; ``np.divide(where=...)`` never evaluates x/0.
    """
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    fill = np.where(np.asarray(both_empty), 1.0, 0.0)
    out = np.divide(num, den, out=np.broadcast_to(fill, np.broadcast(num, den).shape).copy(),
                    where=den > 0)
    return out


# ----------------------------------------------------------------------------- metrics

def binarize(y_prob, thresholds=0.5) -> np.ndarray:
    """Probabilities (n, L) -> int8 0/1 with ``prob >= threshold``.

    ``thresholds`` is one float for all labels or an array with one value per label.
    """
    p = _as_prob(y_prob, "y_prob")
    t = _thresholds(thresholds, p.shape[1])
    return (p >= t[None, :]).astype(np.int8)


def _counts(y_true: np.ndarray, y_pred: np.ndarray, axis):
    tp = np.sum(y_true & y_pred, axis=axis)
    fp = np.sum(~y_true & y_pred, axis=axis)
    fn = np.sum(y_true & ~y_pred, axis=axis)
    tn = np.sum(~y_true & ~y_pred, axis=axis)
    return tp, fp, fn, tn


def _paper_metrics(t: np.ndarray, p: np.ndarray) -> dict[str, float]:
    # sample-based: per-row set sizes
    tp, fp, fn, _ = _counts(t, p, axis=1)
    n_true, n_pred = tp + fn, tp + fp
    both_empty = (n_true == 0) & (n_pred == 0)
    out = {
        "absolute_true": float(np.mean(np.all(t == p, axis=1))),
        "accuracy": float(np.mean(_ratio(tp, tp + fp + fn, both_empty))),
        "precision": float(np.mean(_ratio(tp, n_pred, both_empty))),
        "recall": float(np.mean(_ratio(tp, n_true, both_empty))),
        "f1": float(np.mean(_ratio(2 * tp, n_true + n_pred, both_empty))),
    }
    # micro: counts pooled over all labels and samples
    TP, FP, FN, TN = (int(c) for c in _counts(t, p, axis=None))
    all_empty = (TP + FN == 0) and (TP + FP == 0)
    out.update({
        "micro_accuracy": (TP + TN) / t.size,  # t.size > 0: empty input is rejected
        "micro_precision": float(_ratio(TP, TP + FP, all_empty)),
        "micro_recall": float(_ratio(TP, TP + FN, all_empty)),
        "micro_f1": float(_ratio(2 * TP, 2 * TP + FP + FN, all_empty)),
    })
    return out


def sample_f1(y_true, y_pred) -> np.ndarray:
    """Per-sample F1 (n,) from 0/1 arrays, with the module's zero-denominator rule."""
    t = _as_binary(y_true, "y_true")
    p = _as_binary(y_pred, "y_pred")
    _check_same_shape(t, p, "y_true", "y_pred")
    tp, fp, fn, _ = _counts(t, p, axis=1)
    return _ratio(2 * tp, 2 * tp + fp + fn, (tp + fn == 0) & (tp + fp == 0))


def f1_at_thresholds(y_true_col, y_prob_col, grid) -> np.ndarray:
    """F1 of one label at each threshold of ``grid`` (``prob >= threshold`` is positive)."""
    y = np.asarray(y_true_col).astype(bool)
    pred = np.asarray(y_prob_col)[None, :] >= np.asarray(grid)[:, None]   # (thresholds, n)
    tp = (pred & y).sum(1)
    return _ratio(2 * tp, pred.sum(1) + y.sum(), (pred.sum(1) == 0) & (y.sum() == 0))


def paper_metrics(y_true, y_pred) -> dict[str, float]:
    """The paper's nine metrics (keys = ``METRIC_NAMES``) from 0/1 arrays of shape (n, L).

    Zero denominators follow the module rule (see module docstring); never NaN.
    """
    t = _as_binary(y_true, "y_true")
    p = _as_binary(y_pred, "y_pred")
    _check_same_shape(t, p, "y_true", "y_pred")
    return _paper_metrics(t, p)


def _default_labels(n_labels: int) -> list[str]:
    # The study's five labels in their canonical column order; generic names otherwise.
    return list(LABELS) if n_labels == len(LABELS) else [f"label_{j}" for j in range(n_labels)]


def full_report(y_true, y_prob, thresholds=0.5, labels: list[str] | None = None) -> dict:
    """Paper metrics plus per-label detail, from 0/1 truth and probabilities (n, L).

    Returns ``{"overall": {nine METRIC_NAMES, "macro_f1", "hamming_loss"},
    "per_label": {label: {"precision", "recall", "f1", "average_precision", "support",
    "prevalence"}}}``. Predictions are ``binarize(y_prob, thresholds)``; average precision
    uses the raw probabilities. ``average_precision`` is ``None`` for a label with no
    positives in ``y_true`` (undefined there). ``support`` is the positive count (int),
    ``prevalence`` = support / n. ``labels`` defaults to the study's five labels when
    L == 5, else ``label_0..``.
    """
    t = _as_binary(y_true, "y_true")
    prob = _as_prob(y_prob, "y_prob")
    _check_same_shape(t, prob, "y_true", "y_prob")
    n, n_labels = t.shape
    if labels is None:
        labels = _default_labels(n_labels)
    labels = list(labels)
    if len(labels) != n_labels:
        raise ValueError(f"got {len(labels)} label names for {n_labels} label columns")
    if len(set(labels)) != len(labels):
        raise ValueError(f"label names must be unique, got {labels}")
    p = binarize(prob, thresholds).astype(bool)

    overall = _paper_metrics(t, p)
    tp, fp, fn, _ = _counts(t, p, axis=0)
    both_empty = (tp + fn == 0) & (tp + fp == 0)
    prec = _ratio(tp, tp + fp, both_empty)
    rec = _ratio(tp, tp + fn, both_empty)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn, both_empty)
    overall["macro_f1"] = float(np.mean(f1))
    overall["hamming_loss"] = float((fp.sum() + fn.sum()) / t.size)

    per_label = {}
    for j, name in enumerate(labels):
        support = int(t[:, j].sum())
        ap = float(average_precision_score(t[:, j], prob[:, j])) if support > 0 else None
        per_label[name] = {
            "precision": float(prec[j]), "recall": float(rec[j]), "f1": float(f1[j]),
            "average_precision": ap, "support": support, "prevalence": support / n,
        }
    return {"overall": overall, "per_label": per_label}


# ----------------------------------------------------------------------------- helpers

def aggregate_by_group(y_prob, groups: Sequence | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean probability per group (e.g. all images of one protein) for protein-level scoring.

    Returns ``(unique_groups, mean_probs)``: groups in order of first appearance and a
    float64 (G, L) array whose row g is the mean of the rows of ``y_prob`` in group g.
    For the matching truth, group the (identical) per-image labels the same way.
    """
    p = _as_prob(y_prob, "y_prob")
    g = np.asarray(groups)
    if g.ndim != 1 or g.shape[0] != p.shape[0]:
        raise ValueError(f"groups must be 1-D with one entry per row: groups has shape {g.shape}, "
                         f"y_prob has shape {p.shape}")
    if pd.isna(g).any():
        raise ValueError(f"groups contains {int(pd.isna(g).sum())} missing value(s)")
    codes, uniques = pd.factorize(g, sort=False)  # first-appearance order
    n_groups = len(uniques)
    sums = np.zeros((n_groups, p.shape[1]), dtype=np.float64)
    np.add.at(sums, codes, p)
    counts = np.bincount(codes, minlength=n_groups)
    return np.asarray(uniques), sums / counts[:, None]
