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
from urllib.parse import urlsplit

import numpy as np
import pandas as pd

from .errors import UserError
from .labels import LABELS, LabelMap, UnknownLocationError, add_label_columns
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


class SchemaError(UserError, KeyError, ValueError):
    """A table lacks (or has renamed) a required column; the message names file and column."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0]) if self.args else ""


class TableError(UserError, ValueError):
    """A file that cannot be read as a CSV table (empty, binary, UTF-16, ragged, a folder)."""


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


def check_csv_file(path) -> None:
    """Raise TableError (one line: file and problem) unless ``path`` is a readable UTF-8 CSV.

    Caught here, before pandas: a folder, an empty file, a binary or UTF-16 file, and ragged
    rows (a row with more or fewer fields than the header), which pandas would read silently
    as NaN or fail on with a parser traceback.
    """
    import csv

    path = Path(path)
    if not path.exists():
        raise TableError(f"{path}: file not found")
    if path.is_dir():
        raise TableError(f"{path}: is a directory, not a CSV file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TableError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not data.strip():
        raise TableError(f"{path}: file is empty")
    if data[:2] in (b"\xff\xfe", b"\xfe\xff") or (len(data) > 3 and (data[1:2] == b"\0" or data[0:1] == b"\0")
                                                  and data.count(b"\0") > len(data) // 4):
        raise TableError(f"{path}: file is UTF-16 encoded; save it as UTF-8 CSV")
    if b"\0" in data:
        raise TableError(f"{path}: binary file (NUL bytes), not a CSV table")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TableError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8 CSV") from None
    rows = csv.reader(text.splitlines())
    try:
        header = next(rows)
        for i, row in enumerate(rows, start=2):
            if row and len(row) != len(header):
                raise TableError(f"{path}: ragged table: line {i} has {len(row)} fields, the header "
                                 f"has {len(header)}")
    except csv.Error as exc:
        raise TableError(f"{path}: not a CSV table ({exc})") from None


def _read_raw(path) -> pd.DataFrame:
    path = Path(path)
    check_csv_file(path)
    # All text: ids like HPA005560 must keep their zeros; label columns are converted below.
    return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8-sig")


def _label_sources(raw: pd.DataFrame, path) -> pd.DataFrame:
    out = {}
    for col in SOURCE_LABEL_COLUMNS:
        if col in raw.columns:
            vals = pd.to_numeric(raw[col], errors="coerce")
            bad = vals.isna() | ~vals.isin([0, 1])
            if bad.any():
                i = int(np.flatnonzero(bad.to_numpy())[0])
                raise TableError(f"{path} row {i}: label column '{col}' holds "
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
    urls = out["url"].to_numpy(dtype=object).copy()  # plain arrays: .at per row is slow on 5,000 rows
    for k, (u, path_i, ab, name) in enumerate(zip(urls, out["hpa_path"], out["antibody"], out["image_name"])):
        if not pd.isna(u):
            continue
        if isinstance(path_i, str) and path_i.startswith(("http://", "https://")):
            urls[k] = path_i  # a full URL already
            continue
        try:
            urls[k] = image_url(ab, name)
        except ValueError as exc:
            raise ValueError(f"{path} row {out.index[k]}: {exc}") from None
    out["url"] = urls
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


LAYOUTS = {"file_name": "the authors' File Name layout (proloc_ihs_test.csv)",
           "authors_metadata": "the authors' HPA metadata layout (proloc_ihs_test_img_URL.csv)",
           "vislocas": "the Vislocas benchmark layout (data_train.csv, data_test.csv)"}


def read_table(path, label_map: LabelMap | None = None) -> pd.DataFrame:
    """Read any of the three known layouts into the canonical image table.

    The authors' File Name and metadata layouts (``read_authors_csv``) and the Vislocas
    benchmark layout (``parse_vislocas_csv``: the metadata columns without Sequence). The
    layout name is in ``attrs['layout']``. A file of none of them raises SchemaError naming
    the file, the columns found and the layouts known.
    """
    try:
        return _read_table(path, label_map)
    except UserError:
        raise
    except (ValueError, KeyError) as exc:  # a bad row: the message names the file and row already
        msg = str(exc.args[0]) if exc.args else str(exc)
        raise TableError(msg if str(path) in msg else f"{path}: {msg}") from exc


def _read_table(path, label_map: LabelMap | None = None) -> pd.DataFrame:
    raw_cols = list(_read_raw(path).columns)
    layout = detect_layout(raw_cols)
    if layout == "file_name" or (layout == "metadata" and "Sequence" in raw_cols):
        df = read_authors_csv(path, label_map)
        df.attrs["layout"] = "file_name" if layout == "file_name" else "authors_metadata"
    elif layout == "metadata":
        df = parse_vislocas_csv(path, label_map)
        df.attrs["layout"] = "vislocas"
    else:
        shown = raw_cols[:6] + (["..."] if len(raw_cols) > 6 else [])
        raise SchemaError(f"{path}: unknown layout (no header with 'File Name' or 'Protein Id'/"
                          f"'Antibody Id'; a headerless file?); first columns found {shown}; known: "
                          + "; ".join(LAYOUTS.values()))
    return df


def image_key(antibody, image_name) -> str:
    """One key per HPA image: ``<antibody number>/<image name>``, the path of its image URL.

    Rows that repeat an antibody/image pair under another tissue share it.
    """
    m = _ANTIBODY.fullmatch(str(antibody).strip())
    return f"{m.group(1) if m else str(antibody).strip()}/{str(image_name).strip()}"


def source_label_matrix(df: pd.DataFrame, labels, where: str = "table") -> np.ndarray:
    """The table's own 0/1 label columns (``src:<label>``), the paper's labels; an error if absent."""
    cols = [SRC_PREFIX + lab for lab in labels]
    missing = [c[len(SRC_PREFIX):] for c in cols if c not in df.columns]
    if missing:
        raise SchemaError(f"{where}: no label column(s) {missing} to take labels from "
                          "(data.labels: columns); use data.labels: mapping for a table without them")
    return df[cols].to_numpy(dtype=np.int8)


def mapped_label_matrix(df: pd.DataFrame, label_map: LabelMap, column: str = "authors_locations"
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Labels the mapping gives each row's ``column``, and a mask of rows it could map.

    Rows with a location the mapping does not know get zeros and ``False`` in the mask
    (the caller counts them; nothing is raised).
    """
    out = np.zeros((len(df), len(label_map.labels)), dtype=np.int8)
    ok = np.ones(len(df), dtype=bool)
    for i, value in enumerate(df[column]):
        try:
            out[i] = label_map.vector(value)
        except UnknownLocationError:
            ok[i] = False
    return out, ok


def label_disagreements(df: pd.DataFrame, label_map: LabelMap, max_examples: int = 20) -> dict:
    """Rows whose mapped ``locations`` differ from the table's own label columns, counted.

    The mapping (data/mappings) and the table's columns (Vislocas' own classes) are two label
    sources; this says where, and by how much, they differ: never silent.
    """
    labels = label_map.labels
    have = [lab for lab in labels if SRC_PREFIX + lab in df.columns]
    if not have:
        return {"mapping": label_map.id, "rows": 0, "proteins": 0, "unknown_location_rows": 0,
                "checked_labels": [], "per_label": {}, "examples": []}
    given_f = df[[SRC_PREFIX + lab for lab in have]].to_numpy(dtype=float)
    has_cols = ~np.isnan(given_f).any(axis=1)  # pooled tables: rows of a file without the columns
    given = np.nan_to_num(given_f).astype(np.int8)
    mapped, ok = mapped_label_matrix(df, label_map)
    ok &= has_cols
    mapped = mapped[:, [labels.index(lab) for lab in have]]
    diff = (given != mapped) & ok[:, None]
    rows = diff.any(axis=1)
    examples = []
    for i in np.flatnonzero(rows)[:max_examples]:
        r = df.iloc[i]
        examples.append({"file": Path(str(r["source_file"])).name, "row": int(r["source_row"]),
                         "protein_id": r["protein_id"], "locations": r["authors_locations"],
                         "columns": {lab: {"given": int(given[i, j]), "mapped": int(mapped[i, j])}
                                     for j, lab in enumerate(have) if diff[i, j]}})
    return {"mapping": label_map.id, "rows": int(rows.sum()),
            "proteins": int(df.loc[rows, "protein_id"].nunique()),
            "unknown_location_rows": int((~ok & has_cols).sum()), "checked_labels": have,
            "per_label": {lab: {"given_1_mapped_0": int(((given[:, j] == 1) & (mapped[:, j] == 0) & ok).sum()),
                                "given_0_mapped_1": int(((given[:, j] == 0) & (mapped[:, j] == 1) & ok).sum())}
                          for j, lab in enumerate(have)},
            "examples": examples}


def summarize(df: pd.DataFrame, labels) -> dict:
    """The audit's machine-readable counts for one image table (keys read by other tools).

    Images are counted once per ``image_key`` (duplicate rows repeat an antibody/image pair);
    label counts use the table's own columns when it has them, else the mapped columns.
    """
    key = [image_key(a, n) for a, n in zip(df["antibody"], df["image_name"])]
    have_src = all(SRC_PREFIX + lab in df.columns for lab in labels)
    cols = [SRC_PREFIX + lab for lab in labels] if have_src else [lab for lab in labels if lab in df.columns]
    out = {"rows": int(len(df)), "unique_images": int(len(set(key))),
           "proteins": int(df["protein_id"].nunique()), "antibodies": int(df["antibody"].nunique()),
           "duplicate_image_rows": int(len(df) - len(set(key)))}
    first = df.assign(_key=key).drop_duplicates("_key")
    if len(cols) == len(labels) and first[cols].notna().all().all():
        y = first[cols].to_numpy(dtype=int)
        out["labels"] = {lab: {"images": int(y[:, j].sum()),
                               "proteins": int(first.loc[y[:, j] == 1, "protein_id"].nunique())}
                         for j, lab in enumerate(labels)}
        sets = pd.Series([tuple(r) for r in y], index=first.index).groupby(first["protein_id"]).nunique()
        out["proteins_with_mixed_label_sets"] = int((sets > 1).sum())
    else:
        out["labels"] = None
        out["proteins_with_mixed_label_sets"] = None
    out["label_source"] = "columns" if have_src else ("mapping" if cols else None)
    return out


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

def protein_table(images_df: pd.DataFrame, label_map: LabelMap, *, labels_from: str = "mapping") -> pd.DataFrame:
    """One row per protein: ids, sequence, seq_hash and labels from its images.

    ``labels_from="mapping"``: labels of the union of its images' location sets under
    ``label_map``; ``"columns"``: the union (max) of its images' own label columns (the
    image table's label columns, e.g. Vislocas' 0/1 columns). ``n_location_sets`` records how
    many distinct location sets were merged. A protein whose images carry different
    sequences is an error.
    """
    if labels_from not in ("mapping", "columns"):
        raise ValueError(f"labels_from must be 'mapping' or 'columns', got {labels_from!r}")
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
        if labels_from == "columns":
            vec = grp[label_map.labels].max().to_numpy(dtype=int)
        else:
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
        df = read_table(p)  # no label_map: unknown locations are reported, not raised
        checked = [lab for lab in label_map.labels if SRC_PREFIX + lab in df.columns]
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


# ----------------------------------------------------------------------------- full build

LABEL_SOURCES = ("columns", "mapping")


def source_urls(mirror: str | None = None) -> dict:
    """Base URLs of the three sources; a mirror base URL replaces all of them.

    A mirror serves the same paths as the real services: Zenodo's
    ``/api/records/<record>/files/<name>/content``, UniProt's ``/idmapping/...`` and HPA's
    ``/<antibody number>/<image>.jpg`` (``proloc_lib.mirror`` is one; an institutional copy
    laid out the same way is another).
    """
    from . import download

    if mirror:
        m = str(mirror).rstrip("/")
        if not m.startswith(("http://", "https://")):
            raise UserError(f"data.mirror / --mirror must be an http(s) base URL, got {mirror!r}")
        return {"zenodo": f"{m}/api/records/{download.ZENODO_RECORD}/files", "uniprot": m, "images": m,
                "mirror": m}
    return {"zenodo": download.ZENODO_BASE, "uniprot": download.UNIPROT_BASE, "images": HPA_IMAGE_HOST,
            "mirror": None}


def mirror_provenance(mirror: str | None, timeout: float = 10) -> dict:
    """What a mirror says about itself (``/proloc-mirror.json``); {} for a plain copy of the sources.

    ``proloc_lib.mirror`` answers ``{"synthetic_images": true, "standin_sequences": [...], ...}``:
    the build then marks its images and those sequences as not real, everywhere.
    """
    import requests

    if not mirror:
        return {}
    try:
        r = requests.get(f"{str(mirror).rstrip('/')}/proloc-mirror.json", timeout=timeout)
    except requests.RequestException:
        return {}
    if r.status_code != 200:
        return {}
    try:
        return dict(r.json())
    except ValueError:
        return {}


def dedup_images(images: pd.DataFrame, labels) -> tuple[pd.DataFrame, dict]:
    """One row per image (``image_key``: antibody number + image name, the image URL's path).

    Vislocas repeats some antibody/image pairs under a second tissue name (train 5,440 rows /
    5,169 images; test 589 / 566). They are merged before any download: the first row's
    metadata is kept, ``tissues`` lists every tissue, ``n_rows`` counts the rows merged, and
    labels are the union over the rows (they agree on the real tables; a disagreement is
    counted). Streaming then fetches and embeds each image once.
    """
    images = images.assign(image_key=[image_key(a, n) for a, n in zip(images["antibody"], images["image_name"])])
    grp = images.groupby("image_key", sort=False)
    n_rows = grp["image_key"].transform("size")
    lab_cols = [c for c in labels if c in images.columns]
    disagree = int((grp[lab_cols].nunique() > 1).any(axis=1).sum()) if lab_cols else 0
    tissues = grp["tissue"].agg(lambda t: ";".join(dict.fromkeys(str(x) for x in t if not pd.isna(x))))
    first = images[~images.duplicated("image_key")].copy()
    if lab_cols:
        first[lab_cols] = grp[lab_cols].max().loc[first["image_key"]].to_numpy()
    first["n_rows"] = n_rows[first.index].to_numpy()
    first["tissues"] = first["image_key"].map(tissues)
    dup_keys = first.loc[first["n_rows"] > 1, "image_key"]
    report = {"rows": int(len(images)), "unique_images": int(len(first)),
              "duplicate_rows": int(len(images) - len(first)), "images_with_duplicates": int(len(dup_keys)),
              "label_disagreements_within_duplicates": disagree,
              "handled": "merged into one image row before download (first row's metadata kept, all "
                         "tissues in 'tissues', row count in 'n_rows', labels the union)",
              "examples": dup_keys.head(5).tolist()}
    return first.reset_index(drop=True), report


def assemble(data_cfg: dict, label_map: LabelMap, profile_dir, progress: bool = True, embed=None,
             *, mirror: str | None = None):
    """Build the full profile's tables from public sources (needs network, or a mirror).

    Vislocas tables (Zenodo, MD5-checked) -> the paper's image filters -> labels (the
    tables' own five 0/1 columns by default, ``data.labels: columns``; or the location
    mapping, ``data.labels: mapping``; the two are compared and their disagreements
    reported) -> one row per image (duplicate rows merged) -> reviewed UniProt sequences by
    Ensembl id -> HPA images (validated, cached, resumable) -> protein and image tables.
    ``mirror`` (or ``data.mirror``) is a base URL that replaces all three sources (see
    ``source_urls``); a mirror that declares synthetic images or stand-in sequences
    (``proloc_lib.mirror`` does) is recorded in ``report["provenance"]``. Reachability is
    checked first, so offline it stops at once and writes nothing. With ``embed`` (the
    embedding stage's image API) images are streamed: embedded as they arrive, kept as
    thumbnails, the full files deleted (small disks). Returns (proteins, images, report);
    every drop is counted in the report.
    """
    from . import download
    from .encoders import check_reachable

    mirror = mirror or data_cfg.get("mirror")
    urls = source_urls(mirror)
    label_source = data_cfg.get("labels", "columns")
    if label_source not in LABEL_SOURCES:
        raise UserError(f"data.labels must be one of {list(LABEL_SOURCES)}, got {label_source!r}")
    check_reachable([f"{urls['zenodo']}/data_test.csv/content", f"{urls['uniprot']}/", f"{urls['images']}/"],
                    hint=("check the mirror URL and that it is running" if mirror else
                          "run the full profile on Colab or any machine with internet, or point it at a "
                          "mirror with data.mirror / --mirror URL (see README)"))
    prov = mirror_provenance(mirror)
    profile_dir = Path(profile_dir)
    files = data_cfg.get("benchmark_files", ["data_train.csv", "data_test.csv"])
    tables = []
    for name in files:
        path = download.fetch_zenodo(name, profile_dir / "cache" / "zenodo", base_url=urls["zenodo"],
                                     progress=progress)
        table = parse_vislocas_csv(path).assign(benchmark_split=Path(name).stem.replace("data_", ""))
        if data_cfg.get("max_proteins"):  # a quick trial build: a seeded subset of each file's proteins
            ids = pd.Series(table["protein_id"].unique())
            keep = set(ids.sample(n=min(int(data_cfg["max_proteins"]), len(ids)),
                                  random_state=int(data_cfg.get("subsample_seed", 0))))
            table = table[table["protein_id"].isin(keep)]
        tables.append(table)
    images = pd.concat(tables, ignore_index=True)
    report: dict = {"source_images": int(len(images)), "source_files": files,
                    "max_proteins_per_file": data_cfg.get("max_proteins"),
                    "subsample_seed": data_cfg.get("subsample_seed", 0) if data_cfg.get("max_proteins") else None,
                    "sources": {k: v for k, v in urls.items() if k != "mirror"}}
    report["provenance"] = {"mirror": urls["mirror"], "synthetic_images": bool(prov.get("synthetic_images")),
                            "standin_sequences": bool(prov.get("standin_sequences")),
                            "mirror_note": prov.get("note")}
    filters = data_cfg.get("filters", {})
    images, report["filters"] = filter_images(images, filters.get("if_verification"), filters.get("intensity"),
                                              filters.get("quantity"))
    where = images["source_file"].map(lambda f: Path(f).name) + " row " + images["source_row"].astype(str)
    # labels: the tables' own columns (the paper's) or the mapping; the other one is compared
    disagreements = label_disagreements(images, label_map)
    if label_source == "columns":
        mat = source_label_matrix(images, label_map.labels, where=", ".join(files))
        images = images.copy()
        for j, lab in enumerate(label_map.labels):
            images[lab] = mat[:, j]
    else:
        label_map.check_known(images["locations"].set_axis(where), where="at")
        images = add_label_columns(images, "locations", label_map, where="image")
    report["label_source"] = {
        "source": label_source,
        "description": ("the tables' own five 0/1 label columns (Vislocas' classes; the paper's labels)"
                        if label_source == "columns" else f"the location mapping {label_map.id}"),
        "mapping_vs_columns": disagreements}
    if disagreements["rows"]:
        print(f"label source '{label_source}': the mapping {label_map.id} and the tables' label columns "
              f"disagree on {disagreements['rows']} rows ({disagreements['proteins']} proteins); see "
              "report['label_source']")
    # known locations outside the five labels: counted (image rows), never guessed
    report["locations_outside_labels"] = dict(Counter(
        loc for s in images["locations"] for loc in label_map.split(s)
        if loc in label_map.mapping and not label_map.mapping[loc]))
    # one row per image before anything is fetched: duplicates would be fetched (and, when
    # streaming, deleted) twice
    images, report["duplicate_image_rows"] = dedup_images(images, label_map.labels)
    # proteins none of whose images carry one of the five labels: dropped before any download
    has_label = images.groupby("protein_id")[label_map.labels].max().sum(axis=1) > 0
    report["dropped_proteins_no_target_label"] = int((~has_label).sum())
    report["dropped_images_no_target_label"] = int((~images["protein_id"].map(has_label)).sum())
    images = images[images["protein_id"].map(has_label)].copy()
    mapped, dropped = download.uniprot_map_ensembl(images["protein_id"].unique(), base_url=urls["uniprot"])
    report["uniprot_dropped"] = dropped
    seqs = mapped.set_index("ensembl")
    images = images[images["protein_id"].isin(seqs.index)].copy()
    images["sequence"] = images["protein_id"].map(seqs["sequence"])
    images["uniprot"] = images["protein_id"].map(seqs["accession"])
    real = set(prov.get("real_sequence_genes") or [])
    images["sequence_source"] = [("uniprot" if not prov.get("standin_sequences") or g in real else "standin")
                                 for g in images["protein_id"]]
    images["synthetic_image"] = bool(prov.get("synthetic_images"))
    images["url"] = [image_url(a, n, host=urls["images"]) for a, n in zip(images["antibody"], images["image_name"])]
    local = bool(mirror) and urlsplit(urls["images"]).hostname in ("127.0.0.1", "localhost", "::1")
    rate = data_cfg.get("rate_limit_per_s", None if local else 5)  # the HPA server asks for politeness
    est = download.estimate_download(images["url"], profile_dir / "images", rate_limit_per_s=rate)
    report["download_estimate"] = est
    print(f"downloading up to {len(images)} images of {images['protein_id'].nunique()} proteins "
          f"into {profile_dir / 'images'}: {est['n_cached']} cached, about "
          f"{download.format_bytes(est['estimated_bytes'])} to fetch (mean size of "
          f"{est['sampled_with_size']} sampled images), {download.format_bytes(est['free_bytes'])} free")
    if embed is None and (est["estimated_bytes"] or 0) > est["free_bytes"]:
        print("WARNING: the images will likely not fit on this disk; set data.stream: true in the "
              "profile config to embed them as they arrive and keep only thumbnails")
    if embed is None:
        images, failures = download.fetch_images(images, profile_dir / "images", progress=progress,
                                                 rate_limit_per_s=rate)
    else:
        images, failures = download.stream_images(images, profile_dir / "images", embed, progress=progress,
                                                  rate_limit_per_s=rate)
    report["image_failures"] = [{"url": u, "reason": r} for u, r in failures]
    images["image_id"] = images["sha256"]
    images["path"] = [str(Path(p).resolve().relative_to(profile_dir.resolve())) if p else None for p in images["path"]]
    dup = images.duplicated("image_id")
    report["duplicate_image_files"] = int(dup.sum())  # same bytes under two URLs
    images = images[~dup].reset_index(drop=True)
    proteins = protein_table(images, label_map, labels_from=label_source)
    proteins["sequence_source"] = proteins["protein_id"].map(images.groupby("protein_id")["sequence_source"].first())
    # a protein can still end up unlabelled if its labelled images all failed to download
    has_label = proteins[label_map.labels].sum(axis=1) > 0
    report["dropped_proteins_no_target_label"] += int((~has_label).sum())
    proteins = proteins[has_label].reset_index(drop=True)
    images = images[images["protein_id"].isin(proteins["protein_id"])].reset_index(drop=True)
    on_disk = [profile_dir / q for q in images["path"] if isinstance(q, str)]
    # what the download really was: the data card and README quote it
    report["image_bytes_on_disk"] = int(sum(f.stat().st_size for f in on_disk if f.exists()))
    report.update(n_proteins=int(len(proteins)), n_images=int(len(images)))
    report["provenance"].update(
        n_standin_sequences=int((proteins["sequence_source"] == "standin").sum()),
        n_real_sequences=int((proteins["sequence_source"] == "uniprot").sum()),
        n_synthetic_images=int(images["synthetic_image"].sum()))
    return proteins, images, report


def build_provenance(profile_provenance: dict, report: dict) -> dict:
    """The profile's provenance, corrected by what the build found (a synthetic mirror).

    Stage 01 writes this into its manifest; later stages should read it from there, so every
    number made from mirror data says so.
    """
    out = dict(profile_provenance)
    prov = report.get("provenance") or {}
    if prov.get("synthetic_images"):
        out["synthetic_images"] = True
    if prov.get("n_standin_sequences"):
        out["real_sequences"] = False
        out["standin_sequences"] = int(prov["n_standin_sequences"])
    if prov.get("mirror"):
        out["mirror"] = prov["mirror"]
    return out


def provenance_line(provenance: dict) -> str:
    """Extra words for the provenance note when a build used mirror data ('' otherwise)."""
    parts = []
    if provenance.get("synthetic_images") and provenance.get("mirror"):
        parts.append("SYNTHETIC stand-in images from the offline mirror")
    if provenance.get("standin_sequences"):
        parts.append(f"{provenance['standin_sequences']} seeded STAND-IN sequences (not UniProt)")
    return ("Mirror build: " + "; ".join(parts) + ". Not comparable with the paper.") if parts else ""
