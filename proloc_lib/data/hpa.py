"""Human Protein Atlas metadata: read, filter, aggregate per protein and audit.

Every source (the authors' two CSV layouts, the Vislocas benchmark files) is normalised to
one canonical image table, one row per IHC image (``IMAGE_COLUMNS``). Tables are joined by
Ensembl gene id and image name, never by row order: the authors' two files list the same
images in different orders.
"""

from __future__ import annotations

import csv
import difflib
import re
from pathlib import Path

import numpy as np
import pandas as pd

from proloc_lib.core.errors import UserError
from proloc_lib.data.labels import LABELS, LabelMap, UnknownLocationError
from proloc_lib.data.sequences import (
    InvalidSequenceError,
    clean_sequence,
    sequence_hash,
)

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
    lines = text.splitlines()
    rows = csv.reader(lines)
    try:
        header = next(rows)
        other = _separator_of(lines[0], len(header))
        if other:
            raise TableError(f"{path}: looks {other}-separated (its header splits into "
                             f"{len(_split(lines[0], SEPARATORS[other]))} fields at {other}s, {len(header)} at "
                             "commas); HPA tables are read as comma-separated CSV: save it with commas")
        for i, row in enumerate(rows, start=2):
            if row == header and detect_layout(header) != "unknown":   # a header: not a data row seen twice
                raise TableError(f"{path}: line {i} repeats the header row (two tables joined into one?); "
                                 "remove it")
            if row and len(row) != len(header):
                hint = _separator_of(lines[rows.line_num - 1], len(row), want=len(header))
                raise TableError(f"{path}: ragged table: line {i} has {len(row)} fields, the header "
                                 f"has {len(header)}" + (f" (that line looks {hint}-separated)" if hint else ""))
    except csv.Error as exc:
        raise TableError(f"{path}: not a CSV table ({exc})") from None


SEPARATORS = {"tab": "\t", "semicolon": ";", "pipe": "|"}


def _split(line: str, sep: str) -> list[str]:
    return next(csv.reader([line], delimiter=sep), [])


def _separator_of(line: str, comma_fields: int, *, want: int | None = None) -> str | None:
    """The name of another separator that splits ``line`` into more fields than commas do
    (into exactly ``want`` fields when given), or None."""
    for name, sep in SEPARATORS.items():
        n = len(_split(line, sep)) if sep in line else 1
        if n > max(comma_fields, 1) and (want is None or n == want):
            return name
    return None


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


# ----------------------------------------------------------------------------- full build

LABEL_SOURCES = ("columns", "mapping")


def dedup_images(images: pd.DataFrame, labels) -> tuple[pd.DataFrame, dict]:
    """One row per image and protein (``image_key``: antibody number + image name, the image URL's path).

    Vislocas repeats some antibody/image pairs under a second tissue name (train 5,440 rows /
    5,169 images; test 589 / 566). Those rows of the same protein are merged before any
    download: the first row's metadata is kept, ``tissues`` lists every tissue, ``n_rows`` counts
    the rows merged, and labels are the union over the rows (they agree on the real tables; a
    disagreement is counted). An image listed under several proteins (paralogs sharing an
    antibody: SET/SETSIP, HNRNPH1/HNRNPH2/HNRNPF, RPL10/RPL10L, U2AF1/U2AF1L5 in the train table)
    keeps one row per protein, so no protein is lost; it is fetched and embedded once (the stores
    key by checksum), and the split links its proteins into one group.
    """
    images = images.reset_index(drop=True).assign(
        image_key=[image_key(a, n) for a, n in zip(images["antibody"], images["image_name"])])
    by = ["image_key", "protein_id"]
    grp = images.groupby(by, sort=False)
    n_rows = grp["image_key"].transform("size")
    lab_cols = [c for c in labels if c in images.columns]
    disagree = int((grp[lab_cols].nunique() > 1).any(axis=1).sum()) if lab_cols else 0
    tissues = grp["tissue"].agg(lambda t: ";".join(dict.fromkeys(str(x) for x in t if not pd.isna(x))))
    first = images[~images.duplicated(by)].copy()
    keys = pd.MultiIndex.from_frame(first[by])
    if lab_cols:
        first[lab_cols] = grp[lab_cols].max().loc[keys].to_numpy()
    first["n_rows"] = n_rows[first.index].to_numpy()
    first["tissues"] = tissues.loc[keys].to_numpy()
    dup_keys = first.loc[first["n_rows"] > 1, "image_key"]
    per_image = first.groupby("image_key")["protein_id"].agg(list)
    shared = per_image[per_image.map(len) > 1]
    names = dict(zip(first["protein_id"], first["protein_name"].fillna(first["protein_id"])))
    groups: dict[tuple, int] = {}
    for prots in shared:
        key = tuple(sorted(prots))
        groups[key] = groups.get(key, 0) + 1
    report = {"rows": int(len(images)), "unique_images": int(images["image_key"].nunique()),
              "image_protein_rows": int(len(first)), "duplicate_rows": int(len(images) - len(first)),
              "images_with_duplicates": int(dup_keys.nunique()),
              "label_disagreements_within_duplicates": disagree,
              "handled": "rows repeating an image under the same protein merged into one row before download "
                         "(first row's metadata kept, all tissues in 'tissues', row count in 'n_rows', labels "
                         "the union)",
              "shared_images": int(len(shared)),
              "shared_image_groups": [{"proteins": [names[p] for p in k], "protein_ids": list(k), "images": n}
                                      for k, n in groups.items()],
              "shared_handled": "an image listed under several proteins keeps one row per protein (each protein "
                                "keeps it); fetched and embedded once, and its proteins are split together",
              "examples": dup_keys.drop_duplicates().head(5).tolist()}
    return first.reset_index(drop=True), report


# ----------------------------------------------------------------------------- the authors' test labels

AUTHORS_PREFIX = "authors_table:"   # image-table columns: the authors' own test labels (NaN off their table)


def join_authors_labels(images: pd.DataFrame, authors: pd.DataFrame, labels) -> tuple[pd.DataFrame, dict]:
    """Add the authors' own test labels to the image table as ``authors_table:<label>`` columns.

    ``authors`` is their test table read by ``read_authors_csv`` (``proloc_ihs_test.csv``): each
    row's label columns belong to the image its ``File Name`` names, joined here by Ensembl id,
    antibody and image name. Rows not in their table get NaN. The report counts the joined rows,
    the rows of their table with no image here, and the images (and proteins) whose labels differ
    from the image table's own label columns, per label.
    """
    keys = ["protein_id", "antibody", "image_name"]
    src = [SRC_PREFIX + lab for lab in labels]
    missing = [c for c in src if c not in authors.columns]
    if missing:
        raise SchemaError(f"the authors' test table has no label column(s) {[c[len(SRC_PREFIX):] for c in missing]}")
    theirs = authors[keys + src].rename(columns={SRC_PREFIX + lab: AUTHORS_PREFIX + lab for lab in labels})
    dup = theirs.duplicated(keys)
    theirs = theirs[~dup]
    out = images.drop(columns=[AUTHORS_PREFIX + lab for lab in labels], errors="ignore").merge(
        theirs, on=keys, how="left", validate="many_to_one")
    cols = [AUTHORS_PREFIX + lab for lab in labels]
    joined = out[cols].notna().all(axis=1)
    matched = theirs.merge(images[keys].drop_duplicates(), on=keys, how="inner")
    diff = (out.loc[joined, cols].to_numpy(dtype=int) != out.loc[joined, list(labels)].to_numpy(dtype=int))
    rows = diff.any(axis=1)
    return out, {"rows_in_table": int(len(authors)), "duplicate_rows_in_table": int(dup.sum()),
                 "image_rows_joined": int(joined.sum()), "table_rows_without_image": int(len(theirs) - len(matched)),
                 "images_differing": int(rows.sum()),
                 "proteins_differing": int(out.loc[joined].loc[rows, "protein_id"].nunique()),
                 "per_label": {lab: int(diff[:, j].sum()) for j, lab in enumerate(labels)},
                 "joined_on": "Ensembl id + antibody + image name (from the table's File Name)"}
