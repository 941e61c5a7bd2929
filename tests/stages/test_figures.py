"""Notebook 05's summary.json, and README quotes checked against it."""
import json

import numpy as np
import pandas as pd
import pytest

from proloc_lib.cli.main import main as proloc
from proloc_lib.core import manifest
from proloc_lib.evaluation import scoring, statistics
from proloc_lib.stages import figures as stage_figures
from proloc_lib.stages.figures import (
    FiguresStage,
    interval_cell,
    mark_uninformative,
    quote_matches,
    readme_mismatches,
)

LABELS = ["cytoplasm", "nucleus", "mitochondria"]
PROVENANCE = {"real_sequences": True, "synthetic_images": True, "random_weight_encoders": True}


def _write_stage(folder, files: dict, upstream=None, **fields) -> dict:
    """A stage folder and the manifest notebook 05 checks it against (outputs, what it read); returns
    the outputs' checksums."""
    for name, frame in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (frame.to_parquet if name.endswith(".parquet") else lambda p: frame.to_csv(p, index=False))(folder / name)
    man = manifest.build_manifest(folder.name, {"profile": "smoke", "seed": 0}, outputs_dir=folder,
                                  provenance=PROVENANCE, extra={"upstream": upstream or {}, **fields})
    (folder / "manifest.json").write_text(json.dumps(man))
    return man["outputs"]


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    """Stage 01, 03 and 04 outputs made by hand: 40 test proteins, corrected and authors over 3
    seeds (corrected informed, authors noise), 4 label-permutation control runs (noise), and the
    two simple baselines (one seed)."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("fig")
    n_val, n_test = 30, 40
    ids = [f"P{i:02d}" for i in range(n_val + n_test)]
    y = (rng.random((len(ids), 3)) < [0.5, 0.4, 0.3]).astype(int)
    proteins = pd.DataFrame(y, columns=LABELS).assign(protein_id=ids, split=["val"] * n_val + ["test"] * n_test)
    val, test = proteins.iloc[:n_val], proteins.iloc[n_val:]

    def run(model, signal, seed, tune=True):
        p = np.clip(signal * y + (1 - signal) * rng.random(y.shape), 0, 1)
        return scoring.evaluate(model, LABELS, proteins, (val, p[:n_val]), (test, p[n_val:]), seed=seed, tune=tune,
                                image_level=False)

    train = [run("fusion.corrected", 0.6, s) for s in range(3)] + [run("fusion.authors", 0.0, s, tune=False)
                                                                    for s in range(3)]
    train += [run("control.permuted_labels", 0.0, s) for s in range(4)]
    base = [run("baseline.label_frequency", 0.0, 0), run("baseline.composition_lr", 0.2, 0)]
    data = root / "data" / "smoke"
    read = {"01_data_assembly": _write_stage(data / "01_data_assembly", {"proteins.parquet": proteins}, labels=LABELS)}
    read["02_embeddings"] = _write_stage(data / "02_embeddings", {"images/store.json": pd.DataFrame()},
                                         upstream=dict(read))   # no stores: nothing here draws attention maps
    history = pd.DataFrame({"epoch": [1, 2], "train_loss": [1.0, 0.8], "val_loss": [1.1, 0.9], "best": [0, 1],
                            "model": "fusion.corrected", "seed": 0})
    _write_stage(data / "03_training", {"metrics.csv": pd.concat([r[0] for r in train]),
                                        "predictions.parquet": pd.concat([r[2] for r in train]),
                                        "history.csv": history}, upstream=read)
    _write_stage(data / "04_baselines", {"metrics.csv": pd.concat([r[0] for r in base]),
                                         "predictions.parquet": pd.concat([r[2] for r in base])}, upstream=read)
    st = FiguresStage("smoke", data_root=root / "data", figures_root=root / "figures")
    st.main_table()
    st.paired_comparisons()
    st.main_comparison()
    st.seed_paired_differences()
    st.calibration()
    st.thresholds()
    st.permutation_control()
    st.write()
    return st


def test_summary_holds_what_a_readme_quotes_with_its_provenance(stage):
    summary = json.loads((stage.fig_dir / "summary.json").read_text())
    assert summary["profile"] == "smoke" and "SYNTHETIC" in summary["provenance"]
    main = statistics.main_comparison(stage.pred, LABELS, n_boot=stage.n_boot, seed=stage.seed)
    assert summary["main_comparison"]["mean_difference"] == pytest.approx(main["mean_difference"])
    assert summary["main_comparison"]["ci_low"] == pytest.approx(main["ci_low"])
    assert summary["main_comparison"]["n_seeds"] == 3 and summary["main_comparison"]["ci_low"] > 0
    ctl = summary["permutation_control"]
    assert ctl["n_runs"] == 4 and ctl["leak_detected"] is False
    assert ctl["macro_ap_excess"] <= ctl["macro_ap_excess_upper"] and ctl["macro_ap_detectable"] > 0
    cvf = summary["composition_vs_frequency"]
    assert cvf["model A"] == "composition + LR" and cvf["p_value"] <= cvf["p_holm"] <= 1
    assert set(summary["calibration"]) == {"fusion.corrected", "fusion.authors", "control.permuted_labels",
                                           "baseline.label_frequency", "baseline.composition_lr"}
    assert summary["main_table"]["fusion (corrected)"]["protein · F1"].count("±") == 1
    # the files the summary comes from are listed in the folder's manifest
    assert "summary.json" in json.loads((stage.fig_dir / "manifest.json").read_text())["outputs"]


def test_paired_table_states_holm_over_its_comparisons(stage):
    table = pd.read_csv(stage.fig_dir / "paired_comparisons.csv")
    assert len(table) == 5                  # corrected vs 4 others, composition vs frequency
    np.testing.assert_allclose(table["p_holm"], statistics.holm(table["p_value"]), atol=1e-4)
    assert "Holm's adjustment over the 5 comparisons" in (stage.fig_dir / "paired_comparisons.md").read_text()


def test_calibration_and_threshold_tables_state_floor_and_fallback(stage):
    calib = pd.read_csv(stage.fig_dir / "calibration.csv")
    assert (calib["ece_floor_p95"] > calib["ece_floor_mean"]).all() and (calib["ece_floor_mean"] > 0).all()
    assert "95th percentile" in (stage.fig_dir / "calibration.md").read_text()
    assert "fallback 0.5" in (stage.fig_dir / "thresholds.md").read_text()


def _snippet(summary_path: str, s: dict) -> str:
    main, ctl = s["main_comparison"], s["permutation_control"]
    cell = s["main_table"]["fusion (corrected)"]["protein · F1"]
    return (f"## Results\n<!-- summary-file: {summary_path} -->\n"
            f"Corrected minus authors: {main['mean_difference']:+.3f}<!-- summary: main_comparison/mean_difference --> "
            f"[{main['ci_low']:.3f}<!-- summary: main_comparison/ci_low -->, "
            f"{main['ci_high']:.2f}<!-- summary: main_comparison/ci_high -->] over "
            f"{main['n_seeds']}<!-- summary: main_comparison/n_seeds --> seeds.\n"
            f"The control's macro-AP excess is at most {ctl['macro_ap_excess_upper']:.3f}"
            f"<!-- summary: permutation_control/macro_ap_excess_upper -->; it would detect "
            f"{ctl['macro_ap_detectable']:.3f}<!-- summary: permutation_control/macro_ap_detectable -->.\n"
            f"| fusion | {cell}<!-- summary: main_table/fusion (corrected)/protein · F1 --> |\n")


def test_readme_quotes_are_checked_against_the_summary(stage, tmp_path, capsys):
    summary_path = stage.fig_dir / "summary.json"
    s = json.loads(summary_path.read_text())
    readme = tmp_path / "README.md"
    readme.write_text(_snippet(str(summary_path), s))
    assert readme_mismatches(readme.read_text(), root=tmp_path) == []
    assert proloc(["check-readme", str(readme)]) == 0
    assert "7 of 7 tagged quote(s)" in capsys.readouterr().out
    # one stale number, one unknown key: both named with their line
    wrong = f"{s['main_comparison']['ci_low'] + 0.01:.3f}"
    stale = readme.read_text().replace(f"{s['main_comparison']['ci_low']:.3f}<!--", f"{wrong}<!--")
    stale += "Runs: 9<!-- summary: permutation_control/runs -->\n"
    readme.write_text(stale)
    problems = readme_mismatches(stale, root=tmp_path)
    assert len(problems) == 2
    assert problems[0].startswith("line 3: main_comparison/ci_low: README says " + wrong)
    assert "'permutation_control/runs' is not in" in problems[1]
    assert proloc(["check-readme", str(readme)]) == 1


def test_quote_rules_on_hand_made_values(tmp_path):
    assert quote_matches("+0.724", 0.72449) and quote_matches("0.72", 0.7249) and not quote_matches("0.725", 0.7244)
    assert quote_matches("−0.075", -0.0751) and quote_matches("3", 3) and quote_matches("0.000", -0.0001)
    assert quote_matches("0.921 ± 0.006", "0.921 ± 0.006") and not quote_matches("0.921 ± 0.007", "0.921 ± 0.006")
    assert not quote_matches("1", True)                     # flags are not numbers
    text = "x 0.5<!-- summary: a -->"
    assert readme_mismatches(text, root=tmp_path) == ["line 1: quote '0.5' of 'a' before any summary-file tag"]
    with pytest.raises(stage_figures.ReadmeCheckError, match="absent.json: not found"):
        readme_mismatches("<!-- summary-file: absent.json -->", root=tmp_path)


@pytest.mark.slow
def test_main_table_shows_as_narrower_unwrapped_tables_and_its_csv_is_unchanged(smoke_run):
    stages, figs, _ = smoke_run
    stage = FiguresStage("smoke", data_root=stages.parent, figures_root=figs.parent / "unused")
    main = stage.main_table()
    views = stage.main_table_views()

    def plain(items):
        return [str(x).replace("\u00a0", " ").replace("\u2011", "-") for x in items]

    titles = [v.caption.split(" (test", 1)[0] for v in views]
    assert titles[:3] == ["Image level, the paper's formulas", "Image level, micro-averaged over labels",
                          "Protein level, the standard metrics"]
    prefix = {"Image level": "image", "Protein level": "protein", "What each model trained on": ""}
    shown = []
    for view, title in zip(views, titles):
        level = prefix[title.split(",", 1)[0]]
        cols = [f"{level} · {c}" if level else c for c in plain(view.data.columns)]
        assert not any(" " in str(v) for v in view.data.to_numpy().ravel())      # nothing to wrap at
        assert len(cols) <= 7                                                     # fits a notebook window
        for model, row in zip(plain(view.data.index), view.data.itertuples(index=False)):
            assert plain(row) == [str(v) for v in main.loc[model, cols]]          # the main table's cells
        shown += [c for c in cols if not c.endswith(" · n")]
    # every column of the main table is in exactly one view (n with each)
    assert sorted(shown) == sorted(c for c in main.columns if not c.endswith(" · n"))
    # models scored only per protein (sequence baselines, MIL) have no image-level row to show
    assert not (views[0].data.drop(columns="n") == "—").all(axis=1).any()
    html = "".join(v.to_html() for v in views)
    assert html.count("white-space: nowrap") >= 3 and "SYNTHETIC" in html
    assert "T_main_0" in html and "T_main_2" in html                           # fixed ids: reruns compare equal
    csv = pd.read_csv(figs / "main_table.csv")
    assert list(csv.columns) == ["model", *main.columns, "provenance"]


@pytest.mark.slow
def test_new_figures_and_the_confusion_table_are_written(smoke_run):
    stages, figs, executed = smoke_run
    for name in ("label_counts", "confusion", "roc_curves", "prediction_gallery", "main_metrics",
                 "training_curves"):
        assert (figs / f"{name}.png").stat().st_size > 1000 and (figs / f"{name}.svg").exists(), name
    counts = pd.read_csv(figs / "confusion_counts.csv")
    pred = pd.read_parquet(stages / "03_training" / "predictions.parquet")
    test = pred[(pred["model"] == "fusion.corrected") & (pred["level"] == "protein") & (pred["split"] == "test")]
    test = test[test["seed"] == test["seed"].min()]
    assert (counts[["TP", "FN", "FP", "TN"]].sum(axis=1) == len(test)).all()     # every test protein once per label
    for _, r in counts.iterrows():
        y = test[f"y:{r['label']}"].astype(int)
        assert r["TP"] + r["FN"] == y.sum()
        assert r["TP"] + r["FP"] == (test[f"p:{r['label']}"] >= test[f"t:{r['label']}"]).sum()
    assert counts["provenance"].str.contains("SYNTHETIC").all()


# -- intervals over too few proteins in the tables -------------------------------------------------
def test_interval_cells():
    assert interval_cell(1.0, 1.0, 1.0, 1) == "1.000 (n=1: too few proteins for an interval)"
    assert interval_cell(0.8125, 0.7011, 0.905, 54) == "0.812 [0.701, 0.905]"
    assert interval_cell(float("nan"), float("nan"), float("nan"), 3) == "undefined (no positive)"


def test_paired_comparisons_over_too_few_proteins_are_marked():
    table = pd.DataFrame({"model A": ["x", "x"], "model B": ["y", "z"], "mean_difference": [0.0, 0.1],
                          "ci_low": [0.0, 0.02], "ci_high": [0.0, 0.2], "n_proteins": [1, 54], "n_boot": [200, 200]})
    out = mark_uninformative(table)
    assert list(out["ci_low"]) == ["n=1: too few proteins for an interval", 0.02]
    assert list(out["ci_high"]) == ["n=1: too few proteins for an interval", 0.2]
    assert list(out["mean_difference"]) == [0.0, 0.1] and table["ci_low"].tolist() == [0.0, 0.02]   # input unchanged
    assert mark_uninformative(pd.DataFrame()).empty
