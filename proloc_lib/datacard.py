"""The data report (data card): counts per label and split, co-occurrence, drops and why."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from .download import format_bytes
from .splits import SPLITS


def label_split_counts(proteins: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    """Proteins per label (rows) and split (columns), plus totals."""
    t = proteins.groupby("split")[labels].sum().T.reindex(columns=list(SPLITS)).fillna(0).astype(int)
    t["all"] = t.sum(axis=1)
    t.loc["proteins"] = [int((proteins["split"] == s).sum()) for s in SPLITS] + [len(proteins)]
    return t


def cooccurrence(proteins: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    y = proteins[labels].to_numpy(dtype=int)
    return pd.DataFrame(y.T @ y, index=labels, columns=labels)


def data_card(proteins: pd.DataFrame, images: pd.DataFrame, labels: list[str], report: dict,
              provenance_note: str) -> str:
    per_protein = images.groupby("protein_id").size()
    n_labels = proteins[labels].sum(axis=1).value_counts().sort_index()
    lines = [
        "# Data report", "", f"> {provenance_note}", "",
        f"- proteins: {len(proteins)}; images: {len(images)}; "
        f"images per protein: median {int(per_protein.median())}, min {per_protein.min()}, max {per_protein.max()}",
        "- labels per protein: " + ", ".join(f"{k}: {v}" for k, v in n_labels.items()),
    ]
    if "image_bytes_on_disk" in report:
        est = report.get("download_estimate") or {}
        lines.append(f"- image files on disk: {format_bytes(report['image_bytes_on_disk'])}"
                     + (f" (estimated before download: {format_bytes(est['estimated_bytes'])})"
                        if est.get("estimated_bytes") else ""))
    lines += [
        "", "## Proteins per label and split", "", label_split_counts(proteins, labels).to_markdown(), "",
        "## Label co-occurrence (proteins)", "", cooccurrence(proteins, labels).to_markdown(), "",
    ]
    if "tissue" in images.columns:
        lines += ["## Images per tissue", "", images["tissue"].value_counts().to_frame("images").to_markdown(), ""]
    lines += ["## What was dropped, and why", "", "```json", json.dumps(report, indent=2, default=_plain), "```", ""]
    return "\n".join(lines)


def _plain(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    return str(x)
