"""Scoring: thresholds are tuned on validation only; test labels cannot move them; a label that
cannot be tuned keeps a stated fallback, recorded as such. Test images are scored against two truths
where the build has both: the image table's labels and the authors' own test table."""
import numpy as np
import pandas as pd
import pytest

from proloc_lib.core import runs
from proloc_lib.data.labels import LABELS
from proloc_lib.evaluation import metrics, scoring, tables

ABC = ["a", "b", "c"]


def test_thresholds_are_tuned_on_validation_only():
    rng = np.random.default_rng(0)
    y = (rng.random((60, 5)) < 0.3).astype(int)
    p = np.clip(y * 0.3 + rng.random((60, 5)) * 0.3, 0, 1)   # positives sit higher, below 0.5
    th = scoring.tune_thresholds(y, p, split="val")
    assert (th < 0.5).all()
    with pytest.raises(ValueError, match="validation"):
        scoring.tune_thresholds(y, p, split="test")
    prot = pd.DataFrame(y, columns=LABELS).assign(protein_id=[f"P{i}" for i in range(60)])
    val, test = prot.iloc[:30], prot.iloc[30:]
    res, ths, _ = scoring.evaluate("m", LABELS, prot, (val, p[:30]), (test, p[30:]), tune=True, image_level=False)
    np.testing.assert_allclose(ths["protein"], scoring.tune_thresholds(y[:30], p[:30], "val"))
    # changing test labels cannot change the thresholds
    prot2 = prot.copy()
    prot2.loc[30:, LABELS] = 1 - prot2.loc[30:, LABELS]
    _, ths2, _ = scoring.evaluate("m", LABELS, prot2, (prot2.iloc[:30], p[:30]), (prot2.iloc[30:], p[30:]),
                                  tune=True, image_level=False)
    assert ths == ths2


def test_a_label_without_validation_positive_keeps_the_fallback_and_says_so():
    rng = np.random.default_rng(0)
    y = (rng.random((60, 3)) < 0.4).astype(int)
    y[:30, 2] = 0                                          # validation half: no positive of c
    p = np.clip(0.3 * y + 0.3 * rng.random((60, 3)), 0, 1)
    th = scoring.tune_thresholds(y[:30], p[:30], "val")
    assert th[2] == scoring.FALLBACK_THRESHOLD and (th[:2] < 0.5).all()
    prot = pd.DataFrame(y, columns=ABC).assign(protein_id=[f"P{i}" for i in range(60)])
    res, ths, pred = scoring.evaluate("m", ABC, prot, (prot.iloc[:30], p[:30]), (prot.iloc[30:], p[30:]),
                                      tune=True, image_level=False)
    assert ths["fallback"] == {"protein": ["c"]}
    fb = res[(res["metric"] == "threshold_fallback") & (res["split"] == "test")].set_index("label")["value"]
    assert fb.to_dict() == {"a": 0.0, "b": 0.0, "c": 1.0}
    thr = res[(res["metric"] == "threshold") & (res["split"] == "test")].set_index("label")["value"]
    assert thr["c"] == scoring.FALLBACK_THRESHOLD
    # a fixed-threshold configuration tunes nothing, so nothing is a fallback
    res, ths, _ = scoring.evaluate("m", ABC, prot, (prot.iloc[:30], p[:30]), (prot.iloc[30:], p[30:]),
                                   tune=False, image_level=False)
    assert ths["fallback"] == {"protein": []} and (res.loc[res["metric"] == "threshold_fallback", "value"] == 0).all()


TWO = ["a", "b"]
SHOWN = runs.display_name("fusion.authors")
AUTH = [scoring.AUTHORS_PREFIX + lab for lab in TWO]


def _samples(split, y, authors=None):
    df = pd.DataFrame(y, columns=TWO).assign(image_id=[f"{split}{i}" for i in range(len(y))],
                                                protein_id=[f"P{split}{i}" for i in range(len(y))])
    if authors is not None:
        df[AUTH] = np.asarray(authors, dtype=float)
    return df


def _proteins(*frames):
    return pd.concat([f[["protein_id", *TWO]] for f in frames], ignore_index=True)


def test_test_images_are_scored_against_both_truths():
    # predictions are exactly the image table's labels; the authors' table adds label a to image 1
    val = _samples("v", [[1, 0], [0, 1]])
    test = _samples("t", [[1, 0], [0, 1]], authors=[[1, 0], [1, 1]])
    probs = np.array([[0.9, 0.1], [0.2, 0.8]])
    res, _, _ = scoring.evaluate("fusion.authors", TWO, _proteins(val, test), (val, probs), (test, probs),
                                 truth="benchmark_columns",
                                 training_set={"train_on": "train+val", "train_proteins": 3, "train_images": 7,
                                               "train_samples": 8})
    overall = res[(res["label"] == "overall") & (res["metric"] == "absolute_true")]
    got = overall.set_index(["level", "split", "truth"])["value"]
    assert got[("image", "test", "benchmark_columns")] == 1.0
    assert got[("image", "test", "authors_table")] == 0.5          # image 1: {b} predicted, {a, b} true
    assert got[("protein", "test", "benchmark_columns")] == 1.0
    # the authors' truth exists for test images only: no val or protein-level rows carry it
    theirs = res[res["truth"] == scoring.TRUTH_AUTHORS]
    assert set(theirs["level"]) == {"image"} and set(theirs["split"]) == {"test"}
    assert (res["train_on"] == "train+val").all() and (res["train_images"] == 7).all()
    # tables keep the image table's truth apart from the authors'
    assert tables.paper_table(res, level="image").loc[SHOWN, metrics.DISPLAY_NAMES["absolute_true"]] == 1.0
    main = tables.main_table(res)
    assert main.loc[SHOWN, "image · n"] == "2"
    assert main.loc[SHOWN, "image, authors' labels · n"] == "2"
    assert main.loc[SHOWN, "trained on"] == "train+val: 3 proteins, 7 images"


def test_one_truth_where_the_authors_table_is_absent_or_incomplete():
    val = _samples("v", [[1, 0], [0, 1]])
    for test in (_samples("t", [[1, 0], [0, 1]]),                                   # the demo: no such columns
                 _samples("t", [[1, 0], [0, 1]], authors=[[1, 0], [np.nan, np.nan]])):  # not every image
        probs = np.array([[0.9, 0.1], [0.2, 0.8]])
        res, _, _ = scoring.evaluate("fusion.corrected", TWO, _proteins(val, test), (val, probs),
                                     (test, probs), truth="demo_labels")
        assert set(res["truth"]) == {"demo_labels"}
        assert not any("authors" in c for c in tables.main_table(res).columns)
    # without a truth name the rows stay as they were (no truth column)
    res, _, _ = scoring.evaluate("fusion.corrected", TWO, _proteins(val, test), (val, probs), (test, probs))
    assert "truth" not in res.columns and scoring.primary_truth(res) is res


@pytest.mark.parametrize("truth", ["benchmark_columns", "image_table"])
def test_primary_truth_drops_only_the_authors_rows(truth):
    df = pd.DataFrame({"truth": [truth, scoring.TRUTH_AUTHORS, truth], "value": [1, 2, 3]})
    assert scoring.primary_truth(df)["value"].tolist() == [1, 3]
