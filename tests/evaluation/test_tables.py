"""Result tables: the main table puts the paper's image-level formulas next to protein-level standard
ones, an undefined label says so, legacy names map to run ids."""
import numpy as np
import pandas as pd

from proloc_lib.evaluation import metrics, scoring, tables

LABELS = ["a", "b", "c"]  # the three labels of the toy_scores fixture


def _tidy_run(model, seed, y, p, level, n_labels_ok=True):
    return scoring.tidy(model, level, "test", seed, y, p, LABELS)


def test_main_table_image_level_paper_formulas_next_to_protein_level_standard(toy_scores):
    y, p = toy_scores(n=40)
    res = pd.concat([_tidy_run("fusion.corrected", s, y, np.clip(p + 0.01 * s, 0, 1), "image") for s in range(2)]
                    + [_tidy_run("fusion.corrected", s, y[:20], p[:20], "protein") for s in range(2)]
                    + [_tidy_run("baseline.composition_lr", 0, y[:20], p[:20], "protein")])
    tab = tables.main_table(res, models=["fusion.corrected", "baseline.composition_lr"])
    assert list(tab.index) == ["fusion (corrected)", "composition + LR"]
    assert "image · F1_paper" in tab.columns and "protein · F1" in tab.columns
    assert "image · F1" not in tab.columns                  # the image side is the paper's setting
    assert tab.loc["fusion (corrected)", "image · n"] == "40" and tab.loc["fusion (corrected)", "protein · n"] == "20"
    assert tab.loc["composition + LR", "image · F1_paper"] == "—"
    f1p = [metrics.published_metrics(y, metrics.binarize(np.clip(p + 0.01 * s, 0, 1)))["f1_paper"] for s in range(2)]
    assert tab.loc["fusion (corrected)", "image · F1_paper"] == f"{np.mean(f1p):.3f} ± {np.std(f1p, ddof=1):.3f}"


def test_per_label_table_says_undefined_not_one(toy_scores):
    y, p = toy_scores(n=30)
    y[:, 1] = 0
    res = _tidy_run("fusion.corrected", 0, y, p, "protein")
    tab = tables.per_label_table(res)
    assert tab.loc["fusion (corrected)", "b"] == "undefined (no positive)"
    assert tab.loc["fusion (corrected)", "a"] != "undefined (no positive)"


def test_as_run_id_maps_legacy_names():
    assert tables.as_run_id("fusion (corrected)") == "fusion.corrected"
    assert tables.as_run_id("fusion (authors)") == "fusion.authors"
    assert tables.as_run_id("ablation: mask off") == "ablation.mask_off"
    assert tables.as_run_id("fusion (corrected), 5-fold CV") == "cv.corrected"
    assert tables.as_run_id("composition + LR") == "baseline.composition_lr"
    assert tables.as_run_id("baseline.composition_lr") == "baseline.composition_lr"
