"""Multi-label metrics for the five-label localization task: the standard ones and the paper's.

Notation (Zhang & Zhou 2014, "A review on multi-label learning algorithms"): Y_i = true label
set of sample i, Z_i = predicted set, N samples, L labels.

Standard example-based metrics (Zhang & Zhou), averaged over samples, names without suffix:
absolute true (subset accuracy) ``mean(Y_i == Z_i)``, accuracy ``|Y∩Z|/|Y∪Z|``, precision
``|Y∩Z|/|Z|``, recall ``|Y∩Z|/|Y|``, F1 ``2|Y∩Z|/(|Y|+|Z|)`` (the mean of per-sample F1).
Label-based micro (primes in the paper; TP/FP/TN/FN pooled over labels and samples):
accuracy' ``(TP+TN)/(N*L)``, precision' ``TP/(TP+FP)``, recall' ``TP/(TP+FN)``, F1'
``2TP/(2TP+FP+FN)``.

The paper's formulas (the published ``test.py``, ``sample_based_metrics``), suffix ``_paper``:

* ``precision_paper`` = mean over samples of ``|Y∩Z|/|Z|`` with **1** for an empty prediction;
* ``recall_paper`` = mean of ``|Y∩Z|/|Y|`` with **1** for an empty label set;
* ``f1_paper`` = ``2·Pre·Rec/(Pre+Rec)`` from the **averaged** Pre and Rec above (0 if both 0),
  not the mean of per-sample F1.

The published ATR and Acc (Jaccard, 1 for an empty union) are the standard formulas; so are
its micro Acc'/Pre'/Rec'/F1', except where a pooled denominator is zero (no positive and no
call in the whole split), where the published code returns 0 and we return 1 (both sets empty).

Zero-denominator rule of the standard metrics
---------------------------------------------
A sample or micro ratio whose denominator is zero is **1.0 when the two sets compared are both
empty** and **0.0 otherwise**. So Y_i and Z_i both empty score 1; Z_i empty with Y_i not scores
precision 0 (the paper scores 1); Y_i empty with Z_i not scores recall 0 (the paper scores 1).

Per label (one column), a label with **no positive** in the split cannot be assessed: its
recall, F1 and average precision are **undefined (NaN)**, never 1.0; precision is NaN for a
label that is never called. ``macro_f1`` averages the labels whose F1 is defined and
``n_labels_scored`` says how many that is.

Relation to scikit-learn (checked in ``tests/evaluation/test_metrics.py``): absolute true =
``accuracy_score``; sample accuracy and F1 = ``jaccard_score`` / ``f1_score(average="samples",
zero_division=1)``; micro accuracy = ``1 - hamming_loss``; per-label precision/recall/F1 =
``precision_recall_fscore_support`` wherever defined; per-label AP = ``average_precision_score``.

Binarization: ``prob >= threshold`` is a positive (the published code uses ``prob > 0.5``;
``binarize(strict=True)`` gives that; the two differ only at a probability exactly equal to
the threshold).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score

from proloc_lib.data.labels import LABELS

METRIC_NAMES: list[str] = [
    "absolute_true", "accuracy", "precision", "recall", "f1",
    "micro_accuracy", "micro_precision", "micro_recall", "micro_f1",
]
# The paper's formulas where they differ from the standard ones (see module docstring).
PAPER_ONLY_NAMES: list[str] = ["precision_paper", "recall_paper", "f1_paper"]
# The paper's nine metrics, each computed with the published formula.
PAPER_SET: list[str] = ["absolute_true", "accuracy", "precision_paper", "recall_paper", "f1_paper",
                        "micro_accuracy", "micro_precision", "micro_recall", "micro_f1"]
# Display names: the standard metrics keep the paper's short names, the paper's own formulas
# carry ``_paper``, so no table shows two different numbers under one name.
PAPER_NAMES: dict[str, str] = dict(zip(
    METRIC_NAMES,
    ["Absolute true", "Acc", "Pre", "Rec", "F1", "Acc'", "Pre'", "Rec'", "F1'"],
))
DISPLAY_NAMES: dict[str, str] = {**PAPER_NAMES, "precision_paper": "Pre_paper", "recall_paper": "Rec_paper",
                                 "f1_paper": "F1_paper", "macro_f1": "macro F1", "macro_ap": "macro AP",
                                 "hamming_loss": "Hamming loss", "ece": "ECE", "brier": "Brier"}
PER_LABEL_METRICS: list[str] = ["precision", "recall", "f1", "average_precision",
                                "support", "prevalence"]
UNDEFINED_NOTE = "NaN = undefined: the label has no positive in this split (or, for precision, is never called)"


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

def binarize(y_prob, thresholds=0.5, *, strict: bool = False) -> np.ndarray:
    """Probabilities (n, L) -> int8 0/1 with ``prob >= threshold`` (``prob > threshold`` if strict,
    as the published code).

    ``thresholds`` is one float for all labels or an array with one value per label.
    """
    p = _as_prob(y_prob, "y_prob")
    t = _thresholds(thresholds, p.shape[1])
    return ((p > t[None, :]) if strict else (p >= t[None, :])).astype(np.int8)


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


def published_sample_metrics(t: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """Pre, Rec and F1 exactly as the published ``test.py`` computes them (bool arrays)."""
    tp, fp, fn, _ = _counts(t, p, axis=1)
    n_true, n_pred = tp + fn, tp + fp
    pre = float(np.mean(_ratio(tp, n_pred, n_pred == 0)))    # empty prediction: 1
    rec = float(np.mean(_ratio(tp, n_true, n_true == 0)))    # empty label set: 1
    f1 = 2 * pre * rec / (pre + rec) if pre + rec > 0 else 0.0   # from the averaged Pre and Rec
    return {"precision_paper": pre, "recall_paper": rec, "f1_paper": float(f1)}


def sample_f1(y_true, y_pred) -> np.ndarray:
    """Per-sample F1 (n,) from 0/1 arrays, with the module's zero-denominator rule."""
    t = _as_binary(y_true, "y_true")
    p = _as_binary(y_pred, "y_pred")
    _check_same_shape(t, p, "y_true", "y_pred")
    tp, fp, fn, _ = _counts(t, p, axis=1)
    return _ratio(2 * tp, 2 * tp + fp + fn, (tp + fn == 0) & (tp + fp == 0))


def f1_at_thresholds(y_true_col, y_prob_col, grid) -> np.ndarray:
    """F1 of one label at each threshold of ``grid`` (``prob >= threshold`` is positive).

    All NaN where the label has no positive: F1 is undefined there at every threshold (as in
    ``full_report``), not 1.0 for "no call, no positive"."""
    y = np.asarray(y_true_col).astype(bool)
    grid = np.asarray(grid, dtype=float)
    if not y.any():
        return np.full(grid.shape, np.nan)
    pred = np.asarray(y_prob_col)[None, :] >= grid[:, None]   # (thresholds, n)
    tp = (pred & y).sum(1)
    return _ratio(2 * tp, pred.sum(1) + y.sum(), False)


def paper_metrics(y_true, y_pred) -> dict[str, float]:
    """The nine standard metrics (keys = ``METRIC_NAMES``) from 0/1 arrays of shape (n, L).

    Zero denominators follow the module rule (see module docstring); never NaN. The paper's
    own Pre/Rec/F1 formulas: ``published_metrics``.
    """
    t = _as_binary(y_true, "y_true")
    p = _as_binary(y_pred, "y_pred")
    _check_same_shape(t, p, "y_true", "y_pred")
    return _paper_metrics(t, p)


def published_metrics(y_true, y_pred) -> dict[str, float]:
    """``precision_paper``, ``recall_paper``, ``f1_paper`` (the published formulas) from 0/1 arrays."""
    t = _as_binary(y_true, "y_true")
    p = _as_binary(y_pred, "y_pred")
    _check_same_shape(t, p, "y_true", "y_pred")
    return published_sample_metrics(t, p)


def _default_labels(n_labels: int) -> list[str]:
    # The study's five labels in their canonical column order; generic names otherwise.
    return list(LABELS) if n_labels == len(LABELS) else [f"label_{j}" for j in range(n_labels)]


def full_report(y_true, y_prob, thresholds=0.5, labels: list[str] | None = None, *,
                strict: bool = False) -> dict:
    """Standard and paper metrics plus per-label detail, from 0/1 truth and probabilities (n, L).

    Returns ``{"overall": {nine METRIC_NAMES, the three PAPER_ONLY_NAMES, "macro_f1", "macro_ap",
    "n_labels_scored", "hamming_loss", "ece", "brier", "n"}, "per_label": {label: {"precision",
    "recall", "f1", "average_precision", "brier", "support", "prevalence"}}}``. Predictions are
    ``binarize(y_prob, thresholds, strict=strict)``; average precision and calibration use the
    raw probabilities. Per-label recall, F1 and AP are NaN for a label with no positives in
    ``y_true`` (undefined there, never 1.0); precision is NaN for a label never called.
    ``support`` is the positive count (int), ``prevalence`` = support / n. ``labels`` defaults to
    the study's five labels when L == 5, else ``label_0..``.
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
    p = binarize(prob, thresholds, strict=strict).astype(bool)

    overall = _paper_metrics(t, p)
    overall.update(published_sample_metrics(t, p))
    tp, fp, fn, _ = _counts(t, p, axis=0)
    has_pos, called = (tp + fn) > 0, (tp + fp) > 0
    prec = np.where(called, _ratio(tp, tp + fp, False), np.nan)
    rec = np.where(has_pos, _ratio(tp, tp + fn, False), np.nan)
    f1 = np.where(has_pos, _ratio(2 * tp, 2 * tp + fp + fn, False), np.nan)
    ap = np.array([average_precision_score(t[:, j], prob[:, j]) if has_pos[j] else np.nan
                   for j in range(n_labels)])
    overall["macro_f1"] = float(np.mean(f1[has_pos])) if has_pos.any() else float("nan")
    overall["macro_ap"] = float(np.mean(ap[has_pos])) if has_pos.any() else float("nan")
    overall["n_labels_scored"] = int(has_pos.sum())
    overall["hamming_loss"] = float((fp.sum() + fn.sum()) / t.size)
    overall.update(calibration(t, prob))
    overall["n"] = int(n)

    per_label = {}
    for j, name in enumerate(labels):
        support = int(t[:, j].sum())
        per_label[name] = {
            "precision": float(prec[j]), "recall": float(rec[j]), "f1": float(f1[j]),
            "average_precision": float(ap[j]), "brier": float(np.mean((prob[:, j] - t[:, j]) ** 2)),
            "support": support, "prevalence": support / n,
        }
    return {"overall": overall, "per_label": per_label}


def calibration(y_true, y_prob, n_bins: int = 10) -> dict[str, float]:
    """Expected calibration error and Brier score, all labels pooled (each (sample, label) one
    binary forecast). ECE: equal-width bins on [0, 1], ``sum_b (n_b/N) |mean(p_b) - mean(y_b)|``
    (the reliability diagram's gaps, weighted by bin size); Brier: ``mean((p - y)^2)``.
    """
    y = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(y_prob, dtype=np.float64).ravel()
    if y.shape != p.shape or y.size == 0:
        raise ValueError(f"calibration needs matching non-empty arrays, got {y.shape} and {p.shape}")
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    gap = np.abs(np.bincount(bins, p, n_bins) - np.bincount(bins, y, n_bins))   # |sum p - sum y| per bin
    return {"ece": float(gap.sum() / y.size), "brier": float(np.mean((p - y) ** 2))}


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
