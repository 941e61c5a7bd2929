"""Homology: pairs of homologous proteins are found, the homology split keeps families on one side, and
a missing aligner is one clear error. The families are the `family_tables` fixture (conftest.py).

Global (needle-style) identity: 30% means 30%. Generated families have a known true identity: a
child is its root with an exact number of positions substituted (every substitution a different
residue), so the gapless alignment holds exactly that share of identical columns. Unrelated
sequences are independent draws with Swiss-Prot composition."""
import importlib.util
import sys

import numpy as np
import pandas as pd
import pytest

from proloc_lib.core.errors import UserError
from proloc_lib.data import homology, splits
from proloc_lib.data.labels import LABELS
from proloc_lib.data.mirror import AA_FREQ, AMINO_ACIDS

has_parasail = importlib.util.find_spec("parasail") is not None
needs_parasail = pytest.mark.skipif(not has_parasail, reason="aligner parasail not installed")
P = np.asarray(AA_FREQ) / sum(AA_FREQ)


@needs_parasail
def test_homology_pairs_find_families_not_strangers(family_tables):
    proteins, _, fam = family_tables()
    pairs = homology.homology_pairs(dict(zip(proteins["protein_id"], proteins["sequence"])))
    linked = {(a, b) for a, b, *_ in pairs}
    # every founder-member pair (identity ~55-60%, full coverage) is found ...
    for f in range(12):
        for k in (1, 2):
            assert (f"F{f}_0", f"F{f}_{k}") in linked
    # ... and no pair of unrelated proteins
    assert all(fam[a] is not None and fam[a] == fam[b] for a, b in linked)
    for _, _, ident in pairs:
        assert ident >= 0.3


@needs_parasail
def test_homology_split_keeps_families_together(family_tables):
    proteins, images, fam = family_tables()
    split, rep = splits.split_proteins(proteins, images, LABELS,
                                       {"method": "homology", "val_fraction": 0.15, "test_fraction": 0.2}, seed=3)
    side = dict(zip(proteins["protein_id"], split))
    for f in range(12):
        assert len({side[f"F{f}_{k}"] for k in range(3)}) == 1  # a family never straddles two sides
    assert set(split) == {"train", "val", "test"}
    assert rep["method"] == "homology" and rep["identity"] == 0.3 and rep["clusters"] == 12 + 24
    assert "parasail" in rep["aligner"]
    # the check itself catches a family split on purpose
    bad = proteins.assign(split=split.where(proteins["protein_id"] != "F0_1",
                                            "test" if side["F0_0"] != "test" else "train"))
    with pytest.raises(splits.SplitLeakError, match="homologous"):
        splits.check_homology_disjoint(
            bad, homology.homology_pairs(dict(zip(proteins["protein_id"][:3], proteins["sequence"][:3]))))


@needs_parasail
def test_homology_on_the_real_test_proteins(reference_dir):
    """Of the paper's 54 test proteins, GATAD2A and GATAD2B are homologues (~40% global identity)."""
    ref = pd.read_csv(reference_dir / "proloc_ihs_test.csv")
    seqs = dict(zip(ref["File Name"].str.split("-").str[0], ref["Sequence"]))
    pairs = homology.homology_pairs(seqs)
    assert [(a, b) for a, b, *_ in pairs] == [("ENSG00000143614", "ENSG00000167491")]
    assert 0.35 < pairs[0][2] < 0.45


def test_homology_without_the_aligner_is_one_clear_error(monkeypatch, family_tables):
    proteins, images, _ = family_tables(n_families=2)
    monkeypatch.setitem(sys.modules, "parasail", None)  # as if not installed
    with pytest.raises(homology.MissingToolError) as err:
        splits.split_proteins(proteins, images, LABELS, {"method": "homology", "val_fraction": 0.15,
                                                         "test_fraction": 0.2}, seed=0)
    assert isinstance(err.value, UserError)
    msg = str(err.value)
    assert "parasail" in msg and "pip install" in msg and "\n" not in msg


def random_protein(rng, n: int) -> str:
    return "".join(rng.choice(list(AMINO_ACIDS), size=n, p=P))


def substituted(rng, seq: str, identity: float) -> str:
    """``seq`` with round((1 - identity) * len) positions changed: true identity exactly that share."""
    s = list(seq)
    for i in rng.choice(len(s), int(round((1 - identity) * len(s))), replace=False):
        s[i] = rng.choice([a for a in AMINO_ACIDS if a != s[i]])
    return "".join(s)


@needs_parasail
def test_identity_counts_every_column_of_the_global_alignment():
    a = "MKTAYIAKQRQISFVKSHFSRQ"
    assert homology.global_identity(a, a) == (1.0, 22, 22)
    # two residues deleted inside: 20 identical columns over 22 (the gap's columns count)
    assert homology.global_identity(a, "MKTAYIAKQISFVKSHFSRQ") == (20 / 22, 20, 22)
    # end gaps are free to open (needle's default) but their columns count: 20 of 6 + 20 + 4
    ident, matches, length = homology.global_identity("GGGGGG" + "MKTAYIAKQISFVKSHFSRQ",
                                                      "MKTAYIAKQISFVKSHFSRQ" + "WWWW")
    assert (matches, length) == (20, 30) and ident == pytest.approx(2 / 3)


@needs_parasail
def test_needles_scores_in_whole_numbers():
    """EBLOSUM62 with gap open 10 / extend 0.5: parasail gets the matrix and the gaps doubled."""
    import parasail

    m = homology._matrix()
    np.testing.assert_array_equal(m.matrix, 2 * parasail.blosum62.matrix)
    assert (homology.GAP_OPEN, homology.GAP_EXTEND) == (20, 1)
    # a 2-residue internal gap costs open + extend = 21 (needle: 10 + 0.5, doubled)
    a, b = "MKTAYIAKQRQISFVKSHFSRQ", "MKTAYIAKQISFVKSHFSRQ"
    r = parasail.sg_trace_scan_sat(a, b, homology.GAP_OPEN, homology.GAP_EXTEND, m)
    diag = sum(int(parasail.blosum62.matrix[parasail.blosum62.mapper[ord(c)], parasail.blosum62.mapper[ord(c)]])
               for c in b)
    assert r.score == 2 * diag - 21


@needs_parasail
def test_thirty_percent_means_thirty_percent():
    """Every root-child pair of true identity >= 36% is linked; no pair of true identity <= 24%
    and no pair of unrelated proteins is."""
    rng = np.random.default_rng(7)
    seqs, truth = {}, {}
    targets = [0.20, 0.22, 0.24, 0.36, 0.40, 0.45, 0.50]
    for f in range(5):
        root = random_protein(rng, int(rng.integers(150, 450)))
        seqs[f"R{f}"] = root
        for t in targets:
            seqs[f"R{f}_{t}"] = substituted(rng, root, t)
            truth[(f"R{f}", f"R{f}_{t}")] = t
    for i in range(40):
        seqs[f"U{i}"] = random_protein(rng, int(rng.integers(150, 450)))
    pairs = homology.homology_pairs(seqs, identity=0.3)
    linked = {tuple(sorted((a, b))) for a, b, _ in pairs}
    for (a, b), t in truth.items():
        if t >= 0.36:
            assert tuple(sorted((a, b))) in linked, (a, b, t)
        else:
            assert tuple(sorted((a, b))) not in linked, (a, b, t)
    # nothing links an unrelated protein, and nothing links two children of different roots
    for a, b in linked:
        assert not a.startswith("U") and not b.startswith("U")
        assert a.split("_")[0] == b.split("_")[0]
    # unrelated proteins align near 0.2 at most (the yardstick GraphPart relies on)
    unrelated = [homology.global_identity(seqs[f"U{i}"], seqs[f"U{i + 1}"])[0] for i in range(0, 40, 2)]
    assert max(unrelated) < 0.25
    for a, b, ident in pairs:
        assert ident >= 0.3


@needs_parasail
def test_length_bound_skips_only_pairs_that_cannot_reach_the_threshold():
    rng = np.random.default_rng(3)
    short, long = random_protein(rng, 100), random_protein(rng, 400)
    assert not homology.could_reach(100, 400, 0.3) and homology.could_reach(100, 330, 0.3)
    # the bound holds: identity <= shorter / longer even for a perfect fragment
    fragment = long[50:150]
    ident = homology.global_identity(fragment, long)[0]
    assert ident == pytest.approx(100 / 400) and ident <= 100 / 400
    assert homology.homology_pairs({"a": short, "b": long}) == []


@needs_parasail
def test_threads_do_not_change_the_pairs_and_identical_sequences_pair():
    rng = np.random.default_rng(5)
    root = random_protein(rng, 200)
    seqs = {"r": root, "same": root, "c": substituted(rng, root, 0.5),
            **{f"u{i}": random_protein(rng, 200) for i in range(8)}}
    one = homology.homology_pairs(seqs, threads=1)
    two = homology.homology_pairs(seqs, threads=2)
    assert one == two
    assert ("r", "same", 1.0) in one and {tuple(p[:2]) for p in one} == {("r", "same"), ("r", "c"), ("same", "c")}


@needs_parasail
def test_nearest_identity_finds_the_closest_target():
    rng = np.random.default_rng(11)
    root = random_protein(rng, 250)
    targets = {"close": substituted(rng, root, 0.6), "far": random_protein(rng, 250), "same": root}
    near = homology.nearest_identity({"q": root, "q2": substituted(rng, root, 0.5)},
                                     {k: v for k, v in targets.items() if k != "same"})
    assert list(near["query"]) == ["q", "q2"] and list(near["target"]) == ["close", "close"]
    assert near["identity"].iloc[0] == pytest.approx(homology.global_identity(root, targets["close"])[0], abs=1e-4)
    assert 0.55 < near["identity"].iloc[0] < 0.65
