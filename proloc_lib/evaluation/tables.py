"""Tables from the tidy metrics: the paper's table, summaries (mean ± sd over seeds), the main table,
per-label tables."""

from __future__ import annotations

import pandas as pd

from proloc_lib.core import runs
from proloc_lib.evaluation import metrics
from proloc_lib.evaluation.scoring import TRUTH_AUTHORS, primary_truth

# Columns of the model tables: standard metrics, then the paper's formulas where they differ.
TABLE_METRICS = (["absolute_true", "accuracy", "precision", "recall", "f1"] + metrics.PAPER_ONLY_NAMES
                 + ["micro_accuracy", "micro_precision", "micro_recall", "micro_f1", "macro_f1"])


def display(model: str) -> str:
    """``runs.display_name`` for a run id; anything else (a legacy display string) unchanged."""
    try:
        return runs.display_name(model)
    except ValueError:
        return str(model)


def paper_table(results: pd.DataFrame, level: str = "protein", split: str = "test", *,
                metric_names=None) -> pd.DataFrame:
    """Models x metrics (standard and ``_paper``), mean over seeds; rows named by ``display``.
    Scored against the image table's own labels (``scoring.primary_truth``)."""
    results = primary_truth(results)
    sel = results[(results["level"] == level) & (results["split"] == split) & (results["label"] == "overall")]
    wide = sel.pivot_table(index="model", columns="metric", values="value", aggfunc="mean", dropna=False)
    cols = [c for c in (metric_names or TABLE_METRICS) if c in wide.columns]
    out = wide[cols].rename(columns=metrics.DISPLAY_NAMES)
    out.index = [display(m) for m in out.index]
    out.index.name = "model"
    return out


def _cells(sel: pd.DataFrame, index: str = "model") -> pd.DataFrame:
    """'mean ± sd' per (index, metric) over seeds/folds; 'undefined' where every value is NaN."""
    g = sel.groupby([index, "metric"])["value"]
    stats = g.agg(["mean", "std", "count"]).reset_index()   # count ignores NaN
    stats["cell"] = ["undefined" if c == 0 else f"{m:.3f}" + (f" ± {s:.3f}" if c > 1 else "")
                     for m, s, c in zip(stats["mean"], stats["std"].fillna(0), stats["count"])]
    return stats.pivot(index=index, columns="metric", values="cell")


def summary_table(results: pd.DataFrame, level: str = "protein", split: str = "test", *,
                  metric_names=None) -> pd.DataFrame:
    """Standard and paper metrics per model as 'mean ± sd' over seeds (over folds for a
    cross-validated model); rows named by ``display``. Scored against the image table's own labels."""
    results = primary_truth(results)
    names = list(metric_names or TABLE_METRICS)
    sel = results[(results["level"] == level) & (results["split"] == split) & (results["label"] == "overall")
                  & results["metric"].isin(names)]
    wide = _cells(sel)
    out = wide[[c for c in names if c in wide.columns]].rename(columns=metrics.DISPLAY_NAMES)
    out.index = [display(m) for m in out.index]
    out.index.name = "model"
    return out


# The full profile's main table: the authors' test images scored with the paper's formulas (their
# own setting), next to test proteins scored with the standard ones (ours).
MAIN_IMAGE_METRICS = metrics.PAPER_SET
MAIN_PROTEIN_METRICS = ["f1", "precision", "recall", "micro_f1", "macro_f1", "macro_ap"]


def main_table(results: pd.DataFrame, *, models=None, split: str = "test") -> pd.DataFrame:
    """One row per model (``models``: run ids in order; default all): image level with the
    paper's formulas (``image · F1_paper`` ...) and protein level with the standard metrics
    (``protein · F1`` ...), 'mean ± sd' over seeds, plus the number of test images and proteins.

    Where the results hold image-level rows scored against the authors' own test labels
    (``truth = authors_table``), image level is shown twice: against the image table's labels
    (``image · ...``) and against the authors' (``image, authors' labels · ...``, the row
    comparable with the paper). Where the results say what each run trained on, a ``trained on``
    column gives it (proteins and images). A model scored only per protein (sequence
    baselines, MIL) has '—' in the image columns.
    """
    overall = results[(results["split"] == split) & (results["label"] == "overall")]
    if models is not None:
        overall = overall[overall["model"].isin(models)]
    theirs = overall[overall["truth"] == TRUTH_AUTHORS] if "truth" in overall.columns else overall.iloc[:0]
    overall = primary_truth(overall)
    parts = []
    for level, names, rows, title in (("image", MAIN_IMAGE_METRICS, overall, "image"),
                                      ("image", MAIN_IMAGE_METRICS, theirs, "image, authors' labels"),
                                      ("protein", MAIN_PROTEIN_METRICS, overall, "protein")):
        sel = rows[(rows["level"] == level) & rows["metric"].isin(names + ["n"])]
        if sel.empty:
            continue
        wide = _cells(sel)
        n = sel[sel["metric"] == "n"].groupby("model")["value"].max()
        cols = {c: f"{title} · {metrics.DISPLAY_NAMES.get(c, c)}" for c in names if c in wide.columns}
        part = wide[list(cols)].rename(columns=cols)
        part.insert(0, f"{title} · n", n.reindex(part.index).map(lambda v: "" if pd.isna(v) else str(int(v))))
        parts.append(part)
    if not parts:
        raise ValueError(f"no overall metrics for split '{split}' in these results")
    out = pd.concat(parts, axis=1).fillna("—")
    trained = trained_on(overall)
    if trained is not None:
        out.insert(0, "trained on", trained.reindex(out.index).fillna("—"))
    order = list(models) if models is not None else list(dict.fromkeys(overall["model"]))
    out = out.reindex([m for m in order if m in out.index])
    out.index = [display(m) for m in out.index]
    out.index.name = "model"
    return out


def trained_on(results: pd.DataFrame) -> pd.Series | None:
    """Per model: which proteins its runs trained on, e.g. 'train+val: 494 proteins, 5,169 images'
    (None when the results do not say)."""
    cols = ["train_on", "train_proteins", "train_images"]
    if not all(c in results.columns for c in cols):
        return None
    rows = results.dropna(subset=cols).drop_duplicates(["model", *cols])

    def text(g):
        return "; ".join(f"{r.train_on}: {int(r.train_proteins):,} proteins, {int(r.train_images):,} images"
                         for r in g.itertuples())
    return rows.groupby("model")[cols].apply(text) if len(rows) else None


def per_label_table(results: pd.DataFrame, *, metric: str = "f1", level: str = "protein",
                    split: str = "test") -> pd.DataFrame:
    """Models x labels for one per-label metric, 'mean ± sd' over seeds; a label without positive
    proteins in the split reads 'undefined' (not 1.0). Scored against the image table's own labels."""
    results = primary_truth(results)
    sel = results[(results["level"] == level) & (results["split"] == split) & (results["label"] != "overall")
                  & (results["metric"] == metric)]
    g = sel.groupby(["model", "label"])["value"].agg(["mean", "std", "count"]).reset_index()
    g["cell"] = ["undefined (no positive)" if c == 0 else f"{m:.3f}" + (f" ± {s:.3f}" if c > 1 else "")
                 for m, s, c in zip(g["mean"], g["std"].fillna(0), g["count"])]
    out = g.pivot(index="model", columns="label", values="cell")
    out.index = [display(m) for m in out.index]
    out.index.name = "model"
    return out


# Legacy display strings (before run ids) -> run ids, so tables of older stage outputs still load.
_LEGACY = {"fusion (authors)": runs.FUSION_AUTHORS, "sequence-only (pooled ProtT5 + MLP)": "baseline.sequence_mlp"}


def as_run_id(model: str) -> str:
    """A run id for ``model``: ids pass through; older display strings are mapped back."""
    try:
        runs.parse(model)
        return model
    except ValueError:
        pass
    legacy = {**{v: k for k, v in runs._DISPLAY.items()}, **_LEGACY}
    if model in legacy:
        return legacy[model]
    if model.startswith("ablation: "):
        return runs.make_id("ablation", model[len("ablation: "):])
    if "fold CV" in model and model.startswith("fusion ("):
        return runs.make_id("cv", model[len("fusion ("):model.index(")")])
    raise ValueError(f"cannot map model name {model!r} to a run id")
