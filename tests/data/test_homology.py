"""Homology: pairs of homologous proteins are found, the homology split keeps families on one side, and
a missing aligner is one clear error. The families are the `family_tables` fixture (conftest.py)."""
import importlib.util
import sys

import pandas as pd
import pytest

from proloc_lib.core.errors import UserError
from proloc_lib.data import homology, splits
from proloc_lib.data.labels import LABELS

has_pyopal = importlib.util.find_spec("pyopal") is not None
needs_pyopal = pytest.mark.skipif(not has_pyopal, reason="optional aligner pyopal not installed (homology extra)")


@needs_pyopal
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
    for _, _, ident, cov in pairs:
        assert ident >= 0.3 and cov >= 0.8


@needs_pyopal
def test_homology_split_keeps_families_together(family_tables):
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
def test_homology_on_the_real_test_proteins(reference_dir):
    """Of the paper's 54 test proteins, GATAD2A and GATAD2B are homologues (~53% identity)."""
    ref = pd.read_csv(reference_dir / "proloc_ihs_test.csv")
    seqs = dict(zip(ref["File Name"].str.split("-").str[0], ref["Sequence"]))
    pairs = homology.homology_pairs(seqs)
    assert [(a, b) for a, b, *_ in pairs] == [("ENSG00000143614", "ENSG00000167491")]
    assert 0.5 < pairs[0][2] < 0.6 and pairs[0][3] > 0.95


def test_homology_without_the_aligner_is_one_clear_error(monkeypatch, family_tables):
    proteins, images, _ = family_tables(n_families=2)
    monkeypatch.setitem(sys.modules, "pyopal", None)  # as if not installed
    with pytest.raises(homology.MissingToolError) as err:
        splits.split_proteins(proteins, images, LABELS, {"method": "homology", "val_fraction": 0.15,
                                                         "test_fraction": 0.2}, seed=0)
    assert isinstance(err.value, UserError)
    msg = str(err.value)
    assert "pyopal" in msg and "pip install" in msg and "\n" not in msg


