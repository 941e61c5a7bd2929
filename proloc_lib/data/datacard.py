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
              provenance_note: str, *, split_report: dict | None = None,
              training_sets: pd.DataFrame | None = None) -> str:
    """The data card (markdown). ``training_sets``: one row per training configuration with the
    proteins and images it trains on (stage 01 makes it from the profile's plan)."""
    per_protein = images.groupby("protein_id").size()
    n_labels = proteins[labels].sum(axis=1).value_counts().sort_index()
    unique = images["image_id"].nunique() if "image_id" in images.columns else len(images)
    lines = [
        "# Data report", "", f"> {provenance_note}", "",
        f"- proteins: {len(proteins)}; images: {unique}"
        + (f" ({len(images)} image rows: an image listed under several proteins is a row under each)"
           if unique != len(images) else "")
        + f"; images per protein: median {int(per_protein.median())}, min {per_protein.min()}, max {per_protein.max()}",
        "- labels per protein: " + ", ".join(f"{k}: {v}" for k, v in n_labels.items())
        + f" (every protein has at least one: {int((proteins[labels].sum(axis=1) == 0).sum()) == 0})",
    ]
    if report.get("longest_sequence"):
        ls = report["longest_sequence"]
        lines.append(f"- longest sequence: {ls['protein_name']} ({ls['protein_id']}), {ls['length']:,} residues")
    if "image_bytes_on_disk" in report:
        est = report.get("download_estimate") or {}
        lines.append(f"- image files on disk: {format_bytes(report['image_bytes_on_disk'])}"
                     + (f" (estimated before download: {format_bytes(est['estimated_bytes'])})"
                        if est.get("estimated_bytes") else ""))
    lines += _sources_section(report, split_report)
    lines += _accounting_section(report)
    if training_sets is not None and len(training_sets):
        lines += ["", "## What each configuration trains on", "",
                  "Validation: the held-out proteins a configuration selects its epoch and thresholds on; "
                  "a configuration that trains on them (the published code has no validation part) only "
                  "reports their loss.", "", training_sets.to_markdown(index=False)]
    lines += _truth_section(report)
    lines += _homology_section(report)
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


def _names(items: list[dict], limit: int = 12) -> str:
    shown = [str(i.get("protein_name") or i.get("protein_id")) for i in items[:limit]]
    return ", ".join(shown) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _accounting_section(report: dict) -> list[str]:
    """Every protein of the source tables: kept, or dropped at a named step (``build.ProteinLedger``)."""
    acc = report.get("protein_accounting")
    if not acc:
        return []
    out = ["", "## Every protein accounted for", "",
           f"{acc['source_proteins']} proteins in the source tables: {acc['kept']} kept, {acc['dropped']} dropped.", "",
           "| source file | proteins | kept |", "|---|---|---|"]
    out += [f"| {f} | {d['source']} | {d['kept']} |" for f, d in acc["per_file"].items()]
    for reason, d in acc["dropped_by_reason"].items():
        out.append(f"- dropped, {reason}: {d['n']} ({_names(d['proteins'])})")
    dup = report.get("duplicate_image_rows") or {}
    for g in dup.get("shared_image_groups", []):
        out.append(f"- {g['images']} images are listed under {len(g['proteins'])} proteins at once "
                   f"({', '.join(g['proteins'])}): kept under each, embedded once, split together")
    return out


def _truth_section(report: dict) -> list[str]:
    """The test labels: the benchmark's columns and, where fetched, the authors' own test table."""
    at = report.get("authors_table")
    out = ["", "## Test labels", ""]
    if not at:
        return out + ["One set of labels: this build has no authors' test table (`data.authors_table`), so "
                      "every result is scored against the image table's own labels only."]
    per = ", ".join(f"{lab} {n}" for lab, n in at["per_label"].items() if n)
    return out + [f"Two sets of image labels for the test images. The benchmark's label columns (the image "
                  f"table's labels) and the authors' own test table ({at['source']}, {at['checksum']}), "
                  f"joined on {at['joined_on']}: {at['image_rows_joined']} images joined, "
                  f"{at['table_rows_without_image']} of its rows without an image here; the two differ on "
                  f"{at['images_differing']} images of {at['proteins_differing']} proteins"
                  + (f" ({per})" if per else "") + ". Image-level test results are given against both "
                  "(`truth` in metrics.csv: the table's own labels, and `authors_table`, the labels the paper "
                  "scored)."]


def _homology_section(report: dict) -> list[str]:
    """How many test proteins have a homolog among the proteins a model learns from."""
    h = report.get("test_train_homology")
    if not h:
        return []
    out = ["", "## Test proteins with a close homolog in training", "",
           f"{h['at_or_above']} of {h['test_proteins']} test proteins have a train or validation protein at "
           f"global identity >= {h['identity']} ({h['aligner']}; compared with {h['compared_with']} proteins)."]
    if h.get("pairs"):
        out.append("Pairs: " + "; ".join(f"{p['test_name'] or p['test']} ~ {p['train_name'] or p['train']} "
                                         f"{p['identity']:.2f}" for p in h["pairs"][:20]))
    if h.get("standin_sequences"):
        out.append(f"Only meaningful with real sequences: {h['standin_sequences']} of the sequences here are "
                   "seeded STAND-INs (random), so this count is not the real leakage.")
    return out
