"""Notebook 05's new views on the smoke run: the main table readable in two parts, and the figures
and table a biologist looks for (label counts, calls per label, ROC, a gallery of test images)."""
import pandas as pd

from proloc_lib.stages.figures import FiguresStage


def test_main_table_shows_as_two_unwrapped_tables_and_its_csv_is_unchanged(smoke_run):
    stages, figs, _ = smoke_run
    stage = FiguresStage("smoke", data_root=stages.parent, figures_root=figs.parent / "unused")
    main = stage.main_table()
    image, protein = stage.main_table_views()

    def plain(items):
        return [str(x).replace("\u00a0", " ") for x in items]

    assert plain(image.data.columns) == [c.split(" · ", 1)[1] for c in main.columns if c.startswith("image · ")]
    assert plain(protein.data.columns) == [c.split(" · ", 1)[1] for c in main.columns if c.startswith("protein · ")]
    assert set(plain(protein.data.index)) == set(main.index)
    # every cell unbreakable ("0.856 ± 0.005" on one line), the values those of the main table
    for view, level in ((image, "image"), (protein, "protein")):
        assert not any(" " in str(v) for v in view.data.to_numpy().ravel())
        row = plain(view.data.index).index(main.index[-1]) if main.index[-1] in plain(view.data.index) else None
        if row is not None:
            assert plain(view.data.iloc[row]) == [str(v) for v in main.loc[main.index[-1], [
                c for c in main.columns if c.startswith(f"{level} · ")]]]
    # models scored only per protein (sequence baselines, MIL) have no image-level row to show
    assert not (image.data.drop(columns="n") == "—").all(axis=1).any()
    html = image.to_html() + protein.to_html()
    assert html.count("white-space: nowrap") >= 2 and "SYNTHETIC" in html
    assert "T_main_image" in html and "T_main_protein" in html            # fixed ids: reruns compare equal
    csv = pd.read_csv(figs / "main_table.csv")
    assert list(csv.columns) == ["model", *main.columns, "provenance"]


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
