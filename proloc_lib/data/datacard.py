"""The data report (data card): counts per label and split, co-occurrence, drops and why."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from proloc_lib.data.download import format_bytes
from proloc_lib.data.splits import SPLITS


def label_split_counts(proteins: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    """Proteins per label (rows) and split (columns), plus totals."""
    t = proteins.groupby("split")[labels].sum().T.reindex(columns=list(SPLITS)).fillna(0).astype(int)
    t["all"] = t.sum(axis=1)
    t.loc["proteins"] = [int((proteins["split"] == s).sum()) for s in SPLITS] + [len(proteins)]
    return t


def image_split_counts(images: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    """Images per label (rows) and split (columns), plus totals (the images' own labels)."""
    t = images.groupby("split")[labels].sum().T.reindex(columns=list(SPLITS)).fillna(0).astype(int)
    t["all"] = t.sum(axis=1)
    t.loc["images"] = [int((images["split"] == s).sum()) for s in SPLITS] + [len(images)]
    return t


def images_per_protein(images: pd.DataFrame) -> pd.DataFrame:
    """Distribution of images per protein, per split: min, quartiles, max, mean."""
    per = images.groupby(["split", "protein_id"]).size() if "split" in images else None
    rows = {}
    for name in SPLITS + ("all",):
        if name == "all":
            v = images.groupby("protein_id").size()
        elif per is not None and name in per.index.get_level_values(0):
            v = per.loc[name]
        else:
            continue
        rows[name] = {"proteins": int(len(v)), "min": int(v.min()), "median": float(v.median()),
                      "mean": round(float(v.mean()), 2), "max": int(v.max()), "1 image": int((v == 1).sum())}
    return pd.DataFrame(rows).T


def cooccurrence(proteins: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    y = proteins[labels].to_numpy(dtype=int)
    return pd.DataFrame(y.T @ y, index=labels, columns=labels)


def data_card(proteins: pd.DataFrame, images: pd.DataFrame, labels: list[str], report: dict,
              provenance_note: str, *, split_report: dict | None = None) -> str:
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
    lines += _sources_section(report, split_report)
    lines += [
        "", "## Proteins per label and split", "", label_split_counts(proteins, labels).to_markdown(), "",
    ]
    if "split" in images.columns and all(lab in images.columns for lab in labels):
        lines += ["## Images per label and split (each image's own labels)", "",
                  image_split_counts(images, labels).to_markdown(), ""]
    if "split" in images.columns:
        lines += ["## Images per protein", "", images_per_protein(images).to_markdown(), ""]
    lines += ["## Label co-occurrence (proteins)", "", cooccurrence(proteins, labels).to_markdown(), ""]
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


def _sources_section(report: dict, split_report: dict | None) -> list[str]:
    """Provenance, label source, duplicate rows and split protocol, in words."""
    out = []
    prov = report.get("provenance") or {}
    if prov.get("mirror"):
        out.append(f"- **offline mirror** {prov['mirror']}: " + (
            f"SYNTHETIC stand-in images ({prov.get('n_synthetic_images', '?')}), "
            if prov.get("synthetic_images") else "") + (
            f"{prov.get('n_standin_sequences', '?')} seeded STAND-IN sequences and "
            f"{prov.get('n_real_sequences', '?')} real ones" if prov.get("standin_sequences") else "real sequences")
            + ". Numbers made from this build are not results about proteins.")
    ls = report.get("label_source")
    if ls:
        mv = ls.get("mapping_vs_columns") or {}
        out.append(f"- label source: **{ls['source']}**, {ls['description']}; the mapping {mv.get('mapping')} "
                   f"and the tables' label columns disagree on {mv.get('rows', 0)} rows "
                   f"({mv.get('proteins', 0)} proteins; {mv.get('unknown_location_rows', 0)} rows with "
                   "locations the mapping does not know)")
    dup = report.get("duplicate_image_rows")
    if dup:
        out.append(f"- duplicate rows: {dup['rows']} table rows hold {dup['unique_images']} unique images "
                   f"({dup['duplicate_rows']} rows repeat an antibody/image pair under another tissue, "
                   f"{dup['images_with_duplicates']} images); {dup['handled']}")
    if split_report:
        out.append(f"- split protocol: **{split_report['method']}**, {split_report.get('description', '')}; "
                   f"seed {split_report.get('seed')}; {split_report.get('disjoint', '')}")
        if split_report.get("method") == "homology":
            out.append(f"  - homology: {split_report['aligner']}; {split_report['linked_pairs']} linked pairs, "
                       f"{split_report['clusters']} clusters (largest {split_report['largest_cluster']})")
    return out
