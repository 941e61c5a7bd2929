"""Protein-disjoint splits on a generated table with shared sequences and antibodies; the benchmark
protocol keeps the benchmark's test set (homology splits: test_homology.py); the count of test
proteins with a homolog among the proteins trained on."""
import importlib.util

import numpy as np
import pandas as pd
import pytest

from proloc_lib.core.errors import UserError
from proloc_lib.data import splits
from proloc_lib.data.labels import LABELS
from proloc_lib.data.mirror import standin_sequence
from proloc_lib.data.splits import (
    SplitLeakError,
    assign_splits,
    check_disjoint,
    link_groups,
)


def make_tables(n=120, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 5)) < 0.3).astype(int)
    y[y.sum(1) == 0, 3] = 1
    seq_hash = [f"s{i}" for i in range(n)]
    for i in range(0, 30, 3):        # pairs of proteins with identical sequences
        seq_hash[i + 1] = seq_hash[i]
    proteins = pd.DataFrame(y, columns=LABELS).assign(protein_id=[f"P{i}" for i in range(n)], seq_hash=seq_hash)
    rows = []
    for i in range(n):
        ab = f"AB{i}" if i < 60 or i % 4 else f"AB{i - 1}"   # some antibodies stain two proteins
        rows += [{"protein_id": f"P{i}", "antibody": ab, "image_id": f"P{i}_{k}"} for k in range(3)]
    return proteins, pd.DataFrame(rows)


def test_groups_link_shared_sequences_and_antibodies():
    proteins, images = make_tables()
    g = link_groups(proteins, images).to_numpy()
    assert g[0] == g[1]                     # same sequence
    assert g[63] == g[64]                   # P64 uses P63's antibody
    assert g[2] != g[3]


def test_split_is_disjoint_stratified_and_seeded():
    proteins, images = make_tables()
    split = assign_splits(proteins, LABELS, 0.15, 0.2, seed=1, images=images)
    p = proteins.assign(split=split)
    check_disjoint(p, images)
    frac = p["split"].value_counts(normalize=True)
    assert abs(frac["test"] - 0.2) < 0.06 and abs(frac["val"] - 0.15) < 0.06
    for lab in LABELS:      # every label present on every side
        assert (p.groupby("split")[lab].sum() > 0).all()
    again = assign_splits(proteins, LABELS, 0.15, 0.2, seed=1, images=images)
    assert split.equals(again)
    assert not split.equals(assign_splits(proteins, LABELS, 0.15, 0.2, seed=2, images=images))


def test_leaks_are_caught():
    proteins, images = make_tables()
    p = proteins.assign(split=assign_splits(proteins, LABELS, 0.15, 0.2, seed=0, images=images))
    leak = p.copy()
    i = leak.index[leak["seq_hash"] == "s0"]
    leak.loc[i, "split"] = ["train", "test"]
    with pytest.raises(SplitLeakError, match="seq_hash"):
        check_disjoint(leak)
    j = p.index[p["protein_id"] == "P64"][0]
    k = p.index[p["protein_id"] == "P63"][0]
    leak = p.copy()
    leak.loc[j, "split"] = "test" if leak.loc[k, "split"] != "test" else "train"
    with pytest.raises(SplitLeakError, match="antibod"):
        check_disjoint(leak, images)


def test_grouped_kfold_keeps_groups_together_and_covers_everyone():
    from proloc_lib.data.splits import assign_folds

    proteins, images = make_tables()
    folds = assign_folds(proteins, LABELS, 5, seed=0, images=images)
    assert sorted(folds.unique()) == [0, 1, 2, 3, 4] and folds.notna().all()
    groups = link_groups(proteins, images)
    assert (folds.groupby(groups).nunique() == 1).all()       # a group never spans two folds
    for f in range(5):   # each fold is a valid test side
        check_disjoint(proteins.assign(split=np.where(folds == f, "test", "train")), images)


def test_benchmark_split_keeps_the_benchmark_test_side():
    from proloc_lib.data.splits import benchmark_splits

    proteins, images = make_tables()
    side = {f"P{i}": ("test" if i % 5 == 0 else "train") for i in range(len(proteins))}
    groups = link_groups(proteins, images)
    for g, grp in proteins.groupby(groups):      # the benchmark keeps linked proteins together
        first = side[grp["protein_id"].iloc[0]]
        side.update({p: first for p in grp["protein_id"]})
    images = images.assign(benchmark_split=images["protein_id"].map(side))
    split = benchmark_splits(proteins, images, LABELS, 0.15, seed=0)
    assert (split[proteins["protein_id"].map(side) == "test"] == "test").all()
    assert set(split) == {"train", "val", "test"}
    leak = images.copy()
    leak.loc[0, "benchmark_split"] = "test" if leak.loc[1, "benchmark_split"] == "train" else "train"
    with pytest.raises(SplitLeakError, match="both benchmark files"):
        benchmark_splits(proteins, leak, LABELS, 0.15, seed=0)


def test_fold_split_rotates_test_and_validation():
    from proloc_lib.data.splits import assign_folds, fold_split

    proteins, images = make_tables()
    folds = assign_folds(proteins, LABELS, 5, seed=0, images=images)
    tests = []
    for f in range(5):
        split = fold_split(folds, f)
        check_disjoint(proteins.assign(split=split), images)
        assert set(split) == {"train", "val", "test"}
        assert ((split == "val") == (folds == (f + 1) % 5)).all()
        tests.append(set(proteins["protein_id"][split == "test"]))
    assert set().union(*tests) == set(proteins["protein_id"]) and sum(map(len, tests)) == len(proteins)


# -- the split protocols (split.method) ---------------------------------------------------------------
def test_benchmark_protocol_keeps_the_benchmark_test_set(family_tables):
    proteins, images, _ = family_tables()
    side = {pid: ("test" if i % 4 == 0 else "train") for i, pid in enumerate(proteins["protein_id"])}
    images = images.assign(benchmark_split=images["protein_id"].map(side))
    split, rep = splits.split_proteins(proteins, images, LABELS,
                                       {"method": "benchmark", "val_fraction": 0.1}, seed=0)
    test = set(proteins.loc[split == "test", "protein_id"])
    assert test == {p for p, s in side.items() if s == "test"}  # the benchmark's own test set, untouched
    val = set(proteins.loc[split == "val", "protein_id"])
    assert val and all(side[p] == "train" for p in val)    # carved from train
    assert rep["method"] == "benchmark" and "asserted" in rep["disjoint"]
    # a protein in both benchmark files is a leak, never split silently
    leaky = pd.concat([images, images.iloc[[1]].assign(benchmark_split="test")], ignore_index=True)
    leaky.loc[leaky.index[-1], "benchmark_split"] = "train" if side[leaky.iloc[-1]["protein_id"]] == "test" else "test"
    with pytest.raises(splits.SplitLeakError, match="both benchmark files"):
        splits.split_proteins(proteins, leaky, LABELS, {"method": "benchmark", "val_fraction": 0.1}, seed=0)


def test_benchmark_tiny_train_still_gets_a_validation_part():
    proteins = pd.DataFrame({"protein_id": list("ABCDE"), "seq_hash": list("abcde"),
                             **{lab: [int(i == j) for i in range(5)] for j, lab in enumerate(LABELS)}})
    images = pd.DataFrame({"protein_id": list("ABCDE"), "antibody": list("12345"),
                           "benchmark_split": ["train"] * 4 + ["test"]})
    split, _ = splits.split_proteins(proteins, images, LABELS, {"method": "benchmark", "val_fraction": 0.1}, seed=0)
    assert (split == "val").sum() == 1 and (split == "test").sum() == 1


def test_unknown_method_is_a_user_error(family_tables):
    proteins, images, _ = family_tables(n_families=2)
    with pytest.raises(UserError, match="split.method must be one of"):
        splits.split_proteins(proteins, images, LABELS, {"method": "random", "val_fraction": 0.1,
                                                         "test_fraction": 0.2}, seed=0)


def _mutate(seq: str, identity: float, rng) -> str:
    s = list(seq)
    for i in rng.choice(len(s), int(round((1 - identity) * len(s))), replace=False):
        s[i] = "W" if s[i] != "W" else "C"
    return "".join(s)


@pytest.mark.skipif(importlib.util.find_spec("parasail") is None, reason="aligner parasail not installed")
def test_nearest_training_homologs_counts_test_proteins_with_a_close_train_protein():
    rng = np.random.default_rng(0)
    base = {f"g{i}": standin_sequence(f"g{i}")[:300] for i in range(6)}
    rows = [  # two test proteins with a homolog in train (60%) or validation (45%), two without
        ("T1", "test", _mutate(base["g0"], 0.6, rng)), ("A", "train", base["g0"]),
        ("T2", "test", _mutate(base["g1"], 0.45, rng)), ("B", "val", base["g1"]),
        ("T3", "test", base["g2"]), ("T4", "test", base["g3"]),
        ("C", "train", base["g4"]), ("D", "train", base["g5"]),
    ]
    proteins = pd.DataFrame([{"protein_id": p, "protein_name": f"name {p}", "split": s, "sequence": q,
                              "sequence_source": "standin" if p in "CD" else "uniprot", **{lab: 1 for lab in LABELS}}
                             for p, s, q in rows])
    rep = splits.nearest_training_homologs(proteins, identity=0.3)
    assert rep["test_proteins"] == 4 and rep["compared_with"] == 4 and rep["at_or_above"] == 2
    got = {p["test"]: (p["train"], p["identity"]) for p in rep["pairs"]}
    assert set(got) == {"T1", "T2"} and got["T1"][0] == "A" and got["T2"][0] == "B"
    assert 0.55 < got["T1"][1] < 0.65 and 0.4 < got["T2"][1] < 0.5
    assert rep["pairs"][0]["test"] == "T1" and rep["pairs"][0]["test_name"] == "name T1"   # closest first
    assert rep["standin_sequences"] == 2 and "needle" in rep["aligner"]
    # at a higher threshold only the 60% pair counts
    assert splits.nearest_training_homologs(proteins, identity=0.5)["at_or_above"] == 1
