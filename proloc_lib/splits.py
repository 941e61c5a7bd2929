"""Protein-disjoint, multi-label-stratified train/validation/test splits.

Proteins that share an identical sequence or an antibody are linked into one group, and
groups never straddle two sides. Stratification is iterative (Sechidis et al. 2011, via
the ``iterative-stratification`` package) over the groups' label vectors.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")


class SplitLeakError(AssertionError):
    """A protein, sequence or antibody found on two sides of a split."""


def link_groups(proteins: pd.DataFrame, images: pd.DataFrame | None = None) -> pd.Series:
    """Group id per protein: connected components over shared sequences and antibodies."""
    ids = list(proteins["protein_id"])
    parent = {p: p for p in ids}

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union_all(members):
        members = [m for m in members if m in parent]
        for m in members[1:]:
            ra, rb = find(members[0]), find(m)
            if ra != rb:
                parent[rb] = ra

    for _, grp in proteins.groupby("seq_hash"):
        union_all(list(grp["protein_id"]))
    if images is not None and "antibody" in images.columns:
        for _, grp in images.groupby("antibody"):
            union_all(list(dict.fromkeys(grp["protein_id"])))
    roots = {p: find(p) for p in ids}
    codes = {r: i for i, r in enumerate(dict.fromkeys(roots.values()))}
    return pd.Series([codes[roots[p]] for p in ids], index=proteins.index, name="group")


def assign_splits(proteins: pd.DataFrame, labels: list[str], val_fraction: float, test_fraction: float,
                  seed: int, images: pd.DataFrame | None = None) -> pd.Series:
    """Split name per protein row; asserted disjoint before it is returned."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    if not 0 < val_fraction < 1 or not 0 < test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError(f"bad split fractions val={val_fraction} test={test_fraction}")
    groups = link_groups(proteins, images)
    y_group = proteins[labels].groupby(groups.to_numpy()).max()   # a group carries all its labels
    gid = y_group.index.to_numpy()
    y = y_group.to_numpy()
    if len(gid) < 3:
        raise ValueError(f"need at least 3 independent protein groups to split, got {len(gid)}")

    def cut(idx, frac, rs):
        sss = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=frac, random_state=rs)
        a, b = next(sss.split(np.zeros(len(idx)), y[idx]))
        return idx[a], idx[b]

    rest, test = cut(np.arange(len(gid)), test_fraction, seed)
    train, val = cut(rest, val_fraction / (1 - test_fraction), seed + 1)
    side = {}
    for name, idx in (("train", train), ("val", val), ("test", test)):
        side.update({int(g): name for g in gid[idx]})
    split = groups.map(side).rename("split")
    check_disjoint(proteins.assign(split=split), images)
    return split


def benchmark_splits(proteins: pd.DataFrame, images: pd.DataFrame, labels: list[str], val_fraction: float,
                     seed: int) -> pd.Series:
    """The benchmark's own train/test (``images.benchmark_split``), validation carved from train.

    A protein listed on both sides of the benchmark is an error (it would leak).
    """
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    if "benchmark_split" not in images.columns:
        raise KeyError("the image table has no 'benchmark_split' column: the benchmark split needs the "
                       "benchmark's own train/test files (full profile)")
    sides = images.groupby("protein_id")["benchmark_split"].agg(lambda s: set(s))
    both = sides[sides.map(len) > 1]
    if len(both):
        raise SplitLeakError(f"{len(both)} proteins are in both benchmark files, e.g. {list(both.index[:3])}")
    split = proteins["protein_id"].map(sides.map(lambda s: next(iter(s)))).rename("split")
    groups = link_groups(proteins, images)
    train_groups = groups[split == "train"]
    y = proteins.loc[train_groups.index, labels].groupby(train_groups.to_numpy()).max()
    sss = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed)
    _, val_idx = next(sss.split(np.zeros(len(y)), y.to_numpy()))
    val_groups = set(y.index[val_idx])
    split = split.where(~groups.isin(val_groups) | (split != "train"), "val")
    check_disjoint(proteins.assign(split=split), images)
    return split


def assign_folds(proteins: pd.DataFrame, labels: list[str], k: int, seed: int,
                 images: pd.DataFrame | None = None) -> pd.Series:
    """Grouped, multi-label-stratified k-fold: fold number (0..k-1) per protein."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    groups = link_groups(proteins, images)
    y = proteins[labels].groupby(groups.to_numpy()).max()
    if len(y) < k:
        raise ValueError(f"{len(y)} independent protein groups cannot fill {k} folds")
    fold_of = {}
    for fold, (_, idx) in enumerate(MultilabelStratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
                                    .split(np.zeros(len(y)), y.to_numpy())):
        fold_of.update({int(g): fold for g in y.index[idx]})
    return groups.map(fold_of).rename("fold")


def fold_split(folds: pd.Series, test_fold: int) -> pd.Series:
    """Cross-validation round ``test_fold``: that fold is test, the next one validation, the rest train."""
    k = int(folds.max()) + 1
    if not 0 <= test_fold < k or k < 3:
        raise ValueError(f"fold {test_fold} of {k}: need 0 <= fold < k and k >= 3")
    val_fold = (test_fold + 1) % k
    return folds.map(lambda f: "test" if f == test_fold else "val" if f == val_fold else "train").rename("split")


def check_disjoint(proteins: pd.DataFrame, images: pd.DataFrame | None = None) -> None:
    """Raise SplitLeakError if a protein, identical sequence or antibody is on two sides."""
    if proteins["split"].isna().any():
        raise SplitLeakError(f"{int(proteins['split'].isna().sum())} proteins have no split")
    bad = set(proteins["split"]) - set(SPLITS)
    if bad:
        raise SplitLeakError(f"unknown split names {sorted(bad)}")
    for key in ("protein_id", "seq_hash"):
        sides = proteins.groupby(key)["split"].nunique()
        leaks = sides[sides > 1]
        if len(leaks):
            raise SplitLeakError(f"{len(leaks)} {key} values on two sides, e.g. {list(leaks.index[:3])}")
    if images is not None and "antibody" in images.columns:
        side = images["protein_id"].map(proteins.set_index("protein_id")["split"])
        sides = side.groupby(images["antibody"]).nunique()
        leaks = sides[sides > 1]
        if len(leaks):
            raise SplitLeakError(f"{len(leaks)} antibodies on two sides, e.g. {list(leaks.index[:3])}")
