"""The five notebooks: committed clean, and executed end to end on the `smoke` profile."""
import json

import nbformat
import pandas as pd
import pytest

from proloc_lib.cli.main import main as proloc
from proloc_lib.core.paths import PROJECT_ROOT as ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("0[1-5]_*.ipynb"))


def test_five_notebooks_in_order():
    assert [p.stem for p in NOTEBOOKS] == ["01_data_assembly", "02_embeddings", "03_training",
                                           "04_baselines", "05_figures"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_has_no_outputs_and_a_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name} has outputs"
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    assert "parameters" in first_code.metadata.get("tags", [])
    for name in ("profile", "seed", "device", "data_root"):
        assert f"{name} =" in first_code.source


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """Run 01..05 once on `smoke` into a temporary data and figures root, as `proloc run` does.
    That takes minutes: every test that reads it is marked slow."""
    from proloc_lib.stages.runner import execute_notebook

    base = tmp_path_factory.mktemp("smoke")
    data_root, fig_root, executed = base / "data", base / "figures", base / "executed"
    executed.mkdir()
    for path in NOTEBOOKS:
        params = {"profile": "smoke", "seed": 0, "device": "cpu", "data_root": str(data_root)}
        if path.stem == "05_figures":
            params["figures_root"] = str(fig_root)
        execute_notebook(path, executed / path.name, params, progress=False)
    return data_root / "smoke", fig_root / "smoke", executed


@pytest.mark.slow
def test_smoke_run_writes_every_stage_with_manifests(smoke_run):
    stages, figs, _ = smoke_run
    for stage in ("01_data_assembly", "02_embeddings", "03_training", "04_baselines", "05_figures"):
        man = json.loads((stages / stage / "manifest.json").read_text())
        assert man["stage"] == stage and man["provenance"]["synthetic_images"] is True
        assert man["packages"]["torch"] and man["git_commit"]
        assert not (stages / f"{stage}.partial").exists()
    man = json.loads((stages / "03_training" / "manifest.json").read_text())
    assert any(k.endswith("proteins.parquet") for k in man["inputs"])
    for name in ("main_metrics", "per_label_f1", "training_curves"):
        assert (figs / f"{name}.png").stat().st_size > 1000 and (figs / f"{name}.svg").exists()
    assert "SYNTHETIC" in (figs / "main_table.md").read_text()


@pytest.mark.slow
def test_smoke_split_is_protein_disjoint(smoke_run):
    from proloc_lib.data.splits import check_disjoint

    stages, _, _ = smoke_run
    proteins = pd.read_parquet(stages / "01_data_assembly" / "proteins.parquet")
    images = pd.read_parquet(stages / "01_data_assembly" / "images.parquet")
    check_disjoint(proteins, images)
    assert set(proteins["split"]) == {"train", "val", "test"}


@pytest.mark.slow
def test_smoke_results_table_holds_every_model_and_level(smoke_run):
    from proloc_lib.core import runs

    stages, _, _ = smoke_run
    res = pd.read_csv(stages / "05_figures" / "all_metrics.csv")
    models = set(res["model"])
    assert {"fusion.corrected", "fusion.authors", "fusion.corrected_mil", "cv.corrected", "control.permuted_labels",
            "baseline.label_frequency", "baseline.composition_lr", "baseline.sequence_mlp", "baseline.image_mlp",
            "baseline.light_attention", "baseline.late_fusion", "baseline.early_fusion"} <= models
    assert all(runs.parse(m) for m in models)
    assert (res["display"] == res["model"].map(runs.display_name)).all()
    assert {"image", "protein"} <= set(res["level"])
    scores = res[~res["metric"].isin(["support", "n", "n_labels_scored"])]   # counts, not scores
    assert scores["value"].dropna().between(0, 1).all()


@pytest.mark.slow
def test_thresholds_come_from_validation_and_authors_keep_half(smoke_run):
    stages, _, _ = smoke_run
    res = pd.read_csv(stages / "03_training" / "metrics.csv")
    th = res[res["metric"] == "threshold"]
    assert (th[th["config"] == "authors"]["value"] == 0.5).all()
    for _, grp in th.fillna({"fold": -1}).groupby(["model", "level", "seed", "fold"]):   # one set per run and level
        assert (grp.groupby("label")["value"].nunique() == 1).all()
    assert res["config_hash"].notna().all() and res["git_commit"].notna().all()


@pytest.mark.slow
def test_cross_validation_tests_every_protein_once(smoke_run):
    stages, _, _ = smoke_run
    proteins = pd.read_parquet(stages / "01_data_assembly" / "proteins.parquet")
    pred = pd.read_parquet(stages / "03_training" / "predictions.parquet")
    cv = pred[(pred["model"] == "cv.corrected") & (pred["split"] == "test") & (pred["level"] == "protein")]
    assert sorted(cv["protein_id"]) == sorted(proteins["protein_id"])
    assert cv.groupby("fold")["protein_id"].apply(set).map(len).sum() == len(proteins)


@pytest.mark.slow
def test_predict_command_on_smoke_checkpoint(smoke_run, tmp_path):

    stages, _, _ = smoke_run
    proteins = pd.read_parquet(stages / "01_data_assembly" / "proteins.parquet")
    test = proteins[proteins["split"] == "test"].head(3)
    fasta = tmp_path / "new.fasta"
    fasta.write_text("".join(f">{p}\n{s}\n" for p, s in zip(test["protein_id"], test["sequence"])))
    out = tmp_path / "pred.csv"
    rc = proloc(["predict", "--checkpoint", str(stages / "03_training" / "checkpoint-corrected"), "--fasta", str(fasta),
                       "--images", str(stages / "images"), "--out", str(out), "--device", "cpu", "--no-progress"])
    assert rc == 0
    pred = pd.read_csv(out)
    assert list(pred["protein_id"]) == list(test["protein_id"]) and (pred["n_images"] == 2).all()
    prob_cols = [c for c in pred.columns if c.startswith("prob_")]
    assert len(prob_cols) == 5 and pred[prob_cols].stack().between(0, 1).all()
    assert pred["provenance"].str.contains("not biologically meaningful").all()


@pytest.mark.slow
def test_sharded_extract_command_resumes_on_a_complete_store(smoke_run, capsys):
    from proloc_lib.features import store

    stages, _, _ = smoke_run
    before = store.store_size_bytes(stages / "02_embeddings")
    rc = proloc(["extract", "--profile", "smoke", "--data-root", str(stages.parent), "--shard", "1/2",
                         "--device", "cpu"])
    assert rc == 0 and "sequences: 0 embedded" in capsys.readouterr().out
    assert store.store_size_bytes(stages / "02_embeddings") == before


@pytest.mark.slow
def test_figures_folder_is_the_stage_output_of_notebook_05(smoke_run):
    stages, figs, executed = smoke_run
    man = json.loads((figs / "manifest.json").read_text())
    on_disk = {p.name for p in figs.iterdir() if p.name != "manifest.json"}
    assert man["stage"] == "05_figures" and set(man["outputs"]) == on_disk      # only what this run wrote
    assert not (figs.parent / f"{figs.name}.partial").exists()
    for name in ("main_table", "per_label_intervals", "calibration", "paired_comparisons"):
        csv = pd.read_csv(figs / f"{name}.csv")
        assert csv["provenance"].str.contains("SYNTHETIC").all(), name
        assert "SYNTHETIC" in (figs / f"{name}.md").read_text().splitlines()[0], name
        assert (figs / f"{name}.tex").read_text().startswith("% Profile 'smoke'"), name
    # a label without a positive test protein is reported as undefined, never as 1.0
    proteins = pd.read_parquet(stages / "01_data_assembly" / "proteins.parquet")
    test = proteins[proteins["split"] == "test"]
    per_label = pd.read_csv(figs / "per_label_intervals.csv")
    for lab in [c for c in per_label.columns if c in test.columns and test[c].sum() == 0]:
        assert per_label[lab].str.startswith("undefined").all(), lab
    # figures show inline in the executed notebook, whatever the matplotlib backend
    nb = nbformat.read(executed / "05_figures.ipynb", as_version=4)
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert images >= 8


@pytest.mark.slow
def test_executed_notebooks_show_figures_inline(smoke_run):
    """The runner gives kernels the inline backend (not Agg): a figure left open in a cell is an
    image output of the executed notebook, as in JupyterLab; no running/failed copies remain."""
    _, _, executed = smoke_run
    nb = nbformat.read(executed / "01_data_assembly.ipynb", as_version=4)
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert images >= 1
    assert sorted(p.name for p in executed.iterdir()) == [p.name for p in NOTEBOOKS]


@pytest.mark.slow
def test_executed_notebooks_label_synthetic_numbers(smoke_run):
    _, _, executed = smoke_run
    for name in ("03_training.ipynb", "04_baselines.ipynb", "05_figures.ipynb"):
        text = json.dumps(nbformat.read(executed / name, as_version=4).cells)
        assert "SYNTHETIC" in text and "RANDOM-WEIGHT" in text, name


@pytest.mark.offline
def test_full_profile_offline_stops_at_once_and_writes_nothing(tmp_path):
    """Offline, the paper-scale profile must fail fast naming what it could not reach."""
    import time

    import papermill as pm

    t0 = time.perf_counter()
    with pytest.raises(pm.PapermillExecutionError) as err:
        pm.execute_notebook(str(NOTEBOOKS[0]), str(tmp_path / "out.ipynb"),
                            parameters={"profile": "full", "data_root": str(tmp_path / "data")},
                            cwd=str(ROOT / "notebooks"), progress_bar=False, kernel_name="python3")
    assert "OfflineError" in str(err.value) and "zenodo.org" in str(err.value) and "Colab" in str(err.value)
    assert time.perf_counter() - t0 < 120
    assert not (tmp_path / "data" / "full" / "01_data_assembly").exists()
