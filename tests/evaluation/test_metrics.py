"""Tests for proloc_lib.evaluation.metrics: hand-computed cases, scikit-learn agreement, validation,
and the paper's formulas (published test.py) next to the standard ones."""
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from proloc_lib.data.labels import LABELS
from proloc_lib.evaluation.metrics import (
    METRIC_NAMES,
    PAPER_NAMES,
    aggregate_by_group,
    binarize,
    calibration,
    f1_at_thresholds,
    full_report,
    paper_metrics,
    published_metrics,
)

approx = pytest.approx


def _check(got: dict, expected: dict):
    assert set(got) >= set(expected)
    for k, v in expected.items():
        assert got[k] == approx(v, abs=1e-12), k


# ----------------------------------------------------------------------------- hand-made

# Mixed case, L=3, N=4 (rows: exact / partial / both empty / nothing predicted).
Y_MIX = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 1, 1]])
Z_MIX = np.array([[1, 0, 0], [1, 0, 1], [0, 0, 0], [0, 0, 0]])


def test_names():
    assert METRIC_NAMES == ["absolute_true", "accuracy", "precision", "recall", "f1",
                            "micro_accuracy", "micro_precision", "micro_recall", "micro_f1"]
    assert list(PAPER_NAMES) == METRIC_NAMES
    assert list(PAPER_NAMES.values()) == ["Absolute true", "Acc", "Pre", "Rec", "F1",
                                          "Acc'", "Pre'", "Rec'", "F1'"]


def test_mixed_case_by_hand():
    # row0 Y={0} Z={0}:     ∩1 ∪1 -> acc 1,   pre 1/1, rec 1/1, f1 2/2 = 1, exact
    # row1 Y={0,1} Z={0,2}: ∩1 ∪3 -> acc 1/3, pre 1/2, rec 1/2, f1 2/4
    # row2 Y={} Z={}:       both empty -> 1, 1, 1, 1 (convention), exact
    # row3 Y={1,2} Z={}:    acc 0/2, pre 0 (empty Z, convention), rec 0/2, f1 0/2
    # absolute true 2/4; acc (1+1/3+1+0)/4 = 7/12; pre = rec = f1 = (1+1/2+1+0)/4 = 5/8
    # micro: TP = 1+1 = 2; FP = 1 (row1 label2); FN = 1 (row1 label1) + 2 (row3) = 3;
    #        TN = 12-2-1-3 = 6  -> acc' 8/12, pre' 2/3, rec' 2/5, f1' 4/(4+1+3) = 1/2
    got = paper_metrics(Y_MIX, Z_MIX)
    assert list(got) == METRIC_NAMES
    _check(got, {"absolute_true": 0.5, "accuracy": 7 / 12, "precision": 5 / 8, "recall": 5 / 8,
                 "f1": 5 / 8, "micro_accuracy": 2 / 3, "micro_precision": 2 / 3,
                 "micro_recall": 2 / 5, "micro_f1": 1 / 2})
    assert all(isinstance(v, float) for v in got.values())


def test_mixed_case_full_report_by_hand():
    # Probabilities that binarize (>= 0.5) to Z_MIX.
    prob = np.array([[0.9, 0.1, 0.2], [0.8, 0.4, 0.5], [0.3, 0.2, 0.1], [0.1, 0.45, 0.3]])
    rep = full_report(Y_MIX, prob, labels=["a", "b", "c"])
    # hamming = (FP+FN)/(N*L) = (1+3)/12 = 1/3
    # label a: Y [1,1,0,0] Z [1,1,0,0] -> P=R=F1=1, support 2, prevalence 2/4
    # label b: Y [0,1,0,1] Z [0,0,0,0] -> TP0 FP0 FN2: P 0 (nothing predicted, positives exist), R 0, F1 0
    # label c: Y [0,0,0,1] Z [0,1,0,0] -> TP0 FP1 FN1: P 0/1, R 0/1, F1 0/2
    # macro F1 = (1+0+0)/3
    _check(rep["overall"], {"absolute_true": 0.5, "micro_f1": 0.5, "macro_f1": 1 / 3,
                            "hamming_loss": 1 / 3, "n_labels_scored": 3, "n": 4})
    assert set(rep["overall"]) == set(METRIC_NAMES) | {"precision_paper", "recall_paper", "f1_paper", "macro_f1",
                                                       "macro_ap", "n_labels_scored", "hamming_loss", "ece",
                                                       "brier", "n"}
    pl = rep["per_label"]
    assert list(pl) == ["a", "b", "c"]
    _check(pl["a"], {"precision": 1, "recall": 1, "f1": 1, "support": 2, "prevalence": 0.5})
    # label b is never called: its precision is undefined (NaN), recall and F1 are 0
    _check(pl["b"], {"recall": 0, "f1": 0, "support": 2, "prevalence": 0.5})
    assert math.isnan(pl["b"]["precision"])
    _check(pl["c"], {"precision": 0, "recall": 0, "f1": 0, "support": 1, "prevalence": 0.25})
    # AP, label a: scores ranked 0.9(+), 0.8(+) -> precision 1 at both hits -> AP 1.
    # AP, label b: ranked 0.45(+), 0.4(+), 0.2, 0.1 -> AP 1 (threshold-free).
    # AP, label c: ranked 0.5(-), 0.3(+) -> the one hit at rank 2 has precision 1/2 -> AP 1/2.
    assert pl["a"]["average_precision"] == approx(1.0)
    assert pl["b"]["average_precision"] == approx(1.0)
    assert pl["c"]["average_precision"] == approx(0.5)
    assert isinstance(pl["a"]["support"], int)


def test_perfect_prediction():
    y = np.array([[1, 0, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]])
    assert paper_metrics(y, y) == {k: 1.0 for k in METRIC_NAMES}
    rep = full_report(y, y.astype(float))
    assert rep["overall"]["hamming_loss"] == 0.0 and rep["overall"]["macro_f1"] == 1.0
    assert list(rep["per_label"]) == LABELS  # default names for L == 5


def test_all_empty_prediction():
    y = np.array([[1, 0], [0, 0], [1, 1]])
    # rows 0 and 2: Z empty, Y not -> 0 on every sample metric; row 1: both empty -> 1.
    # => absolute true = acc = pre = rec = f1 = 1/3
    # micro: TP 0, FP 0, FN 3, TN 3 -> acc' 3/6; pre' 0 (nothing predicted, positives exist);
    #        rec' 0/3; f1' 0/(0+0+3)
    got = paper_metrics(y, np.zeros_like(y))
    _check(got, {"absolute_true": 1 / 3, "accuracy": 1 / 3, "precision": 1 / 3, "recall": 1 / 3,
                 "f1": 1 / 3, "micro_accuracy": 0.5, "micro_precision": 0.0,
                 "micro_recall": 0.0, "micro_f1": 0.0})


def test_rows_with_no_true_label():
    y = np.zeros((2, 2), dtype=int)
    z = np.array([[0, 1], [0, 0]])
    # row0: Y empty, Z={1}: acc 0/1, pre 0/1, rec 0 (empty Y, convention), f1 0/1
    # row1: both empty -> 1 everywhere  => sample metrics 1/2
    # micro: TP 0, FP 1, FN 0, TN 3 -> acc' 3/4, pre' 0/1, rec' 0 (no positives, but FP), f1' 0/1
    got = paper_metrics(y, z)
    _check(got, {"absolute_true": 0.5, "accuracy": 0.5, "precision": 0.5, "recall": 0.5,
                 "f1": 0.5, "micro_accuracy": 0.75, "micro_precision": 0.0,
                 "micro_recall": 0.0, "micro_f1": 0.0})


def test_everything_empty_is_perfect():
    # Nothing to find, nothing claimed: every ratio is 0/0 -> 1 by the convention; no NaN.
    y = np.zeros((3, 5), dtype=int)
    assert paper_metrics(y, y) == {k: 1.0 for k in METRIC_NAMES}
    rep = full_report(y, np.full((3, 5), 0.2))
    for d in rep["per_label"].values():
        # per label, no positive: undefined (NaN), never 1.0
        assert all(math.isnan(d[k]) for k in ("precision", "recall", "f1", "average_precision"))
        assert d["support"] == 0
    assert math.isnan(rep["overall"]["macro_f1"]) and rep["overall"]["n_labels_scored"] == 0


def test_single_label_per_sample():
    # One true and one predicted label per row (classes 0,1,2,0 vs 0,2,2,1): then
    # absolute true = acc = pre = rec = f1 = fraction correct = 2/4.
    # micro: TP 2, FP 2, FN 2, TN 12-6 = 6 -> acc' 8/12, pre' = rec' = f1' = 2/4
    eye = np.eye(3, dtype=int)
    y, z = eye[[0, 1, 2, 0]], eye[[0, 2, 2, 1]]
    _check(paper_metrics(y, z), {"absolute_true": 0.5, "accuracy": 0.5, "precision": 0.5,
                                 "recall": 0.5, "f1": 0.5, "micro_accuracy": 2 / 3,
                                 "micro_precision": 0.5, "micro_recall": 0.5, "micro_f1": 0.5})


def test_single_label_column():
    # L = 1: y [1,1,0,0], z [1,0,1,0] -> rows: exact, Z empty, Y empty, both empty
    # sample: abs 2/4; acc = pre = rec = f1 = (1+0+0+1)/4 = 1/2
    # micro: TP1 FP1 FN1 TN1 -> acc' 2/4, pre' 1/2, rec' 1/2, f1' 2/4
    y, z = np.array([[1], [1], [0], [0]]), np.array([[1], [0], [1], [0]])
    assert paper_metrics(y, z) == {k: 0.5 for k in METRIC_NAMES}


def test_accepts_bool_and_float_01():
    assert paper_metrics(Y_MIX.astype(bool), Z_MIX.astype(float)) == paper_metrics(Y_MIX, Z_MIX)


# ----------------------------------------------------------------------------- scikit-learn

def _random(seed, n=300, n_labels=5, density=0.3):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, n_labels)) < density).astype(int)
    prob = np.clip(0.35 * y + rng.random((n, n_labels)) * 0.7, 0, 1)
    return y, prob


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_agrees_with_sklearn(seed, threshold):
    y, prob = _random(seed)
    z = binarize(prob, threshold)
    # The data must exercise the edge rows for the comparisons to mean something.
    y_empty, z_empty = y.sum(1) == 0, z.sum(1) == 0
    assert (y_empty & ~z_empty).any()
    if threshold == 0.5:
        assert (y_empty & z_empty).any() and (~y_empty & z_empty).any()
    got = paper_metrics(y, z)
    assert got["absolute_true"] == approx(skm.accuracy_score(y, z))
    # Both reach zero_division only for Y = Z = {} -> 1 there, exact agreement incl. edges.
    assert got["accuracy"] == approx(skm.jaccard_score(y, z, average="samples", zero_division=1))
    assert got["f1"] == approx(skm.f1_score(y, z, average="samples", zero_division=1))
    # Precision/recall: sklearn uses a constant zero_division whatever the other set is;
    # compare on the rows whose denominator is non-zero (there the definitions coincide).
    rows = z.sum(1) > 0
    assert paper_metrics(y[rows], z[rows])["precision"] == approx(
        skm.precision_score(y[rows], z[rows], average="samples", zero_division=0))
    rows = y.sum(1) > 0
    assert paper_metrics(y[rows], z[rows])["recall"] == approx(
        skm.recall_score(y[rows], z[rows], average="samples", zero_division=0))
    for ours, fn in [("micro_precision", skm.precision_score), ("micro_recall", skm.recall_score),
                     ("micro_f1", skm.f1_score)]:
        assert got[ours] == approx(fn(y, z, average="micro", zero_division=0)), ours
    assert got["micro_accuracy"] == approx(1 - skm.hamming_loss(y, z))

    rep = full_report(y, prob, thresholds=threshold)
    ov, pl = rep["overall"], rep["per_label"]
    assert {k: ov[k] for k in METRIC_NAMES} == got
    assert ov["hamming_loss"] == approx(skm.hamming_loss(y, z))
    assert ov["macro_f1"] == approx(skm.f1_score(y, z, average="macro", zero_division=1))
    sk_p, sk_r, sk_f, sk_s = skm.precision_recall_fscore_support(y, z, average=None, zero_division=0)
    for j, name in enumerate(LABELS):
        assert pl[name]["precision"] == approx(sk_p[j])
        assert pl[name]["recall"] == approx(sk_r[j])
        assert pl[name]["f1"] == approx(sk_f[j])
        assert pl[name]["support"] == sk_s[j]
        assert pl[name]["prevalence"] == approx(sk_s[j] / len(y))
        assert pl[name]["average_precision"] == approx(skm.average_precision_score(y[:, j], prob[:, j]))


@pytest.mark.parametrize("called", [False, True])
def test_label_without_positives_is_undefined_not_one(called):
    # Label 2 is absent from truth: its F1, recall and AP are NaN (sklearn zero_division=1 would
    # say F1 1.0 when it is never called), and macro F1 averages the two defined labels only.
    y, prob = _random(5, n=100, n_labels=3)
    y[:, 2] = 0
    prob[:, 2] = 0.9 if called else 0.1
    rep = full_report(y, prob)
    z = binarize(prob)
    pl = rep["per_label"]["label_2"]
    assert math.isnan(pl["f1"]) and math.isnan(pl["recall"]) and math.isnan(pl["average_precision"])
    assert math.isnan(pl["precision"]) != called          # called: precision 0/100 is defined (0)
    assert rep["overall"]["macro_f1"] == approx(skm.f1_score(y[:, :2], z[:, :2], average="macro"))
    assert rep["overall"]["n_labels_scored"] == 2
    if not called:
        assert skm.f1_score(y, z, average=None, zero_division=1)[2] == 1.0   # what we refuse to report
    assert list(rep["per_label"]) == ["label_0", "label_1", "label_2"]


def test_documented_difference_from_sklearn_precision():
    # Y={0}, Z={} : ours precision 0; sklearn(zero_division=1) says 1.
    y, z = np.array([[1, 0]]), np.array([[0, 0]])
    assert paper_metrics(y, z)["precision"] == 0.0
    assert skm.precision_score(y, z, average="samples", zero_division=1) == 1.0


def test_no_nan_on_random_edge_heavy_data():
    rng = np.random.default_rng(7)
    for _ in range(20):
        y = (rng.random((6, 3)) < 0.15).astype(int)
        z = (rng.random((6, 3)) < 0.15).astype(int)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no divide-by-zero RuntimeWarning either
            vals = paper_metrics(y, z).values()
        assert all(0.0 <= v <= 1.0 and not math.isnan(v) for v in vals)


# ----------------------------------------------------------------------------- binarize

def test_binarize_scalar_and_per_label_thresholds():
    prob = np.array([[0.5, 0.2, 0.9], [0.49, 0.3, 0.7]])
    b = binarize(prob)
    assert b.dtype == np.int8
    assert b.tolist() == [[1, 0, 1], [0, 0, 1]]  # >= 0.5 is positive
    # per label: col0 >= 0.4 -> [1,1]; col1 >= 0.25 -> [0,1]; col2 >= 0.8 -> [1,0]
    assert binarize(prob, [0.4, 0.25, 0.8]).tolist() == [[1, 0, 1], [1, 1, 0]]
    assert binarize(prob, np.array([0.0, 0.0, 1.0])).tolist() == [[1, 1, 0], [1, 1, 0]]


def test_binarize_validation():
    prob = np.full((2, 3), 0.5)
    with pytest.raises(ValueError, match="one value per label.*3 labels"):
        binarize(prob, [0.5, 0.5])
    with pytest.raises(ValueError, match=r"thresholds must lie in \[0, 1\]"):
        binarize(prob, 1.5)
    with pytest.raises(ValueError, match="2 value"):
        binarize(np.array([[0.2, 1.2, -0.1]]))
    with pytest.raises(ValueError, match="1 NaN"):
        binarize(np.array([[0.2, np.nan]]))
    with pytest.raises(ValueError, match="2-D"):
        binarize(np.array([0.2, 0.3]))


# ----------------------------------------------------------------------------- validation

def test_validation_errors():
    y = np.zeros((3, 5), dtype=int)
    with pytest.raises(ValueError, match=r"shape mismatch.*\(3, 5\).*\(3, 4\)"):
        paper_metrics(y, np.zeros((3, 4), dtype=int))
    with pytest.raises(ValueError, match="y_pred must contain only 0/1; 1 of 15"):
        z = y.copy()
        z[0, 0] = 2
        paper_metrics(y, z)
    with pytest.raises(ValueError, match="y_true must contain only 0/1"):
        paper_metrics(np.full((3, 5), 0.5), y)
    with pytest.raises(ValueError, match="y_true must contain only 0/1"):
        paper_metrics(np.full((3, 5), np.nan), y)
    with pytest.raises(ValueError, match="empty"):
        paper_metrics(np.zeros((0, 5)), np.zeros((0, 5)))
    with pytest.raises(ValueError, match=r"shape mismatch.*y_prob"):
        full_report(y, np.zeros((2, 5)))
    with pytest.raises(ValueError, match="3 value"):
        full_report(y, np.array([[1.1] * 3 + [0.0] * 2] + [[0.0] * 5] * 2))
    with pytest.raises(ValueError, match="2 label names for 5"):
        full_report(y, np.zeros((3, 5)), labels=["a", "b"])
    with pytest.raises(ValueError, match="one value per label"):
        full_report(y, np.zeros((3, 5)), thresholds=[0.5] * 4)


# ----------------------------------------------------------------------------- helpers

def test_aggregate_by_group():
    prob = np.array([[0.2, 0.4], [0.9, 0.1], [0.4, 0.8], [0.3, 0.3], [0.7, 0.5]])
    groups = ["P2", "P1", "P2", "P3", "P1"]
    uniq, mean = aggregate_by_group(prob, groups)
    assert uniq.tolist() == ["P2", "P1", "P3"]  # first-appearance order, not sorted
    # P2: rows 0,2 -> [(0.2+0.4)/2, (0.4+0.8)/2] = [0.3, 0.6]
    # P1: rows 1,4 -> [(0.9+0.7)/2, (0.1+0.5)/2] = [0.8, 0.3]
    # P3: row 3    -> [0.3, 0.3]
    np.testing.assert_allclose(mean, [[0.3, 0.6], [0.8, 0.3], [0.3, 0.3]])
    assert mean.dtype == np.float64
    # Integer ids and a pandas Series work too.
    u2, m2 = aggregate_by_group(prob, pd.Series([5, 5, 1, 1, 5]))
    assert u2.tolist() == [5, 1]
    np.testing.assert_allclose(m2, [[(0.2 + 0.9 + 0.7) / 3, (0.4 + 0.1 + 0.5) / 3],
                                    [(0.4 + 0.3) / 2, (0.8 + 0.3) / 2]])


def test_aggregate_by_group_validation():
    prob = np.full((3, 2), 0.5)
    with pytest.raises(ValueError, match=r"groups has shape \(2,\).*\(3, 2\)"):
        aggregate_by_group(prob, ["a", "b"])
    with pytest.raises(ValueError, match="1 missing"):
        aggregate_by_group(prob, ["a", None, "b"])
    with pytest.raises(ValueError, match="1 value"):
        aggregate_by_group(np.array([[0.5, 2.0]]), ["a"])


def test_sample_f1_and_f1_at_thresholds_agree_with_sklearn():
    from sklearn.metrics import f1_score

    from proloc_lib.evaluation.metrics import f1_at_thresholds, sample_f1

    rng = np.random.default_rng(4)
    y = (rng.random((40, 5)) < 0.3).astype(int)
    p = rng.random((40, 5))
    pred = (p >= 0.5).astype(int)
    np.testing.assert_allclose(sample_f1(y, pred).mean(), f1_score(y, pred, average="samples", zero_division=1))
    assert sample_f1(np.zeros((1, 5), int), np.zeros((1, 5), int))[0] == 1.0     # both empty
    grid = [0.2, 0.5, 0.8]
    expected = [f1_score(y[:, 0], p[:, 0] >= t, zero_division=1) for t in grid]
    np.testing.assert_allclose(f1_at_thresholds(y[:, 0], p[:, 0], grid), expected)


# -- the paper's formulas (published test.py) next to the standard ones, on hand-made cases ----------
# Five samples, five labels. Rows (Y -> Z):
#   {2} -> {2}                  pre 1,   rec 1,   F1 1
#   {0,3,4} -> {0,1}            pre 1/2, rec 1/3, F1 2/5
#   {0,2,4} -> {0,2,4}          pre 1,   rec 1,   F1 1
#   {2,3} -> {0,2,3,4}          pre 1/2, rec 1,   F1 4/6
#   {} -> {2,4}                 pre 0,   rec: paper 1 (empty label set), standard 0;  F1 0
Y = np.array([[0, 0, 1, 0, 0], [1, 0, 0, 1, 1], [1, 0, 1, 0, 1], [0, 0, 1, 1, 0], [0, 0, 0, 0, 0]])
Z = np.array([[0, 0, 1, 0, 0], [1, 1, 0, 0, 0], [1, 0, 1, 0, 1], [1, 0, 1, 1, 1], [0, 0, 1, 0, 1]])


def test_same_predictions_two_f1s_0709_and_0613():
    pub = published_metrics(Y, Z)
    # paper: Pre = (1 + 1/2 + 1 + 1/2 + 0)/5 = 3/5; Rec = (1 + 1/3 + 1 + 1 + 1)/5 = 13/15
    #        F1_paper = 2 * 3/5 * 13/15 / (3/5 + 13/15) = 78/110 = 0.7091
    assert pub["precision_paper"] == approx(3 / 5)
    assert pub["recall_paper"] == approx(13 / 15)
    assert pub["f1_paper"] == approx(78 / 110) and round(pub["f1_paper"], 3) == 0.709
    # standard: mean per-sample F1 = (1 + 2/5 + 1 + 2/3 + 0)/5 = 0.6133; recall (row 5 scores 0) 2/3
    std = paper_metrics(Y, Z)
    assert std["f1"] == approx((1 + 2 / 5 + 1 + 2 / 3) / 5) and round(std["f1"], 3) == 0.613
    assert std["recall"] == approx((1 + 1 / 3 + 1 + 1) / 5)
    assert std["precision"] == approx(3 / 5)       # no empty prediction here: both agree


def test_empty_prediction_scores_precision_one_in_the_paper_zero_in_standard():
    y = np.array([[1, 0, 0], [0, 1, 0]])
    z = np.array([[0, 0, 0], [0, 1, 0]])
    # row 1: nothing predicted -> paper Pre 1, standard 0; Rec 0 both; row 2 exact
    pub, std = published_metrics(y, z), paper_metrics(y, z)
    assert pub["precision_paper"] == 1.0 and std["precision"] == 0.5
    assert pub["recall_paper"] == 0.5 == std["recall"]
    assert pub["f1_paper"] == approx(2 * 1 * 0.5 / 1.5)     # 0.667 from the averages
    assert std["f1"] == 0.5                                 # (0 + 1)/2


def test_empty_label_set_scores_recall_one_in_the_paper():
    y = np.array([[0, 0], [1, 0]])
    z = np.array([[1, 0], [1, 0]])
    pub, std = published_metrics(y, z), paper_metrics(y, z)
    assert pub["recall_paper"] == 1.0 and std["recall"] == 0.5
    assert pub["precision_paper"] == 0.5 == std["precision"]


def test_both_empty_and_all_empty():
    y = np.zeros((2, 3), int)
    # both conventions: both sets empty -> Pre = Rec = 1
    assert published_metrics(y, y) == {"precision_paper": 1.0, "recall_paper": 1.0, "f1_paper": 1.0}
    # all wrong: Pre = Rec = 0 -> F1_paper 0, not NaN
    y2, z2 = np.array([[1, 0]]), np.array([[0, 1]])
    assert published_metrics(y2, z2) == {"precision_paper": 0.0, "recall_paper": 0.0, "f1_paper": 0.0}


def test_full_report_carries_both_sets():
    rep = full_report(Y, Z * 0.8 + 0.1)
    ov = rep["overall"]
    assert ov["f1_paper"] == approx(78 / 110) and ov["f1"] == approx(0.61333, abs=1e-4)
    # ER (column 1) has no positive: undefined per label, left out of macro F1
    er = rep["per_label"]["endoplasmic reticulum"]
    assert math.isnan(er["f1"]) and math.isnan(er["recall"]) and er["precision"] == 0.0
    assert ov["n_labels_scored"] == 4


def test_strict_threshold_as_published():
    p = np.array([[0.5, 0.51]])
    assert binarize(p).tolist() == [[1, 1]]
    assert binarize(p, strict=True).tolist() == [[0, 1]]


def test_calibration_by_hand():
    y = np.array([[1, 0], [0, 0]])
    p = np.array([[0.9, 0.15], [0.85, 0.05]])
    # bins of width 0.1: bin 8 {0.85 (y 0)}, bin 9 {0.9 (y 1)}, bin 1 {0.15 (0)}, bin 0 {0.05 (0)}
    # ECE = (|0.85 - 0| + |0.9 - 1| + |0.15| + |0.05|) / 4 = 1.15 / 4
    # Brier = (0.01 + 0.0225 + 0.7225 + 0.0025) / 4
    c = calibration(y, p)
    assert c["ece"] == approx(1.15 / 4)
    assert c["brier"] == approx((0.01 + 0.0225 + 0.7225 + 0.0025) / 4)
    # a perfectly calibrated forecaster on a bin: p = 0.25 for four items, one positive -> gap 0
    assert calibration(np.array([[1, 0, 0, 0]]), np.full((1, 4), 0.25))["ece"] == approx(0.0)


def test_f1_at_thresholds_is_nan_for_a_label_without_positive():
    grid = np.array([0.1, 0.5, 0.9])
    p = np.array([0.05, 0.3, 0.6, 0.95])
    f1 = f1_at_thresholds(np.zeros(4, dtype=int), p, grid)
    assert f1.shape == (3,) and np.isnan(f1).all()            # not 1.0 where nothing is called (0.95 > 0.9)
    # the same undefined value the per-label report gives
    assert np.isnan(full_report(np.zeros((4, 1), dtype=int), p[:, None], 0.5, labels=["er"])["per_label"]["er"]["f1"])


def test_f1_at_thresholds_with_positives_is_hand_computed():
    y = np.array([1, 0, 1, 0])
    p = np.array([0.9, 0.6, 0.4, 0.1])
    # t=0.5: calls {0, 1}: tp 1, fp 1, fn 1 -> 2/4; t=0.3: calls {0,1,2}: tp 2, fp 1 -> 4/5; t=0.95: none -> 0
    np.testing.assert_allclose(f1_at_thresholds(y, p, [0.5, 0.3, 0.95]), [0.5, 0.8, 0.0])
