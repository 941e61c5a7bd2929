"""Notebook 05's new views on the smoke run: the main table readable in two parts, and the figures
and table a biologist looks for (label counts, calls per label, ROC, a gallery of test images)."""
import pandas as pd

from proloc_lib.stages.figures import FiguresStage


def test_main_table_shows_as_three_unwrapped_tables_and_its_csv_is_unchanged(smoke_run):
    stages, figs, _ = smoke_run
    stage = FiguresStage("smoke", data_root=stages.parent, figures_root=figs.parent / "unused")
    main = stage.main_table()
    views = stage.main_table_views()

    def plain(items):
        return [str(x).replace("\u00a0", " ").replace("\u2011", "-") for x in items]

    # every column of the main table is in exactly one view (n once per view), with the same cells
    shown = [(view, view.caption.split(" ", 1)[0].lower()) for view in views]      # "Image level, ..."
    assert len(views) == 3 and [lvl for _, lvl in shown] == ["image", "image", "protein"]
    columns = [f"{lvl} · {c}" for view, lvl in shown for c in plain(view.data.columns) if c != "n"]
    assert sorted(columns) == sorted(c for c in main.columns if not c.endswith(" · n"))
    assert all(len(view.data.columns) <= 7 for view in views)          # fits a notebook window
    for view, level in shown:
        assert not any(" " in str(v) for v in view.data.to_numpy().ravel())
        for model, row in zip(plain(view.data.index), view.data.itertuples(index=False)):
            cols = [f"{level} · {c}" for c in plain(view.data.columns)]
            assert plain(row) == [str(v) for v in main.loc[model, cols]]
    # models scored only per protein (sequence baselines, MIL) have no image-level row to show
    assert not (views[0].data.drop(columns="n") == "—").all(axis=1).any()
    html = "".join(v.to_html() for v in views)
    assert html.count("white-space: nowrap") >= 3 and "SYNTHETIC" in html
    assert "T_main_0_image" in html and "T_main_2_protein" in html     # fixed ids: reruns compare equal
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
