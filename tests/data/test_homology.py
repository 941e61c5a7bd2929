"""The three split protocols (split.method): benchmark, stratified, homology; each asserts disjointness."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from proloc_lib.core.errors import UserError
from proloc_lib.data import homology, splits
from proloc_lib.data.labels import LABELS
from proloc_lib.data.mirror import standin_sequence
from proloc_lib.data.sequences import sequence_hash

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "proloc_ihs_test.csv"
has_pyopal = importlib.util.find_spec("pyopal") is not None
needs_pyopal = pytest.mark.skipif(not has_pyopal, reason="optional aligner pyopal not installed (homology extra)")
AA = np.array(list("ACDEFGHIKLMNPQRSTVWY"))


def _mutate(seq: str, frac: float, rng) -> str:
    s = np.array(list(seq))
    idx = rng.choice(len(s), int(frac * len(s)), replace=False)
    s[idx] = rng.choice(AA, len(idx))
    return "".join(s)


def family_tables(n_families=12, per_family=3, seed=0):
    """Families of homologues (~55-60% identity to their founder, full length) + unrelated singletons."""
    rng = np.random.default_rng(seed)
    rows, fam = [], {}
    for f in range(n_families):
        founder = standin_sequence(f"family{f}")[:220]
        y = (rng.random(5) < 0.35).astype(int)
        y[rng.integers(5)] = 1
        for k in range(per_family):
            pid = f"F{f}_{k}"
            seq = founder if k == 0 else _mutate(founder, 0.45, rng)
            rows.append({"protein_id": pid, "sequence": seq, **dict(zip(LABELS, y))})
            fam[pid] = f
    for i in range(24):
        y = (rng.random(5) < 0.35).astype(int)
        y[rng.integers(5)] = 1
        pid = f"S{i}"
        rows.append({"protein_id": pid, "sequence": standin_sequence(f"single{i}")[:200], **dict(zip(LABELS, y))})
        fam[pid] = None
    proteins = pd.DataFrame(rows)
    proteins["seq_hash"] = proteins["sequence"].map(sequence_hash)
    images = pd.DataFrame({"protein_id": proteins["protein_id"], "antibody": "AB" + proteins["protein_id"]})
    return proteins, images, fam


@needs_pyopal
def test_homology_pairs_find_families_not_strangers():
    proteins, _, fam = family_tables()
    pairs = homology.homology_pairs(dict(zip(proteins["protein_id"], proteins["sequence"])))
    linked = {(a, b) for a, b, *_ in pairs}
    # every founder-member pair (identity ~55-60%, full coverage) is found ...
    for f in range(12):
        for k in (1, 2):
            assert (f"F{f}_0", f"F{f}_{k}") in linked
    # ... and no pair of unrelated proteins
    assert all(fam[a] is not None and fam[a] == fam[b] for a, b in linked)
    for _, _, ident, cov in pairs:
        assert ident >= 0.3 and cov >= 0.8


@needs_pyopal
def test_homology_split_keeps_families_together():
    proteins, images, fam = family_tables()
    split, rep = splits.split_proteins(proteins, images, LABELS,
                                       {"method": "homology", "val_fraction": 0.15, "test_fraction": 0.2}, seed=3)
    side = dict(zip(proteins["protein_id"], split))
    for f in range(12):
        assert len({side[f"F{f}_{k}"] for k in range(3)}) == 1  # a family never straddles two sides
    assert set(split) == {"train", "val", "test"}
    assert rep["method"] == "homology" and rep["identity"] == 0.3 and rep["clusters"] == 12 + 24
    assert "pyopal" in rep["aligner"]
    # the check itself catches a family split on purpose
    bad = proteins.assign(split=split.where(proteins["protein_id"] != "F0_1", "test" if side["F0_0"] != "test" else "train"))
    with pytest.raises(splits.SplitLeakError, match="homologous"):
        splits.check_homology_disjoint(bad, homology.homology_pairs(dict(zip(proteins["protein_id"][:3], proteins["sequence"][:3]))))


@needs_pyopal
@pytest.mark.skipif(not REFERENCE.exists(), reason="../shared/reference not found")
def test_homology_on_the_real_test_proteins():
    """Of the paper's 54 test proteins, GATAD2A and GATAD2B are homologues (~53% identity)."""
    ref = pd.read_csv(REFERENCE)
    seqs = dict(zip(ref["File Name"].str.split("-").str[0], ref["Sequence"]))
    pairs = homology.homology_pairs(seqs)
    assert [(a, b) for a, b, *_ in pairs] == [("ENSG00000143614", "ENSG00000167491")]
    assert 0.5 < pairs[0][2] < 0.6 and pairs[0][3] > 0.95


def test_homology_without_the_aligner_is_one_clear_error(monkeypatch):
    proteins, images, _ = family_tables(n_families=2)
    monkeypatch.setitem(sys.modules, "pyopal", None)  # as if not installed
    with pytest.raises(homology.MissingToolError) as err:
        splits.split_proteins(proteins, images, LABELS, {"method": "homology", "val_fraction": 0.15,
                                                         "test_fraction": 0.2}, seed=0)
    assert isinstance(err.value, UserError)
    msg = str(err.value)
    assert "pyopal" in msg and "pip install" in msg and "\n" not in msg


def test_benchmark_protocol_keeps_the_benchmark_test_set():
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


def test_unknown_method_is_a_user_error():
    proteins, images, _ = family_tables(n_families=2)
    with pytest.raises(UserError, match="split.method must be one of"):
        splits.split_proteins(proteins, images, LABELS, {"method": "random", "val_fraction": 0.1,
                                                         "test_fraction": 0.2}, seed=0)
