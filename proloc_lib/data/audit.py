"""Audit of HPA tables: label columns against the location strings, inconsistent proteins, duplicates."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from proloc_lib.data.hpa import (
    IMAGE_COLUMNS,
    SRC_PREFIX,
    SchemaError,
    label_disagreements,
    location_set,
    read_table,
    summarize,
)
from proloc_lib.data.labels import LabelMap, UnknownLocationError
from proloc_lib.data.sequences import sequence_hash

# ----------------------------------------------------------------------------- audit


def _raw_columns(df: pd.DataFrame) -> list[str]:
    """The label columns the file itself had (``src:<name>``), by their own names."""
    return [c[len(SRC_PREFIX):] for c in df.columns if str(c).startswith(SRC_PREFIX)]


def _fmt_set(s: frozenset) -> str:
    return ";".join(sorted(s)) or "(none)"


def audit(paths, label_map: LabelMap) -> dict:
    """Check the authors' tables against the mapping and against themselves.

    Sections: rows whose label columns disagree with their location string under
    ``label_map``; rows whose locations column differs from their File Name; rows with
    locations the mapping does not know; proteins whose images carry different location
    sets within one antibody, and across antibodies; duplicate images within a file;
    sequences shared by several proteins; and, when several files are given, images (joined
    by Ensembl id + image name) whose locations or sequence differ between files or that
    only some files list.
    """
    paths = [Path(p) for p in paths]
    tables, files = [], []
    for p in paths:
        df = read_table(p)  # no label_map: unknown locations are reported, not raised
        checked = [lab for lab in label_map.labels if SRC_PREFIX + lab in df.columns]
        missing = [lab for lab in label_map.labels if lab not in checked]
        if missing:   # the audit compares every label column with the locations: a table without one is not auditable
            raise SchemaError(f"{p}: no label column {', '.join(repr(m) for m in missing)} (the audit compares "
                              f"each of the mapping's labels {label_map.labels} with the locations; "
                              f"found label columns {_raw_columns(df)})")
        summary = summarize(df, label_map.labels)
        summary["label_disagreements"] = label_disagreements(df, label_map, max_examples=0)["rows"]
        files.append({"path": str(p), "layout": df.attrs.get("layout", "?"), **summary,
                      "n_rows": int(len(df)), "n_proteins": int(df["protein_id"].nunique()),
                      "n_antibodies": int(df["antibody"].nunique()), "label_columns_checked": checked})
        tables.append(df)
    report: dict = {"mapping": label_map.id, "mapping_file": label_map.source, "files": files,
                    "disagreeing_rows": [], "unknown_location_rows": [], "no_label_rows": 0,
                    "name_vs_column_rows": []}
    # totals over all files: an image (antibody/image pair) or protein listed in several counts once
    pooled_all = pd.concat(tables, ignore_index=True)
    total = summarize(pooled_all, label_map.labels)
    report.update(unique_images=total["unique_images"], proteins=total["proteins"], labels=total["labels"],
                  label_source=total["label_source"],
                  proteins_with_mixed_label_sets=total["proteins_with_mixed_label_sets"],
                  label_disagreements=sum(f["label_disagreements"] for f in files))

    for df in tables:
        for _, row in df.iterrows():
            where = f"{row['source_file']} row {row['source_row']}"
            if location_set(row["locations"]) != location_set(row["authors_locations"]):
                report["name_vs_column_rows"].append({
                    "file": row["source_file"], "row": int(row["source_row"]),
                    "protein_id": row["protein_id"], "antibody": row["antibody"],
                    "image_name": row["image_name"], "in_name": row["locations"],
                    "in_column": row["authors_locations"]})
            try:
                # The label columns were built from the file's locations column.
                vec = label_map.vector(row["authors_locations"], where=where)
                own = label_map.vector(row["locations"], where=where)
            except UnknownLocationError as exc:
                report["unknown_location_rows"].append({"file": row["source_file"], "row": int(row["source_row"]),
                                                        "image_name": row["image_name"], "error": str(exc)})
                continue
            report["no_label_rows"] += int(own.sum() == 0)
            diffs = {lab: (int(row[SRC_PREFIX + lab]), int(v)) for lab, v in zip(label_map.labels, vec)
                     if SRC_PREFIX + lab in df.columns and int(row[SRC_PREFIX + lab]) != int(v)}
            if diffs:
                report["disagreeing_rows"].append({
                    "file": row["source_file"], "row": int(row["source_row"]),
                    "protein_id": row["protein_id"], "image_name": row["image_name"],
                    "locations": row["authors_locations"],
                    "columns": {lab: {"given": g, "mapped": m} for lab, (g, m) in diffs.items()}})

    # Location conflicts are judged once per image: the files are pooled and each
    # (Ensembl id, image name) counted once (mismatches between files are reported below).
    pooled = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=IMAGE_COLUMNS)
    # first() takes each column's first non-missing value: organs come from whichever file has them
    images = pooled[IMAGE_COLUMNS].groupby(["protein_id", "image_name"], as_index=False, sort=False).first()
    within, across = [], []
    for pid, grp in images.groupby("protein_id", sort=True):
        per_ab = {ab: _sets_with_organs(g) for ab, g in grp.groupby("antibody", sort=True)}
        for ab, sets in per_ab.items():
            if len(sets) > 1:
                within.append({"protein_id": pid, "antibody": ab, "location_sets": sets})
        if len(per_ab) > 1 and len({frozenset(s) for s in per_ab.values()}) > 1:
            across.append({"protein_id": pid, "antibodies": per_ab})
    report["location_conflicts_within_antibody"] = within
    report["location_conflicts_across_antibodies"] = across

    dups = []
    for df in tables:
        for name, grp in df.groupby("image_name", sort=True):
            if len(grp) > 1:
                pids = sorted(grp["protein_id"].unique())
                dups.append({"file": grp["source_file"].iloc[0], "image_name": name,
                             "n": int(len(grp)), "protein_ids": pids,
                             "kind": "same protein+image" if len(pids) == 1 else "same image name, different proteins",
                             "rows": [int(r) for r in grp["source_row"]]})
    report["duplicate_images"] = dups

    shared = []
    for seq, grp in pooled.dropna(subset=["sequence"]).groupby("sequence", sort=False):
        pids = sorted(grp["protein_id"].unique())
        if len(pids) > 1:
            shared.append({"seq_hash": sequence_hash(seq), "length": len(seq), "protein_ids": pids})
    report["shared_sequences"] = shared
    report["cross_file"] = _cross_file(tables) if len(tables) > 1 else None
    return report


def _sets_with_organs(grp: pd.DataFrame) -> dict:
    """{location set: {"n": images, "organs": organs where it occurs}} for one group of images."""
    out: dict = {}
    for locs, organ in zip(grp["locations"], grp["organ"]):
        entry = out.setdefault(_fmt_set(location_set(locs)), {"n": 0, "organs": set()})
        entry["n"] += 1
        if not pd.isna(organ):
            entry["organs"].add(str(organ))
    return {k: {"n": v["n"], "organs": sorted(v["organs"])} for k, v in out.items()}


def _cross_file(tables: list[pd.DataFrame]) -> dict:
    """Compare files image by image, keyed by (Ensembl id, image name)."""
    keyed = []
    for df in tables:
        first = df.drop_duplicates(["protein_id", "image_name"])
        keyed.append(first.set_index(["protein_id", "image_name"]))
    keys = [set(k.index) for k in keyed]
    common = set.intersection(*keys)
    out = {"n_common_images": len(common),
           "only_in": {str(t["source_file"].iloc[0]) if len(t) else "?": len(k - common)
                       for t, k in zip(tables, keys)},
           "location_mismatches": [], "sequence_mismatches": []}
    for key in sorted(common):
        locs = {location_set(k.at[key, "locations"]) for k in keyed}
        if len(locs) > 1:
            out["location_mismatches"].append({"protein_id": key[0], "image_name": key[1],
                                               "locations": sorted(_fmt_set(s) for s in locs)})
        seqs = {k.at[key, "sequence"] for k in keyed if not pd.isna(k.at[key, "sequence"])}
        if len(seqs) > 1:
            out["sequence_mismatches"].append({"protein_id": key[0], "image_name": key[1]})
    return out


def format_audit(report: dict, max_examples: int = 10) -> str:
    """Readable text for an ``audit`` report; each section shows up to ``max_examples``."""
    lines = [f"HPA table audit (mapping {report['mapping']}, {report['mapping_file']})", ""]
    for f in report["files"]:
        lines.append(f"  {f['path']}: {f['layout']} layout, {f['rows']} rows, {f['unique_images']} unique "
                     f"images ({f['duplicate_image_rows']} duplicate rows), {f['proteins']} proteins, "
                     f"{f['antibodies']} antibodies; label columns checked: "
                     f"{', '.join(f['label_columns_checked']) or 'none'}")
    lines.append(f"  all files: {report['unique_images']} unique images, {report['proteins']} proteins; "
                 f"proteins with mixed label sets: {report['proteins_with_mixed_label_sets']}")
    if report.get("labels"):
        lines.append("  per label (images / proteins, label source: " + str(report["label_source"]) + "): "
                     + ", ".join(f"{lab} {v['images']}/{v['proteins']}" for lab, v in report["labels"].items()))

    def section(title, items, show):
        lines.append("")
        lines.append(f"{title}: {len(items)}")
        for item in items[:max_examples]:
            lines.append("  - " + show(item))
        if len(items) > max_examples:
            lines.append(f"  ... and {len(items) - max_examples} more")

    section("Rows whose label columns disagree with their locations under the mapping",
            report["disagreeing_rows"],
            lambda r: f"{r['file']} row {r['row']} {r['protein_id']} {r['image_name']} "
                      f"'{r['locations']}': " + ", ".join(f"{k} given {v['given']} mapped {v['mapped']}"
                                                          for k, v in r["columns"].items()))
    section("Rows with locations the mapping does not know", report["unknown_location_rows"],
            lambda r: r["error"].split(" (mapping")[0])
    lines.append(f"\nRows whose locations map to none of the labels: {report['no_label_rows']}")
    section("Rows whose locations column differs from the locations in their File Name "
            "(label columns follow the column; the image table uses the File Name)",
            report["name_vs_column_rows"],
            lambda r: f"{r['protein_id']} {r['antibody']} {r['image_name']}: name [{r['in_name']}] "
                      f"vs column [{r['in_column']}]  ({Path(r['file']).name} row {r['row']})")

    def sets(d):
        return ", ".join(f"[{s}] x{v['n']}" + (f" ({'/'.join(v['organs'])})" if v["organs"] else "")
                         for s, v in d.items())

    section("Protein/antibody pairs whose images carry different location sets (images counted once)",
            report["location_conflicts_within_antibody"],
            lambda r: f"{r['protein_id']} {r['antibody']}: {sets(r['location_sets'])}")
    section("Proteins whose antibodies carry different location sets",
            report["location_conflicts_across_antibodies"],
            lambda r: f"{r['protein_id']}: " + " | ".join(
                f"{ab} {sets(d)}" for ab, d in r["antibodies"].items()))
    section("Duplicate images within a file", report["duplicate_images"],
            lambda r: f"{r['image_name']} x{r['n']} ({r['kind']}: {', '.join(r['protein_ids'])}) "
                      f"rows {r['rows']} in {Path(r['file']).name}")
    section("Sequences shared by several proteins", report["shared_sequences"],
            lambda r: f"{r['seq_hash'][:12]} (length {r['length']}): {', '.join(r['protein_ids'])}")
    cf = report.get("cross_file")
    if cf:
        lines.append("")
        lines.append(f"Across files (joined by Ensembl id + image name): {cf['n_common_images']} "
                     "images in every file; only in one file: "
                     + ", ".join(f"{Path(p).name} {n}" for p, n in cf["only_in"].items()))
        lines.append(f"  location mismatches: {len(cf['location_mismatches'])}; "
                     f"sequence mismatches: {len(cf['sequence_mismatches'])}")
        for r in cf["location_mismatches"][:max_examples]:
            lines.append(f"  - {r['protein_id']} {r['image_name']}: {' vs '.join(r['locations'])}")
    return "\n".join(lines) + "\n"
