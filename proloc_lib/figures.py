"""Figures in one seaborn style, each saved as PNG and SVG with its provenance caption."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns


def set_style():
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")


def save(fig, out_dir: str | Path, name: str, caption: str, formats=("png", "svg")) -> list[Path]:
    """Caption goes on the figure itself, so a PNG taken out of context still says what it is."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig.text(0.01, 0.005, caption, fontsize=7, ha="left", va="bottom", wrap=True, color="dimgray")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    paths = []
    for fmt in formats:
        p = out_dir / f"{name}.{fmt}"
        fig.savefig(p, dpi=150)
        paths.append(p)
    return paths


def per_label_f1(results: pd.DataFrame, level: str = "protein", split: str = "test"):
    sel = results[(results["level"] == level) & (results["split"] == split) & (results["metric"] == "f1")
                  & (results["label"] != "overall")]
    fig, ax = plt.subplots(figsize=(9, 4.2))
    sns.barplot(data=sel, x="label", y="value", hue="model", ax=ax, errorbar="sd")
    ax.set(xlabel="", ylabel=f"F1 ({level} level, {split})", ylim=(0, 1))
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def overall_bars(table: pd.DataFrame):
    """The paper's metrics per model (a models x metrics frame from evaluation.paper_table)."""
    long = table.reset_index().melt(id_vars="model", var_name="metric", value_name="value")
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
        ax.set_title(name, fontsize=10)
        ax.legend(fontsize=8)
    return fig
