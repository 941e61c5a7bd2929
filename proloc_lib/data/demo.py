"""The offline demo dataset: real SCL2205 sequences (PyPI ``p-scldata``) + synthetic IHC tiles.

Builds the same two tables the full profile builds from HPA (see ``hpa``), so every later
stage runs unchanged: a protein table (one row per protein) and an image table (one row
per image file, read back through ``images.load_image``).
"""

from __future__ import annotations

import math
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from proloc_lib.core.fileio import file_sha256
from proloc_lib.core.progress import bar as progress_bar
from proloc_lib.data.images import load_image
from proloc_lib.data.labels import LabelMap, add_label_columns
from proloc_lib.data.sequences import clean_sequence, sequence_hash
from proloc_lib.data.synthetic import write_protein_images

SCLDATA_VERSION = "2025.6.0"
TISSUES = ["Liver", "Kidney", "Colon", "Lung", "Skin", "Breast", "Stomach", "Testis"]


def load_scldata() -> pd.DataFrame:
    """SCL2205 as a table with columns accession, sequence, locations (real UniProt data)."""
    from importlib import metadata

    import scldata.loader

    version = metadata.version("p-scldata")
    if version != SCLDATA_VERSION:
        raise RuntimeError(f"p-scldata {version} installed; the demo is pinned to {SCLDATA_VERSION}")
    df = scldata.loader.load()
    missing = {"seq", "scl"} - set(df.columns)
    if missing:
        raise KeyError(f"scldata.loader.load() lacks columns {sorted(missing)}")
    return pd.DataFrame({"accession": df.index.astype(str), "sequence": df["seq"].to_numpy(),
                         "locations": df["scl"].astype(str).to_numpy()})


# Each label on at least this share of the demo's proteins (where the source has enough): the
# stratified split then puts a few proteins of every label into train, validation and test (SCL2205
# holds ER on ~1% of its proteins, so a plain random sample of 150 has one ER protein in all).
MIN_LABEL_SHARE = 0.2


def select_proteins(table: pd.DataFrame, label_map: LabelMap, n_proteins: int, seed: int,
                    min_length: int = 1, max_length: int | None = None, *,
                    min_label_share: float = MIN_LABEL_SHARE) -> tuple[pd.DataFrame, dict]:
    """Map locations to labels, drop what maps to none, choose ``n_proteins`` (seeded, stratified).

    The choice: the proteins in one seeded random order; for each label, rarest first, its first
    proteins in that order until ``ceil(min_label_share * n_proteins)`` chosen proteins carry it
    (fewer if the source has fewer); then the rest in the same order. Returns the protein table
    and a report of every drop and its reason, and the per-label quota.
    """
    for col in ("accession", "sequence", "locations"):
        if col not in table.columns:
            raise KeyError(f"protein table lacks column '{col}' (have {list(table.columns)})")
    report: dict = {"source_proteins": int(len(table))}
    df = add_label_columns(table, "locations", label_map, where="protein")
    has_label = df[label_map.labels].sum(axis=1) > 0
    report["dropped_no_target_label"] = dict(Counter(df.loc[~has_label, "locations"]))
    report["dropped_no_target_label_total"] = int((~has_label).sum())
    df = df[has_label]
    lengths = df["sequence"].str.len()
    in_range = (lengths >= min_length) & (lengths <= (max_length or lengths.max()))
    report["dropped_length_out_of_range"] = int((~in_range).sum())
    df = df[in_range]
    df = df.assign(sequence=[clean_sequence(s, where=f"protein {a}") for a, s in zip(df["accession"], df["sequence"])])
    df = df.assign(seq_hash=df["sequence"].map(sequence_hash))
    if n_proteins > len(df):
        raise ValueError(f"asked for {n_proteins} proteins, only {len(df)} pass the filters")
    df = df.sort_values("accession").reset_index(drop=True)    # the order the seed permutes: not the source's
    quota = math.ceil(min_label_share * n_proteins)
    chosen = _stratified_choice(df[label_map.labels].to_numpy(dtype=bool), n_proteins, quota, seed)
    df = df.iloc[chosen].sort_values("accession").reset_index(drop=True)
    df.insert(0, "protein_id", df["accession"])
    report["selected_proteins"] = int(len(df))
    report["label_quota"] = {"min_label_share": float(min_label_share), "proteins_per_label": int(quota)}
    report["label_counts"] = {lab: int(df[lab].sum()) for lab in label_map.labels}
    return df, report


def _stratified_choice(y: np.ndarray, n: int, quota: int, seed: int) -> np.ndarray:
    """Row indices of ``n`` rows of the 0/1 matrix ``y`` (rows x labels): each label on at least
    ``quota`` chosen rows where ``y`` allows it, the rarest label served first, every pick in one
    seeded random order."""
    order = np.random.default_rng(seed).permutation(len(y))
    taken = np.zeros(len(y), dtype=bool)
    for j in np.argsort(y.sum(0), kind="stable"):
        need = min(quota - int(y[taken, j].sum()), n - int(taken.sum()))
        if need > 0:
            taken[order[y[order, j] & ~taken[order]][:need]] = True
    rest = order[~taken[order]][:n - int(taken.sum())]
    taken[rest] = True
    return np.flatnonzero(taken)


def make_demo_images(proteins: pd.DataFrame, labels: list[str], image_dir: Path, images_per_protein: int,
                     seed: int, size: int, *, workers: int | None = None) -> pd.DataFrame:
    """Render (or reuse) synthetic JPEG tiles and return the image table.

    ``workers``: rendering threads (default: the CPUs this process may use); the table and the
    files are the same for any number.

    Tiles are named ``<protein>_seed<seed>_<k>.jpg``: a file is reused only by a rerun with the
    same seed, so a seed's images never depend on which seeds ran before in the same folder
    (and ``predict --images`` still finds them as ``<id>_*.jpg``).
    """
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    def render(item):
        pid, vec = item
        paths = write_protein_images(pid, vec.tolist(), image_dir, images_per_protein, seed, size=size,
                                     name_tag=f"_seed{int(seed)}")
        for path in paths:
            load_image(path)  # the same validated loader as for real HPA images
        return [(path, file_sha256(path)) for path in paths]

    rng = np.random.default_rng(seed)
    rows = []
    label_rows = proteins[labels].to_numpy(dtype=int)
    items = list(zip(proteins["protein_id"], label_rows))
    # Proteins render in parallel threads (numpy releases the GIL), each with single-threaded BLAS:
    # BLAS threads on top oversubscribe the cores (the blur's small products ran several times slower),
    # and OpenBLAS's thread split changes the blur's last bits, so the pixels (a few per thousand
    # tiles) depended on the machine's core count. Each tile has its own seed: same pixels in any order.
    with threadpool_limits(1), ThreadPoolExecutor(workers or _workers()) as pool:
        for (pid, vec), files in progress_bar(zip(items, pool.map(render, items)), total=len(items),
                                      desc="synthetic IHC images"):
            for path, digest in files:
                rows.append({"image_id": digest, "protein_id": pid,
                             "antibody": f"SYN{pid}", "image_name": path.name,
                             "tissue": TISSUES[int(rng.integers(len(TISSUES)))], "organ": "synthetic",
                             "intensity": "strong", "quantity": ">75%",
                             "path": f"{Path(image_dir).name}/{path.name}",  # relative to the profile folder
                             **{lab: int(v) for lab, v in zip(labels, vec)}})
    return pd.DataFrame(rows)


def _workers() -> int:
    """The CPUs this process may use (affinity, e.g. a container's share)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:               # macOS, Windows
        return max(1, os.cpu_count() or 1)
