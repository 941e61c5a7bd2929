"""Reviewer statistics: bootstrap intervals, calibration, seed-paired differences, re-split
variance, the permutation control, and the main table."""
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score

from proloc_lib.core import provenance
from proloc_lib.evaluation import figures, metrics, scoring, statistics, tables

LABELS = ["a", "b", "c"]


def _pred(model, y, p, seed=0, t=0.5, split="test", level="protein"):
    df = pd.DataFrame({"id": [f"P{i}" for i in range(len(y))], "protein_id": [f"P{i}" for i in range(len(y))],
                       "model": model, "seed": seed, "split": split, "level": level})
    for j, lab in enumerate(LABELS):
        df[f"y:{lab}"], df[f"p:{lab}"], df[f"t:{lab}"] = y[:, j], p[:, j], t
    return df


def _data(n=80, seed=0, signal=0.5):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 3)) < [0.5, 0.3, 0.2]).astype(int)
    p = np.clip(signal * 0.5 * y + rng.random((n, 3)) * (1 - 0.5 * signal), 0, 1)
    return y, p


def test_weighted_average_precision_equals_sklearn_with_weights():
    rng = np.random.default_rng(1)
    y = (rng.random(40) < 0.3).astype(int)
    s = np.round(rng.random(40), 1)                   # ties on purpose
    w = rng.integers(0, 3, size=(5, 40))
    got = statistics.weighted_average_precision(y, s, w)
    for b in range(5):
        assert got[b] == pytest.approx(average_precision_score(y, s, sample_weight=w[b]))
    assert np.isnan(statistics.weighted_average_precision(y, s, (1 - y)[None])[0])   # no positive drawn


def test_bootstrap_per_label_intervals_cover_the_point_and_shrink_with_n():
    y, p = _data(n=60)
    small = statistics.bootstrap_per_label(_pred("fusion.corrected", y, p), LABELS, n_boot=300)
    y2, p2 = _data(n=600)
    big = statistics.bootstrap_per_label(_pred("fusion.corrected", y2, p2), LABELS, n_boot=300)
    assert set(small["metric"]) == {"f1", "average_precision"} and len(small) == 6
    assert (small["ci_low"] <= small["value"] + 1e-12).all() and (small["value"] <= small["ci_high"] + 1e-12).all()
    assert (small["ci_high"] - small["ci_low"] > 0.02).all()
    ap_a = small[(small["label"] == "a") & (small["metric"] == "average_precision")]["value"].iloc[0]
    assert ap_a == pytest.approx(average_precision_score(y[:, 0], p[:, 0]))
    width = lambda d: (d["ci_high"] - d["ci_low"]).mean()
    assert width(big) < width(small) / 2                 # ~ 1/sqrt(n): 10x the proteins, ~3x narrower


def test_bootstrap_label_without_positive_is_undefined():
    y, p = _data(n=50)
    y[:, 2] = 0
    out = statistics.bootstrap_per_label(_pred("m", y, p), LABELS, n_boot=50)
    c = out[out["label"] == "c"]
    assert c["value"].isna().all() and c["ci_low"].isna().all()


def test_calibration_table_separates_calibrated_from_overconfident():
    rng = np.random.default_rng(3)
    p = rng.random((4000, 3))
    y = (rng.random((4000, 3)) < p).astype(int)         # calibrated by construction
    over = np.where(p > 0.5, 0.99, 0.01)                  # same ranking, overconfident
    pred = pd.concat([_pred("calibrated", y, p), _pred("overconfident", y, over)])
    tab = statistics.calibration_table(pred, LABELS).set_index("model")
    assert tab.loc["calibrated", "ece"] < 0.03
    assert tab.loc["overconfident", "ece"] > 0.2
    assert tab.loc["calibrated", "brier"] < tab.loc["overconfident", "brier"]


def _results(model, seed, f1, fold=None):
    return pd.DataFrame([{"model": model, "config": "", "config_hash": "", "seed": seed, "fold": fold,
                          "level": "protein", "split": "test", "label": "overall", "metric": "f1", "value": f1}])


def test_seed_paired_differences_pair_by_seed():
    a = [0.80, 0.82, 0.78, 0.81, 0.79]
    b = [0.70, 0.75, 0.69, 0.74, 0.72]
    res = pd.concat([_results("fusion.corrected", s, v) for s, v in enumerate(a)]
                    + [_results("fusion.authors", s, v) for s, v in enumerate(b)]
                    + [_results("fusion.authors", 9, 0.0)])             # unpaired seed: ignored
    out = statistics.seed_paired_differences(res, metric_names=("f1",)).iloc[0]
    d = np.subtract(a, b)
    assert out["n_seeds"] == 5 and out["mean_difference"] == pytest.approx(d.mean())
    assert out["sd"] == pytest.approx(d.std(ddof=1))
    # t interval, 4 degrees of freedom: t_0.975 = 2.776
    half = 2.7764451 * d.std(ddof=1) / math.sqrt(5)
    assert out["ci_low"] == pytest.approx(d.mean() - half, rel=1e-5)
    assert out["ci_high"] == pytest.approx(d.mean() + half, rel=1e-5)


def test_resplit_summary_is_over_splits_not_seeds():
    rows = [_results("cv.corrected", seed, 0.5 + 0.1 * fold + 0.01 * seed, fold=fold)
            for fold in range(3) for seed in range(2)]
    out = statistics.resplit_summary(pd.concat(rows), by="fold").iloc[0]
    per_split = [0.505, 0.605, 0.705]                    # seeds averaged within a split first
    assert out["n_splits"] == 3 and out["mean"] == pytest.approx(np.mean(per_split))
    assert out["sd"] == pytest.approx(np.std(per_split, ddof=1))
    assert out["ci_low"] < out["mean"] < out["ci_high"]


def test_permutation_control_lands_at_chance_and_a_real_model_does_not():
    rng = np.random.default_rng(5)
    y = (rng.random((200, 3)) < [0.5, 0.3, 0.2]).astype(int)
    noise = rng.random((200, 3))
    informed = np.clip(0.6 * y + 0.4 * noise, 0, 1)
    pred = pd.concat([_pred("control.permuted_labels", y, noise), _pred("fusion.corrected", y, informed)])
    ctl = statistics.permutation_control(pred, LABELS, n_perm=300)
    assert not ctl["leak_detected"]
    per = ctl["per_label"].set_index("label")
    # the null's mean AP is about the label's prevalence (the label-frequency expectation)
    assert np.allclose(per["null_mean"], per["prevalence"], atol=0.06)
    real = statistics.permutation_control(pred, LABELS, control="fusion.corrected", n_perm=300)
    assert real["leak_detected"] and real["macro_ap"] > real["macro_ap_null_high"]


def test_permutation_control_over_several_runs_asks_for_a_systematic_excess():
    """Several control runs (one per seed): at chance unless they beat their nulls systematically;
    a run whose scores cluster by class may sit above its own shuffle null by chance."""
    rng = np.random.default_rng(7)
    y = (rng.random((120, 3)) < [0.5, 0.3, 0.2]).astype(int)
    noise = [rng.random((120, 3)) for _ in range(4)]
    informed = [np.clip(0.5 * y + 0.5 * rng.random((120, 3)), 0, 1) for _ in range(4)]
    pred = pd.concat([_pred("control.permuted_labels", y, p, seed=s) for s, p in enumerate(noise)]
                     + [_pred("fusion.corrected", y, p, seed=s) for s, p in enumerate(informed)])
    ctl = statistics.permutation_control(pred, LABELS, n_perm=100)
    assert ctl["n_runs"] == 4 and not ctl["leak_detected"]
    assert ctl["macro_ap_excess"] <= ctl["macro_ap_excess_upper"] and ctl["macro_ap_excess_upper"] >= 0
    real = statistics.permutation_control(pred, LABELS, control="fusion.corrected", n_perm=100)
    assert real["n_runs"] == 4 and real["leak_detected"] and real["macro_ap_excess"] > real["macro_ap_detectable"]


def _tidy_run(model, seed, y, p, level, n_labels_ok=True):
    return scoring.tidy(model, level, "test", seed, y, p, LABELS)


def test_main_table_image_level_paper_formulas_next_to_protein_level_standard():
    y, p = _data(n=40)
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


def test_per_label_table_says_undefined_not_one():
    y, p = _data(n=30)
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


def test_every_table_file_carries_its_provenance(tmp_path):
    from proloc_lib.evaluation import scoring

    note = provenance.provenance_note({"synthetic_images": True, "random_weight_encoders": True, "real_sequences": True})
    table = pd.DataFrame({"F1_paper": [0.7, np.nan], "F1": ["0.61 ± 0.02", "undefined"]},
                         index=pd.Index(["fusion (corrected)", "label frequency"], name="model"))
    paths = figures.save_table(table, tmp_path, "main_table", f"Profile 'demo'. {note}", note="50 resamples (demo).")
    assert [p.suffix for p in paths] == [".csv", ".md", ".tex"]
    csv = pd.read_csv(tmp_path / "main_table.csv")
    assert list(csv.columns) == ["model", "F1_paper", "F1", "provenance"]
    assert csv["provenance"].str.contains("SYNTHETIC").all() and csv["provenance"].str.contains("RANDOM-WEIGHT").all()
    md = (tmp_path / "main_table.md").read_text()
    assert md.splitlines()[0].startswith("Profile 'demo'. Demo numbers: SYNTHETIC") and "50 resamples" in md
    tex = (tmp_path / "main_table.tex").read_text()
    assert tex.startswith("% Profile 'demo'. Demo numbers: SYNTHETIC") and "\\caption{" in tex
    assert "F1\\_paper" in tex and "undefined" in tex          # escaped for LaTeX; NaN shown as undefined
    y, p = _data(n=20)
    tidy = scoring.tidy("fusion.corrected", "protein", "test", 0, y, p, LABELS, provenance=note)
    assert (tidy["provenance"] == note).all()


def test_finished_figure_saves_without_a_layout_pass(tmp_path):
    """finish lays the figure out once and leaves no layout engine, so savefig draws it once
    (an engine, even tight_layout's placeholder, costs a second full draw per file) and the
    saved PNG is the same."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    def make():
        fig, ax = plt.subplots(figsize=(4, 3))
        ax.plot([0, 1, 2], [1, 0, 2], label="a run")
        ax.set_title("title")
        ax.legend()
        return fig

    plain = make()
    plain.text(0.01, 0.005, "caption", fontsize=7, ha="left", va="bottom", wrap=True, color="dimgray")
    plain.tight_layout(rect=(0, 0.06, 1, 1))       # what finish did before: leaves a placeholder engine
    assert plain.get_layout_engine() is not None
    plain.savefig(tmp_path / "plain.png", dpi=150)   # as figures.save
    fig = figures.finish(make(), "caption")
    assert fig.get_layout_engine() is None
    figures.save(fig, tmp_path, "finished", "caption", formats=("png",))
    assert (tmp_path / "finished.png").read_bytes() == (tmp_path / "plain.png").read_bytes()
    plt.close("all")
