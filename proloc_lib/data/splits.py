"""Protein-disjoint, multi-label-stratified train/validation/test splits.

Proteins that share an identical sequence, an antibody or an image (an HPA image listed under
two paralogs) are linked into one group, and groups never straddle two sides. Stratification is
iterative (Sechidis et al. 2011, via the ``iterative-stratification`` package) over the groups'
label vectors.

Three protocols (``split.method``): ``benchmark`` (the benchmark's own train/test, the
paper's test set; validation carved from train), ``stratified`` (a grouped re-split), and
``homology`` (the stratified re-split over clusters of similar sequences: proteins whose
global alignment identity, as GraphPart and DeepLoc 2.0 measure it, reaches ``split.identity``
are linked, so no test protein has a homologue at that identity in training; ``data.homology``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from proloc_lib.core.errors import UserError
from proloc_lib.data.homology import DEFAULT_IDENTITY, aligner_description, homology_groups, nearest_identity

SPLITS = ("train", "val", "test")
METHODS = ("benchmark", "stratified", "homology")


class SplitLeakError(AssertionError):
    """A protein, sequence or antibody found on two sides of a split."""


def link_groups(proteins: pd.DataFrame, images: pd.DataFrame | None = None) -> pd.Series:
    """Group id per protein: connected components over shared sequences, antibodies and images."""
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
    for key in ("antibody", "image_id"):   # an image listed under two proteins links them too
        if images is not None and key in images.columns:
            for _, grp in images.groupby(key):
                union_all(list(dict.fromkeys(grp["protein_id"])))
    roots = {p: find(p) for p in ids}
    codes = {r: i for i, r in enumerate(dict.fromkeys(roots.values()))}
    return pd.Series([codes[roots[p]] for p in ids], index=proteins.index, name="group")


def merge_groups(*groupings: pd.Series) -> pd.Series:
    """Connected components of several groupings of the same proteins (same index)."""
    index = groupings[0].index
    parent = list(range(len(index)))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for g in groupings:
        first: dict = {}
        for pos, key in enumerate(g.to_numpy()):
            if key in first:
                ra, rb = find(first[key]), find(pos)
                if ra != rb:
                    parent[rb] = ra
            else:
                first[key] = pos
    roots = [find(i) for i in range(len(index))]
    codes = {r: i for i, r in enumerate(dict.fromkeys(roots))}
    return pd.Series([codes[r] for r in roots], index=index, name="group")


def assign_splits(proteins: pd.DataFrame, labels: list[str], val_fraction: float, test_fraction: float,
                  seed: int, images: pd.DataFrame | None = None, *, groups: pd.Series | None = None) -> pd.Series:
    """Split name per protein row; asserted disjoint before it is returned.

    ``groups`` (per protein row) adds links to the sequence/antibody ones, e.g. homology clusters.
    """
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    if not 0 < val_fraction < 1 or not 0 < test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError(f"bad split fractions val={val_fraction} test={test_fraction}")
    groups = link_groups(proteins, images) if groups is None else merge_groups(link_groups(proteins, images), groups)
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
    if len(y) < 2:
        raise ValueError(f"the benchmark's train file has {len(y)} independent protein groups: "
                         "cannot carve a validation part")
    # at least one group: a small train file would otherwise get no validation part at all
    frac = max(val_fraction, 1.0 / len(y))
    sss = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=frac, random_state=seed)
    _, val_idx = next(sss.split(np.zeros(len(y)), y.to_numpy()))
    if len(val_idx) == 0:  # iterative stratification rounds every rare label down to nothing
        val_idx = np.random.default_rng(seed).choice(len(y), size=1)
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
    """Raise SplitLeakError if a protein, identical sequence, antibody or image is on two sides."""
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
    if images is not None:
        side = images["protein_id"].map(proteins.set_index("protein_id")["split"])
        for key, what in (("antibody", "antibodies"), ("image_id", "images")):
            if key in images.columns:
                sides = side.groupby(images[key]).nunique()
                leaks = sides[sides > 1]
                if len(leaks):
                    raise SplitLeakError(f"{len(leaks)} {what} on two sides, e.g. {list(leaks.index[:3])}")


def split_proteins(proteins: pd.DataFrame, images: pd.DataFrame | None, labels: list[str], split_cfg: dict,
                   seed: int) -> tuple[pd.Series, dict]:
    """The profile's split protocol (``split.method``), asserted disjoint; (split, report).

    ``benchmark``: the benchmark files' own train/test (the paper's test set), validation
    carved protein-disjointly from train. ``stratified``: grouped multi-label re-split.
    ``homology``: ``stratified`` over clusters of proteins linked at ``split.identity`` (default
    0.3) global identity (``data.homology``).
    """
    method = split_cfg.get("method", "stratified")
    if method not in METHODS:
        raise UserError(f"split.method must be one of {list(METHODS)}, got {method!r}")
    report: dict = {"method": method, "seed": int(seed), "val_fraction": split_cfg["val_fraction"]}
    if method == "benchmark":
        split = benchmark_splits(proteins, images, labels, split_cfg["val_fraction"], seed)
        report["description"] = ("the benchmark's own train/test files (test = the paper's test set); "
                                 "validation carved from train, protein-, antibody- and image-disjoint")
    elif method == "homology":
        split, hom = homology_splits(proteins, labels, split_cfg["val_fraction"], split_cfg["test_fraction"],
                                     seed, images, identity=float(split_cfg.get("identity") or DEFAULT_IDENTITY))
        report.update(hom, test_fraction=split_cfg["test_fraction"],
                      description=f"grouped, stratified re-split over homology clusters (global identity >= "
                                  f"{hom['identity']})")
    else:
        split = assign_splits(proteins, labels, split_cfg["val_fraction"], split_cfg["test_fraction"],
                              seed=seed, images=images)
        report.update(test_fraction=split_cfg["test_fraction"],
                      description="grouped (shared sequence, antibody or image), multi-label stratified re-split")
    check_disjoint(proteins.assign(split=split), images)
    report["disjoint"] = "asserted: no protein, identical sequence, antibody or image on two sides" + (
        "; no homologous pair on two sides" if method == "homology" else "")
    return split, report


def homology_splits(proteins: pd.DataFrame, labels: list[str], val_fraction: float, test_fraction: float,
                    seed: int, images: pd.DataFrame | None = None, *, identity: float = DEFAULT_IDENTITY
                    ) -> tuple[pd.Series, dict]:
    """The stratified re-split over homology clusters; asserted free of cross-split homologues.

    Returns the split and a report (aligner, threshold, clusters, linked pairs).
    """
    groups, pairs = homology_groups(proteins, identity=identity)
    split = assign_splits(proteins, labels, val_fraction, test_fraction, seed, images, groups=groups)
    check_homology_disjoint(proteins.assign(split=split), pairs)
    report = {"method": "homology", "aligner": aligner_description(), "identity": identity,
              "linked_pairs": len(pairs), "clusters": int(groups.nunique()),
              "largest_cluster": int(groups.value_counts().max()), "pairs": [list(p) for p in pairs[:50]]}
    return split, report


def check_homology_disjoint(proteins: pd.DataFrame, pairs) -> None:
    """Raise SplitLeakError if a homologous pair sits on two sides."""
    side = dict(zip(proteins["protein_id"], proteins["split"]))
    leaks = [(a, b) for a, b, *_ in pairs if side.get(a) != side.get(b)]
    if leaks:
        raise SplitLeakError(f"{len(leaks)} homologous pairs on two sides, e.g. {leaks[:3]}")


def nearest_training_homologs(proteins: pd.DataFrame, *, identity: float = DEFAULT_IDENTITY) -> dict:
    """How close the test proteins are to the proteins a model may learn from (train and validation).

    For every test protein, its nearest non-test protein by global identity (``data.homology``);
    ``at_or_above`` counts the test proteins with one at ``identity`` or more. Sequences marked as
    stand-ins (``sequence_source``) are counted, since the figure only means something for real ones.
    """
    test = proteins[proteins["split"] == "test"]
    rest = proteins[proteins["split"] != "test"]
    near = homology_nearest(test, rest)
    hits = near[near["identity"] >= identity].sort_values("identity", ascending=False)
    name = dict(zip(proteins["protein_id"], proteins.get("protein_name", proteins["protein_id"])))
    src = proteins["sequence_source"] if "sequence_source" in proteins.columns else None
    return {"identity": identity, "aligner": aligner_description(), "test_proteins": int(len(test)),
            "compared_with": int(len(rest)), "at_or_above": int(len(hits)),
            "pairs": [{"test": q, "test_name": name.get(q), "train": t, "train_name": name.get(t), "identity": i}
                      for q, t, i in hits[["query", "target", "identity"]].itertuples(index=False)],
            "nearest_identity_quantiles": {str(k): round(float(v), 4) for k, v in
                                           near["identity"].quantile([0.5, 0.9, 1.0]).items()} if len(near) else {},
            "standin_sequences": None if src is None else int((src == "standin").sum())}


def homology_nearest(queries: pd.DataFrame, targets: pd.DataFrame) -> pd.DataFrame:
    """``homology.nearest_identity`` between two protein tables (by ``protein_id`` and ``sequence``)."""
    return nearest_identity(dict(zip(queries["protein_id"], queries["sequence"])),
                            dict(zip(targets["protein_id"], targets["sequence"])))
