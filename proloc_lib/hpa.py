"""Human Protein Atlas metadata: read, filter, aggregate per protein and audit.

Every source (the authors' two CSV layouts, the Vislocas benchmark files) is normalised to
one canonical image table, one row per IHC image (``IMAGE_COLUMNS``). Tables are joined by
Ensembl gene id and image name, never by row order: the authors' two files list the same
images in different orders.
"""
from __future__ import annotations

import difflib
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from .labels import LABELS, LabelMap, UnknownLocationError
from .sequences import InvalidSequenceError, clean_sequence, sequence_hash

IMAGE_COLUMNS = ["protein_id", "protein_name", "antibody", "image_name", "tissue", "organ",
                 "intensity", "quantity", "if_verification", "reliability", "locations",
                 "authors_locations", "sequence", "url", "source_file", "source_row"]

HPA_IMAGE_HOST = "http://images.proteinatlas.org"

# 0/1 location columns the authors' files carry; kept as ``src:<name>`` so the audit can
# compare them with what the mapping file gives.
SOURCE_LABEL_COLUMNS = LABELS + ["cytoskeleton", "golgi apparatus", "lysosomes", "nucleoli",
                                 "vesicles"]
SRC_PREFIX = "src:"

# The authors' ``File Name`` layout: <Ensembl gene>-<image id>-<antibody>-<HPA locations>.jpg.
# Gene ids, image ids and antibody ids carry no '-', so the first three split the name;
# the locations part may hold spaces and ';'.
_FILE_NAME = re.compile(r"(?P<gene>ENS[A-Z]*G\d+(?:\.\d+)?)-(?P<image>[^-/]+?)-"
                        r"(?P<antibody>[A-Z]+\d+)-(?P<locations>.+)\.(?P<ext>jpe?g|png|tiff?)",
                        re.IGNORECASE)
_ANTIBODY = re.compile(r"[A-Za-z]+0*(\d+)")

FILE_NAME_COLUMNS = ["File Name", "locations", "Sequence"]
# HPA metadata layout: the Vislocas tables and the authors' URL file (which is Vislocas'
# data_test.csv plus four columns). Value: canonical name.
METADATA_COLUMNS = {"Protein Id": "protein_id", "Protein Name": "protein_name",
                    "Antibody Id": "antibody", "Image Name": "image_name", "Tissue": "tissue",
                    "Organ": "organ", "Intensity Level": "intensity", "Quantity": "quantity",
                    "IF Verification": "if_verification",
                    "Reliability Verification": "reliability", "locations": "locations",
                    "Sequence": "sequence", "Modified URL": "url", "URL": "hpa_path"}
METADATA_REQUIRED = ["Protein Id", "Antibody Id", "locations"]


class SchemaError(KeyError, ValueError):
    """A table lacks (or has renamed) a required column; the message names file and column."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0]) if self.args else ""


def _missing_message(path, missing: list[str], found: list[str], layout: str) -> str:
    hints = []
    lowered = {c.lower().strip(): c for c in found}
    for col in missing:
        close = lowered.get(col.lower()) or next(iter(difflib.get_close_matches(col, found, 1, 0.75)), None)
        hints.append(f"'{col}'" + (f" (renamed? found '{close}')" if close else ""))
    return (f"{path}: {layout} layout is missing column(s) {', '.join(hints)}; "
            f"found columns {found}")


def _norm_locations(value) -> str | float:
    """Lower-case, trimmed, ';'-joined location string (order kept); NaN stays NaN."""
    if pd.isna(value):
        return np.nan
    parts = [" ".join(p.strip().lower().split()) for p in str(value).split(";")]
    return ";".join(p for p in parts if p)


def location_set(value) -> frozenset:
    return frozenset(_norm_locations(value).split(";")) if not pd.isna(value) and value else frozenset()


def image_url(antibody: str, image_name: str, host: str | None = None) -> str:
    """HPA image URL: ``<host>/<antibody number, no prefix, no leading zeros>/<image>``.

    >>> image_url("HPA005560", "15519_B_9_7.jpg")
    'http://images.proteinatlas.org/5560/15519_B_9_7.jpg'
    """
    m = _ANTIBODY.fullmatch(str(antibody).strip())
    if not m:
        raise ValueError(f"antibody id '{antibody}' is not <letters><digits> (e.g. HPA005560)")
    return f"{(host or HPA_IMAGE_HOST).rstrip('/')}/{m.group(1)}/{str(image_name).strip()}"


def _read_raw(path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"HPA table not found: {path}")
    # All text: ids like HPA005560 must keep their zeros; label columns are converted below.
    return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])


def _label_sources(raw: pd.DataFrame, path) -> pd.DataFrame:
    out = {}
    for col in SOURCE_LABEL_COLUMNS:
        if col in raw.columns:
            vals = pd.to_numeric(raw[col], errors="coerce")
            bad = vals.isna() | ~vals.isin([0, 1])
            if bad.any():
                i = int(np.flatnonzero(bad.to_numpy())[0])
                raise ValueError(f"{path} row {i}: label column '{col}' holds "
                                 f"'{raw[col].iloc[i]}', expected 0 or 1")
            out[SRC_PREFIX + col] = vals.astype(np.int8).to_numpy()
    return pd.DataFrame(out, index=raw.index)


def _from_file_names(raw: pd.DataFrame, path) -> pd.DataFrame:
    rows = []
    for i, name in raw["File Name"].items():
        m = _FILE_NAME.fullmatch(str(name).strip()) if not pd.isna(name) else None
        if not m:
            raise ValueError(f"{path} row {i}: File Name '{name}' is not "
                             "<Ensembl gene>-<image id>-<antibody>-<locations>.jpg")
        image_name = f"{m['image']}.{m['ext']}"
        rows.append({"protein_id": m["gene"], "antibody": m["antibody"].upper(),
                     "image_name": image_name, "url": image_url(m["antibody"], image_name),
                     "locations": m["locations"]})
    out = pd.DataFrame(rows, index=raw.index)
    for col in ("protein_name", "tissue", "organ", "intensity", "quantity", "if_verification",
                "reliability"):
        out[col] = pd.Series(np.nan, index=raw.index, dtype=object)
    # The image's own annotation is the one in its File Name (it agrees with the HPA
    # metadata); the file's locations column can differ from it (the audit lists where).
    out["authors_locations"] = raw["locations"]
    out["sequence"] = raw["Sequence"]
    return out


def _from_metadata(raw: pd.DataFrame, path) -> pd.DataFrame:
    out = pd.DataFrame(index=raw.index)
    for src, dst in METADATA_COLUMNS.items():
        out[dst] = raw[src] if src in raw.columns else pd.Series(np.nan, index=raw.index, dtype=object)
    # The image name is its own column in the authors' file; otherwise the last part of the
    # HPA path (e.g. ENSG.../Brain/Caudate/HPA005560/15519_B_9_7.jpg).
    from_path = out["hpa_path"].map(lambda p: np.nan if pd.isna(p) else str(p).rstrip("/").split("/")[-1])
    out["image_name"] = out["image_name"].fillna(from_path)
    for i in out.index[out["image_name"].isna()]:
        raise ValueError(f"{path} row {i}: no image name (neither 'Image Name' nor 'URL' given)")
    out["authors_locations"] = out["locations"]
    for i in out.index[out["url"].isna()]:
        path_i = out.at[i, "hpa_path"]
        if isinstance(path_i, str) and path_i.startswith(("http://", "https://")):
            out.at[i, "url"] = path_i  # a full URL already
            continue
        try:
            out.at[i, "url"] = image_url(out.at[i, "antibody"], out.at[i, "image_name"])
        except ValueError as exc:
            raise ValueError(f"{path} row {i}: {exc}") from None
    return out.drop(columns="hpa_path")


def _finish(out: pd.DataFrame, raw: pd.DataFrame, path, require_sequence: bool,
            label_map: LabelMap | None) -> pd.DataFrame:
    for col in ("protein_id", "antibody", "image_name"):
        out[col] = out[col].map(lambda v: v if pd.isna(v) else str(v).strip())
        empty = out[col].isna() | (out[col] == "")
        if empty.any():
            raise ValueError(f"{path} row {int(np.flatnonzero(empty.to_numpy())[0])}: empty {col}")
    out["protein_id"] = out["protein_id"].str.replace(r"\.\d+$", "", regex=True)  # drop Ensembl version
    out["locations"] = out["locations"].map(_norm_locations)
    out["authors_locations"] = out["authors_locations"].map(_norm_locations)
    seqs = []
    for i, s in out["sequence"].items():
        if pd.isna(s) and not require_sequence:
            seqs.append(np.nan)
        else:
            seqs.append(clean_sequence(s, where=f"{path} row {i}"))
    out["sequence"] = seqs
    out["source_file"] = str(path)
    out["source_row"] = raw.index.to_numpy()
    out = pd.concat([out[IMAGE_COLUMNS], _label_sources(raw, path)], axis=1)
    if label_map is not None:
        mat = label_map.matrix(out["locations"], where=f"{path} row")
        for j, lab in enumerate(label_map.labels):
            out[lab] = mat[:, j]
    return out.reset_index(drop=True)


def detect_layout(columns) -> str:
    cols = set(columns)
    if "File Name" in cols:
        return "file_name"
    if cols & {"Protein Id", "Antibody Id", "Image Name", "Modified URL"}:
        return "metadata"
    return "unknown"


def read_authors_csv(path, label_map: LabelMap | None = None) -> pd.DataFrame:
    """Read either of the authors' CSV layouts into the canonical image table.

    ``File Name`` layout (proloc_ihs_test.csv): ids and the image's locations parsed from
    the file name (the file's own ``locations`` column is kept as ``authors_locations``: in
    the reference file it differs from the name on some rows, see ``audit``); the HPA
    metadata columns are NA. Metadata layout (proloc_ihs_test_img_URL.csv): columns taken
    as they are. Source 0/1 label columns are kept as ``src:<name>``; with ``label_map``
    the mapped label columns are added (an unknown location raises naming file and row).
    """
    raw = _read_raw(path)
    layout = detect_layout(raw.columns)
    found = list(raw.columns)
    if layout == "file_name":
        missing = [c for c in FILE_NAME_COLUMNS if c not in raw.columns]
        if missing:
            raise SchemaError(_missing_message(path, missing, found, "'File Name'"))
        out = _from_file_names(raw, path)
    elif layout == "metadata":
        missing = [c for c in METADATA_REQUIRED + ["Sequence"] if c not in raw.columns]
        if "Image Name" not in raw.columns and "URL" not in raw.columns:
            missing.append("Image Name")
        if missing:
            raise SchemaError(_missing_message(path, missing, found, "HPA metadata"))
        out = _from_metadata(raw, path)
    else:
        raise SchemaError(f"{path}: not an authors' table; expected either {FILE_NAME_COLUMNS} "
                          f"or {METADATA_REQUIRED + ['Image Name', 'Sequence']}; found {found}")
    out = _finish(out, raw, path, require_sequence=True, label_map=label_map)
    out.attrs["layout"] = layout
    return out


def parse_vislocas_csv(path, label_map: LabelMap | None = None) -> pd.DataFrame:
    """Read a Vislocas benchmark file (Zenodo 10632698) into the canonical image table.

    The layout is the one Vislocas' own code (github.com/JingwenWen99/Vislocas,
    prepareData/IHC/dataAnalysis.py) writes: the pandas index first, then Protein Name,
    Protein Id, Antibody Id, Reliability Verification, Tissue, Organ, Staining Level, Intensity
    Level, Quantity, SnomedParameters, URL (the local path <gene>/<organ>/<tissue>/<antibody>/
    <image>.jpg), IF Verification, locations, IF Organ and ten 0/1 columns of its own merged
    classes (normalLabeled.csv also keeps Cell Type, Location, Sex, Age, Patient Id). The
    authors' URL file has exactly these columns plus four, which the tests' fixtures follow.
    No Sequence: it comes from UniProt. The files themselves cannot be fetched offline; a
    different header raises a SchemaError listing expected and found columns.
    """
    raw = _read_raw(path)
    found = list(raw.columns)
    missing = [c for c in METADATA_REQUIRED if c not in raw.columns]
    if "Image Name" not in raw.columns and "URL" not in raw.columns:
        missing.append("URL")
    if missing:
        expected = METADATA_REQUIRED + ["URL or Image Name", "IF Verification", "Intensity Level",
                                        "Quantity"]
        raise SchemaError(_missing_message(path, missing, found, "Vislocas (HPA metadata)")
                          + f"; expected {expected}. Has the record changed? Adapt METADATA_COLUMNS "
                            "in proloc_lib/hpa.py to the new header.")
    return _finish(_from_metadata(raw, path), raw, path, require_sequence=False, label_map=label_map)


# ----------------------------------------------------------------------------- filters

def _items(value) -> list[str]:
    return [] if pd.isna(value) else [p.strip().lower() for p in str(value).split(";")]


def filter_images(df: pd.DataFrame, if_verification: str | None = "enhanced",
                  intensity: str | None = "strong", quantity: str | None = ">75%"
                  ) -> tuple[pd.DataFrame, dict]:
    """The paper's image filters, applied in order; ``None`` switches a filter off.

    IF verification must equal ``if_verification``; the ';'-separated intensity field must
    contain an ``intensity`` item; the quantity field must contain a ``quantity`` item.
    Missing values fail a filter. The report counts what each filter dropped.
    """
    steps = [("if_verification", if_verification, lambda v, t: str(v).strip().lower() == t),
             ("intensity", intensity, lambda v, t: t in _items(v)),
             ("quantity", quantity, lambda v, t: t in _items(v))]
    report = {"n_in": int(len(df)), "thresholds": {}, "dropped": {}}
    kept = df
    for col, threshold, test in steps:
        report["thresholds"][col] = threshold
        if threshold is None:
            continue
        if col not in kept.columns or (len(kept) and kept[col].isna().all()):
            raise ValueError(f"filter on '{col}' needs that column, which is absent or empty "
                             f"(the 'File Name' layout has no HPA metadata); pass {col}=None")
        t = str(threshold).strip().lower()
        ok = kept[col].map(lambda v: not pd.isna(v) and test(v, t)).astype(bool)
        report["dropped"][col] = int((~ok).sum())
        kept = kept[ok]
    report["n_kept"] = int(len(kept))
    report["n_proteins_in"] = int(df["protein_id"].nunique()) if "protein_id" in df else None
    report["n_proteins_kept"] = int(kept["protein_id"].nunique()) if "protein_id" in kept else None
    return kept.reset_index(drop=True), report


# ----------------------------------------------------------------------------- proteins

def protein_table(images_df: pd.DataFrame, label_map: LabelMap) -> pd.DataFrame:
    """One row per protein: ids, sequence, seq_hash and labels from its images' locations.

    Images of one protein that carry different location sets get the union of their labels;
    ``n_location_sets`` records how many distinct sets were merged. A protein whose images
    carry different sequences is an error.
    """
    for col in ("protein_id", "locations", "sequence"):
        if col not in images_df.columns:
            raise SchemaError(f"image table lacks column '{col}' (have {list(images_df.columns)})")
    rows = []
    for pid, grp in images_df.groupby("protein_id", sort=True):
        seqs = grp["sequence"].dropna().unique()
        if len(seqs) != 1:
            raise InvalidSequenceError(f"protein {pid}: {len(seqs)} distinct sequences over its "
                                       f"{len(grp)} images (expected exactly one)")
        seq = clean_sequence(seqs[0], where=f"protein {pid}")
        sets = {location_set(v) for v in grp["locations"]}
        union = sorted(set().union(*sets))
        vec = label_map.vector(";".join(union), where=f"protein {pid}")
        names = grp["protein_name"].dropna() if "protein_name" in grp else pd.Series([], dtype=object)
        uniprot = grp["uniprot"].dropna() if "uniprot" in grp else pd.Series([], dtype=object)
        rows.append({"protein_id": pid,
                     "protein_name": names.iloc[0] if len(names) else np.nan,
                     "uniprot": uniprot.iloc[0] if len(uniprot) else np.nan,
                     "sequence": seq, "seq_hash": sequence_hash(seq), "length": len(seq),
                     "locations": ";".join(union), "n_location_sets": len(sets),
                     "n_images": int(len(grp)),
                     "antibodies": ";".join(sorted(grp["antibody"].dropna().unique()))
                     if "antibody" in grp else np.nan,
                     **{lab: int(v) for lab, v in zip(label_map.labels, vec)}})
    cols = ["protein_id", "protein_name", "uniprot", "sequence", "seq_hash", "length", "locations",
            "n_location_sets", "n_images", "antibodies"] + list(label_map.labels)
    return pd.DataFrame(rows, columns=cols)


# ----------------------------------------------------------------------------- audit

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
        df = read_authors_csv(p)  # no label_map: unknown locations are reported, not raised
        checked = [lab for lab in label_map.labels if SRC_PREFIX + lab in df.columns]
        files.append({"path": str(p), "layout": df.attrs.get("layout", "?"),
                      "n_rows": int(len(df)), "n_proteins": int(df["protein_id"].nunique()),
                      "n_antibodies": int(df["antibody"].nunique()), "label_columns_checked": checked})
        tables.append(df)
    report: dict = {"mapping": label_map.id, "mapping_file": label_map.source, "files": files,
                    "disagreeing_rows": [], "unknown_location_rows": [], "no_label_rows": 0,
                    "name_vs_column_rows": []}

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
        lines.append(f"  {f['path']}: {f['layout']} layout, {f['n_rows']} images, "
                     f"{f['n_proteins']} proteins, {f['n_antibodies']} antibodies; label columns "
                     f"checked: {', '.join(f['label_columns_checked']) or 'none'}")

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


# ----------------------------------------------------------------------------- full build

def assemble(data_cfg: dict, label_map: LabelMap, profile_dir, progress: bool = True, embed=None):
    """Build the full profile's tables from public sources (needs network).

    Vislocas tables (Zenodo, MD5-checked) -> the paper's image filters -> reviewed UniProt
    sequences by Ensembl id -> HPA images (validated, cached, resumable) -> protein and image
    tables. Reachability is checked first, so offline it stops at once and writes nothing.
    With ``embed`` (the embedding stage's image API) images are streamed: embedded as they
    arrive, kept as thumbnails, the full files deleted (small disks). Returns (proteins,
    images, report); every drop is counted in the report.
    """
    from . import download
    from .encoders import check_reachable
    from .labels import add_label_columns

    check_reachable([f"{download.ZENODO_BASE}/data_test.csv/content", f"{download.UNIPROT_BASE}/",
                     f"{HPA_IMAGE_HOST}/"])
    profile_dir = Path(profile_dir)
    files = data_cfg.get("benchmark_files", ["data_train.csv", "data_test.csv"])
    tables = []
    for name in files:
        path = download.fetch_zenodo(name, profile_dir / "cache" / "zenodo", progress=progress)
        tables.append(parse_vislocas_csv(path).assign(benchmark_split=Path(name).stem.replace("data_", "")))
    images = pd.concat(tables, ignore_index=True)
    report: dict = {"source_images": int(len(images)), "source_files": files}
    filters = data_cfg.get("filters", {})
    images, report["filters"] = filter_images(images, filters.get("if_verification"), filters.get("intensity"),
                                              filters.get("quantity"))
    label_map.check_known(images["locations"].set_axis(images["source_file"].map(lambda f: Path(f).name)
                                                        + " row " + images["source_row"].astype(str)),
                          where="at")
    mapped, dropped = download.uniprot_map_ensembl(images["protein_id"].unique())
    report["uniprot_dropped"] = dropped
    seqs = mapped.set_index("ensembl")
    images = images[images["protein_id"].isin(seqs.index)].copy()
    images["sequence"] = images["protein_id"].map(seqs["sequence"])
    images["uniprot"] = images["protein_id"].map(seqs["accession"])
    # proteins none of whose locations map to the five labels: drop before downloading their images
    labelled = add_label_columns(images, "locations", label_map, where="image")
    # known locations outside the five labels: counted (image rows), never guessed
    report["locations_outside_labels"] = dict(Counter(loc for s in images["locations"]
                                                      for loc in label_map.unmapped(s)))
    has_label = labelled.groupby("protein_id")[label_map.labels].max().sum(axis=1) > 0
    report["dropped_proteins_no_target_label"] = int((~has_label).sum())
    images = labelled[labelled["protein_id"].map(has_label)].copy()
    images["url"] = [image_url(a, n) for a, n in zip(images["antibody"], images["image_name"])]
    est = download.estimate_download(images["url"], profile_dir / "images")
    report["download_estimate"] = est
    print(f"downloading up to {len(images)} images of {images['protein_id'].nunique()} proteins "
          f"into {profile_dir / 'images'}: {est['n_cached']} cached, about "
          f"{download.format_bytes(est['estimated_bytes'])} to fetch (mean size of "
          f"{est['sampled_with_size']} sampled images), {download.format_bytes(est['free_bytes'])} free")
    if embed is None and (est["estimated_bytes"] or 0) > est["free_bytes"]:
        print("WARNING: the images will likely not fit on this disk; set data.stream: true in the "
              "profile config to embed them as they arrive and keep only thumbnails")
    if embed is None:
        images, failures = download.fetch_images(images, profile_dir / "images", progress=progress)
    else:
        images, failures = download.stream_images(images, profile_dir / "images", embed, progress=progress)
    report["image_failures"] = [{"url": u, "reason": r} for u, r in failures]
    images["image_id"] = images["sha256"]
    images["path"] = [str(Path(p).resolve().relative_to(profile_dir.resolve())) if p else None for p in images["path"]]
    dup = images.duplicated("image_id")
    report["duplicate_image_files"] = int(dup.sum())
    images = images[~dup].reset_index(drop=True)
    proteins = protein_table(images, label_map)
    # a protein can still end up unlabelled if its labelled images all failed to download
    has_label = proteins[label_map.labels].sum(axis=1) > 0
    report["dropped_proteins_no_target_label"] += int((~has_label).sum())
    proteins = proteins[has_label].reset_index(drop=True)
    images = images[images["protein_id"].isin(proteins["protein_id"])].reset_index(drop=True)
    on_disk = [profile_dir / q for q in images["path"] if isinstance(q, str)]
    # what the download really was: the data card and README quote it
    report["image_bytes_on_disk"] = int(sum(f.stat().st_size for f in on_disk if f.exists()))
    report.update(n_proteins=int(len(proteins)), n_images=int(len(images)))
    return proteins, images, report
