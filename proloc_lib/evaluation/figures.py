"""Figures in one seaborn style, each saved as PNG and SVG with its provenance caption."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from proloc_lib.core.runs import display_name
from proloc_lib.data.images import load_image
from proloc_lib.evaluation.metrics import calibration, f1_at_thresholds


def set_style():
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")


def _name(model: str) -> str:
    try:
        return display_name(model)
    except ValueError:          # not a run id (older outputs): shown as it is
        return str(model)


def finish(fig, caption: str):
    """Put the caption on the figure itself (a PNG taken out of context still says what it is) and
    lay it out; returns the figure, so a notebook cell can display exactly what will be saved."""
    if not getattr(fig, "_proloc_caption", None):
        fig.text(0.01, 0.005, caption, fontsize=7, ha="left", va="bottom", wrap=True, color="dimgray")
        fig.tight_layout(rect=(0, 0.06, 1, 1))
        # tight_layout leaves a placeholder layout engine behind, and with any engine set each savefig
        # lays out all text in one extra unrendered draw first: twice the work per file for the same
        # bytes (the layout is fixed here). Without it, notebook 05's last cell took half the time.
        fig.set_layout_engine(None)
        fig._proloc_caption = caption
    return fig


def save(fig, out_dir: str | Path, name: str, caption: str, formats=("png", "svg")) -> list[Path]:
    """Save a captioned figure (``finish``) as each of ``formats``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    finish(fig, caption)
    paths = []
    for fmt in formats:
        p = out_dir / f"{name}.{fmt}"
        fig.savefig(p, dpi=150)
        paths.append(p)
    return paths


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$",
          "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX.get(c, c) for c in text)


def save_table(table: pd.DataFrame, out_dir: str | Path, name: str, caption: str, *,
               formats=("csv", "md", "tex"), index: bool = True, note: str | None = None) -> list[Path]:
    """Write a table whose provenance travels in the file itself: a ``provenance`` column in the CSV,
    the caption (and ``note``) above the Markdown table, a LaTeX caption and comment in the .tex."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    flat = table.reset_index() if index else table.copy()
    text = caption + (f" {note}" if note else "")
    paths = []
    for fmt in formats:
        p = out_dir / f"{name}.{fmt}"
        if fmt == "csv":
            flat.assign(provenance=text).to_csv(p, index=False)
        elif fmt == "md":
            p.write_text(f"{caption}\n\n" + (f"{note}\n\n" if note else "") + flat.to_markdown(index=False) + "\n")
        elif fmt == "tex":
            body = flat.to_latex(index=False, escape=True, na_rep="undefined", caption=_latex_escape(text),
                                 label=f"tab:{name}")
            p.write_text(f"% {text}\n" + body)
        else:
            raise ValueError(f"unknown table format '{fmt}' (csv, md, tex)")
        paths.append(p)
    return paths


def per_label_intervals(boot: pd.DataFrame, labels: list[str], metric: str = "f1", level: str = "protein",
                        split: str = "test"):
    """Per-label ``metric`` of each model with its bootstrap interval (``evaluation.bootstrap_per_label``).
    A label without positives is marked 'undefined' instead of drawn."""
    sel = boot[boot["metric"] == metric]
    models = list(dict.fromkeys(sel["model"]))
    fig, ax = plt.subplots(figsize=(10, 4.4))
    width = 0.8 / max(1, len(models))
    for i, (model, color) in enumerate(zip(models, sns.color_palette(n_colors=len(models)))):
        m = sel[sel["model"] == model].set_index("label").reindex(labels)
        x = np.arange(len(labels)) - 0.4 + width * (i + 0.5)
        err = np.vstack([m["value"] - m["ci_low"], m["ci_high"] - m["value"]])
        ax.errorbar(x, m["value"], yerr=err, fmt="o", ms=4, color=color, capsize=2, lw=1, label=_name(model))
    for j, lab in enumerate(labels):
        if sel[sel["label"] == lab]["value"].isna().all():
            ax.text(j, 0.5, "undefined:\nno positive\nin this split", ha="center", va="center", fontsize=8,
                    color="dimgray")
    ax.set_xticks(np.arange(len(labels)), [lab.replace(" ", "\n") for lab in labels])
    n_boot = int(sel["n_boot"].max()) if len(sel) else 0
    ax.set(ylabel=f"{metric.replace('_', ' ')} ({level}, {split}), 95% CI", ylim=(0, 1.02),
           title=f"per label, bootstrap over {level}s ({n_boot} resamples)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def per_label_f1(results: pd.DataFrame, level: str = "protein", split: str = "test"):
    """Per-label F1, mean and sd over seeds (tidy results); undefined labels are marked, not drawn."""
    sel = results[(results["level"] == level) & (results["split"] == split) & (results["metric"] == "f1")
                  & (results["label"] != "overall")].assign(model=lambda d: d["model"].map(_name))
    labels = list(dict.fromkeys(sel["label"]))
    fig, ax = plt.subplots(figsize=(9, 4.2))
    sns.barplot(data=sel.dropna(subset=["value"]), x="label", y="value", hue="model", ax=ax, errorbar="sd",
                order=labels)
    for j, lab in enumerate(labels):
        if sel[sel["label"] == lab]["value"].isna().all():
            ax.text(j, 0.5, "undefined:\nno positive", ha="center", fontsize=8, color="dimgray")
    ax.set(xlabel="", ylabel=f"F1 ({level} level, {split})", ylim=(0, 1))
    ax.set_xticks(range(len(labels)), [lab.replace(" ", "\n") for lab in labels])
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def overall_bars(table: pd.DataFrame):
    """The paper's metrics per model (a models x metrics frame from evaluation.paper_table)."""
    long = table.reset_index().melt(id_vars="model", var_name="metric", value_name="value").dropna()
    fig, ax = plt.subplots(figsize=(10, 4.2))
    sns.barplot(data=long, x="metric", y="value", hue="model", ax=ax)
    ax.set(xlabel="", ylabel="score", ylim=(0, 1))
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def training_curves(history: pd.DataFrame):
    """Train and validation loss per epoch, one panel per model (first seed); the selected epoch dashed."""
    if "model" not in history.columns:
        history = history.assign(model="fusion", seed=0)
    history = history[history["seed"] == history["seed"].min()]
    models = list(dict.fromkeys(history["model"]))
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 3.8), squeeze=False)
    for ax, name in zip(axes[0], models):
        h = history[history["model"] == name]
        long = h.melt(id_vars="epoch", value_vars=["train_loss", "val_loss"], var_name="split", value_name="loss")
        sns.lineplot(data=long, x="epoch", y="loss", hue="split", marker="o", ax=ax)
        best = h.loc[h["best"].astype(bool), "epoch"]
        if len(best):
            ax.axvline(int(best.iloc[0]), color="gray", ls="--", lw=1, label="selected epoch")
        ax.set_title(_name(name), fontsize=10)
        ax.legend(fontsize=8)
    return fig


def _slice(pred: pd.DataFrame, model: str, level: str, split: str) -> pd.DataFrame:
    sel = pred[(pred["model"] == model) & (pred["level"] == level) & (pred["split"] == split)]
    return sel[sel["seed"] == sel["seed"].min()]


def pr_curves(pred: pd.DataFrame, labels: list[str], models: list[str], level: str = "protein", split: str = "test"):
    """Precision-recall curve per label (one panel each), one line per model."""
    from sklearn.metrics import precision_recall_curve

    fig, axes = plt.subplots(1, len(labels), figsize=(3.2 * len(labels), 3.4), sharey=True)
    for ax, lab in zip(axes, labels):
        for model in models:
            s = _slice(pred, model, level, split)
            if s[f"y:{lab}"].sum() == 0:
                continue
            prec, rec, _ = precision_recall_curve(s[f"y:{lab}"], s[f"p:{lab}"])
            ax.plot(rec, prec, label=_name(model), lw=1.3)
        ax.set(title=lab, xlabel="recall", xlim=(0, 1), ylim=(0, 1.02))
    axes[0].set_ylabel(f"precision ({level}, {split})")
    axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def f1_vs_threshold(pred: pd.DataFrame, labels: list[str], model: str, level: str = "protein", split: str = "val"):
    """F1 of each label against its threshold on validation; dots mark the chosen thresholds.

    A label without a positive in the split has no F1 curve (undefined at every threshold, not
    1.0): it is named in the legend with the fallback threshold it kept (an ``x`` on the axis)."""
    grid = np.linspace(0.02, 0.98, 49)
    s = _slice(pred, model, level, split)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for lab, color in zip(labels, sns.color_palette(n_colors=len(labels))):
        y, p = s[f"y:{lab}"].to_numpy(), s[f"p:{lab}"].to_numpy()
        t = s[f"t:{lab}"].iloc[0]
        if not y.any():
            ax.plot([t], [0], "x", color=color, clip_on=False,
                    label=f"{lab}: undefined, no positive in {split} (fallback threshold {t:g})")
            continue
        ax.plot(grid, f1_at_thresholds(y, p, grid), label=lab, color=color)
        ax.plot([t], f1_at_thresholds(y, p, [t]), "o", color=color)
    ax.set(xlabel="threshold", ylabel=f"F1 ({level}, {split})", ylim=(0, 1.02), title=_name(model))
    ax.legend(fontsize=7)
    return fig


def reliability(pred: pd.DataFrame, labels: list[str], models: list[str], level: str = "protein",
                split: str = "test", n_bins: int = 10):
    """Observed frequency against predicted probability, all labels pooled; the legend gives each
    model's expected calibration error and Brier score (same bins, ``metrics.calibration``)."""
    fig, ax = plt.subplots(figsize=(5.5, 4.8))
    ax.plot([0, 1], [0, 1], ls="--", color="gray", lw=1)
    for model in models:
        s = _slice(pred, model, level, split)
        p = s[[f"p:{lab}" for lab in labels]].to_numpy().ravel()
        y = s[[f"y:{lab}" for lab in labels]].to_numpy().ravel()
        bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
        xs, ys = [], []
        for b in range(n_bins):
            if (bins == b).sum() >= 3:
                xs.append(p[bins == b].mean())
                ys.append(y[bins == b].mean())
        c = calibration(y, p, n_bins=n_bins)
        ax.plot(xs, ys, marker="o", label=f"{_name(model)} (ECE {c['ece']:.3f}, Brier {c['brier']:.3f})")
    ax.set(xlabel="predicted probability", ylabel="observed frequency", xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=7)
    return fig


def cooccurrence(proteins: pd.DataFrame, pred: pd.DataFrame, labels: list[str], model: str,
                 level: str = "protein", split: str = "test"):
    """Label co-occurrence (fraction of proteins) in the data and in a model's calls."""
    s = _slice(pred, model, level, split)
    truth = proteins[labels].to_numpy(dtype=int)
    calls = np.stack([(s[f"p:{lab}"] >= s[f"t:{lab}"]).to_numpy(dtype=int) for lab in labels], 1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.3))
    for ax, mat, title in ((axes[0], truth, f"data (all {len(truth)} proteins)"),
                           (axes[1], calls, f"{_name(model)} calls ({split}, {len(calls)} proteins)")):
        co = mat.T @ mat / max(1, len(mat))
        sns.heatmap(pd.DataFrame(co, index=labels, columns=labels), annot=True, fmt=".2f", vmin=0, vmax=1,
                    cmap="rocket_r", ax=ax, cbar=False)
        ax.set_title(title, fontsize=9)
    return fig


def attention_maps(model, examples: list[dict], n_top_residues: int = 10):
    """Cross-attention of a few proteins: over image patches (left) and residues (right).

    ``examples``: dicts with ``image`` (PIL), ``img_tokens`` (T, Di), ``seq_tokens`` (L, Ds) and
    ``title``. Residue profile: attention each residue receives, averaged over image tokens.
    Patch map: how much each 16x16 patch attends to the protein's most attended residues.
    """
    import torch

    fig, axes = plt.subplots(len(examples), 2, figsize=(11, 2.8 * len(examples)), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 2.6]})
    model.eval()
    for (ax_img, ax_seq), ex in zip(axes, examples):
        img, seq = ex["img_tokens"][None].float(), ex["seq_tokens"][None].float()
        mask = torch.ones(1, seq.shape[1], dtype=torch.bool)
        with torch.no_grad():
            _, w = model(img, seq, mask, return_attention=True)
        w = w[0].numpy()                                  # (image tokens, residues)
        profile = w.mean(0)
        top = np.argsort(profile)[-n_top_residues:]
        n_patch = w.shape[0] - 1
        side = int(round(np.sqrt(n_patch)))
        ax_img.imshow(ex["image"].resize((224, 224)))
        if side * side == n_patch:                        # one 224-pixel view: 14 x 14 patches + CLS
            heat = w[1:, top].sum(1).reshape(side, side)
            ax_img.imshow(heat, cmap="magma", alpha=0.55, extent=(0, 224, 224, 0), interpolation="nearest")
        ax_img.set_axis_off()
        ax_img.set_title(ex["title"], fontsize=8)
        ax_seq.plot(np.arange(1, len(profile) + 1), profile, lw=0.8)
        ax_seq.set(xlabel="residue", ylabel="attention", xlim=(1, len(profile)))
    return fig


def data_card_figure(proteins: pd.DataFrame, images: pd.DataFrame, labels: list[str]):
    """Proteins per label and split, label co-occurrence, images per protein."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), gridspec_kw={"width_ratios": [1.3, 1.1, 0.9]})
    counts = proteins.melt(id_vars="split", value_vars=labels, var_name="label").query("value == 1")
    sns.countplot(data=counts, x="label", order=labels, hue="split", hue_order=["train", "val", "test"], ax=axes[0])
    axes[0].set_xticks(axes[0].get_xticks(), [lab.replace(" ", "\n") for lab in labels])
    axes[0].set(xlabel="", ylabel="proteins")
    y = proteins[labels].to_numpy(dtype=int)
    sns.heatmap(pd.DataFrame(y.T @ y, index=labels, columns=labels), annot=True, fmt="d", cmap="rocket_r",
                cbar=False, ax=axes[1])
    axes[1].set_title("label co-occurrence (proteins)", fontsize=10)
    sns.histplot(images.groupby("protein_id").size(), discrete=True, ax=axes[2])
    axes[2].set(xlabel="images per protein", ylabel="proteins")
    return fig


def show(fig):
    """Display a figure inline as PNG whatever the matplotlib backend (papermill runs may set Agg)."""
    import io

    from IPython.display import Image, display

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    display(Image(data=buf.getvalue()))


class Outputs:
    """What notebook 05 shows, kept until one final cell writes it all into the stage output
    (so a failed run leaves the last complete ``figures/<profile>/`` untouched and the manifest
    lists only what this run wrote). Each figure is captioned, shown inline and closed."""

    def __init__(self, caption: str):
        self.caption = caption
        self.figures: dict[str, object] = {}
        self.tables: dict[str, tuple[pd.DataFrame, str | None, bool]] = {}

    def figure(self, name: str, fig) -> None:
        finish(fig, self.caption)
        show(fig)
        plt.close(fig)          # no second copy from the inline backend; savefig still works
        self.figures[name] = fig

    def table(self, name: str, table: pd.DataFrame, *, note: str | None = None, index: bool = True) -> pd.DataFrame:
        self.tables[name] = (table, note, index)
        return table

    def write(self, out_dir: str | Path, formats=("png", "svg")) -> list[Path]:
        paths = []
        for name, fig in self.figures.items():
            paths += save(fig, out_dir, name, self.caption, formats)
        for name, (table, note, index) in self.tables.items():
            paths += save_table(table, out_dir, name, self.caption, note=note, index=index)
        return paths


def image_examples(images: pd.DataFrame, proteins: pd.DataFrame, labels: list[str], root: Path, *,
                   synthetic: bool, n: int = 6):
    """One image of each of the first ``n`` proteins, titled with the protein's labels."""
    picks = images.groupby("protein_id").head(1).head(n)
    by_id = proteins.set_index("protein_id")
    fig, axes = plt.subplots(1, len(picks), figsize=(2.6 * len(picks), 2.9), squeeze=False)
    for ax, row in zip(axes[0], picks.itertuples()):
        ax.imshow(load_image(Path(root) / row.path))
        ax.axis("off")
        on = [lab for lab in labels if by_id.loc[row.protein_id, lab]]
        ax.set_title("\n".join(on) or "none", fontsize=8)
    fig.suptitle(("SYNTHETIC images. " if synthetic else "") + "One image per protein", fontsize=9)
    return fig
