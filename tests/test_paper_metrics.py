"""The paper's formulas (published test.py) next to the standard ones, on hand-made cases."""
import math

import numpy as np
import pytest

from proloc_lib.evaluation.metrics import (
    binarize,
    calibration,
    full_report,
    paper_metrics,
    published_metrics,
)

approx = pytest.approx

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
