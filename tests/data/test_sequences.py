"""Sequences: validation names the bad one and where it is, the ProtT5 convention, hashes, FASTA."""
import pytest

from proloc_lib.data.sequences import (
    InvalidSequenceError,
    clean_sequence,
    prott5_format,
    read_fasta,
    sequence_hash,
)


@pytest.mark.parametrize("bad,msg", [("", "empty"), ("   ", "empty"), (None, "missing"),
                                      ("MKT1L", "non-amino-acid"), ("ACGT-N", "non-amino-acid")])
def test_bad_sequences_are_rejected_with_location(bad, msg):
    with pytest.raises(InvalidSequenceError, match=msg) as err:
        clean_sequence(bad, where="protein P1")
    assert "protein P1" in str(err.value)


def test_prott5_convention_and_hash():
    assert clean_sequence(" mkt\nlu* ") == "MKTLU"
    assert prott5_format("MKUZOB") == "M K X X X X"
    assert sequence_hash("MKT") == sequence_hash("MKT") != sequence_hash("MKS")


def test_read_fasta(tmp_path):
    f = tmp_path / "x.fasta"
    f.write_text(">P1 desc\nMKT\nLLV\n>P2\nACD\n")
    assert read_fasta(f) == {"P1": "MKTLLV", "P2": "ACD"}
    f.write_text(">P1\nMK1\n")
    with pytest.raises(InvalidSequenceError, match="P1"):
        read_fasta(f)
