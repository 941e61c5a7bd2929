"""Protein sequences: validation, hashing and the ProtT5 preprocessing convention."""

from __future__ import annotations

import hashlib
import re

# The 20 standard residues plus the ambiguous/rare codes UniProt uses.
AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
_ALLOWED = set(AMINO_ACIDS + "XUZOB")
_RARE = re.compile(r"[UZOB]")


class InvalidSequenceError(ValueError):
    """An empty sequence, or one with characters that are not amino-acid codes."""


def clean_sequence(seq: object, where: str = "") -> str:
    """Upper-case, whitespace-free sequence; raises naming ``where`` when it is not protein."""
    at = f" at {where}" if where else ""
    if seq is None or (isinstance(seq, float) and seq != seq):
        raise InvalidSequenceError(f"missing sequence{at}")
    s = "".join(str(seq).split()).upper()
    if s.endswith("*"):  # stop codon marker from some FASTA exports
        s = s[:-1]
    if not s:
        raise InvalidSequenceError(f"empty sequence{at}")
    bad = sorted(set(s) - _ALLOWED)
    if bad:
        raise InvalidSequenceError(f"non-amino-acid characters {bad} in sequence{at}: {s[:30]}...")
    return s


def sequence_hash(seq: str) -> str:
    """Stable key for a sequence (identical sequences share one embedding and one split side)."""
    return hashlib.sha256(seq.encode("ascii")).hexdigest()[:32]


def prott5_format(seq: str) -> str:
    """ProtTrans convention: rare residues U/Z/O/B become X, residues space-separated."""
    return " ".join(_RARE.sub("X", seq))


def read_fasta(path) -> dict[str, str]:
    """Read a FASTA file into {id: sequence}; the id is the first word of the header."""
    records: dict[str, list[str]] = {}
    current = None
    with open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            if line.startswith(">"):
                current = line[1:].split()[0] if len(line) > 1 else f"record{len(records) + 1}"
                if current in records:
                    raise ValueError(f"{path}:{lineno}: duplicate FASTA id '{current}'")
                records[current] = []
            elif current is None:
                raise ValueError(f"{path}:{lineno}: sequence line before any '>' header")
            else:
                records[current].append(line)
    if not records:
        raise ValueError(f"{path}: no FASTA records")
    return {k: clean_sequence("".join(v), where=f"{path} record '{k}'") for k, v in records.items()}
