"""Sequence homology between proteins: aligned pairs and their clusters, for homology-aware splits."""

from __future__ import annotations

import pandas as pd

from proloc_lib.core.errors import UserError


class MissingToolError(UserError, ImportError):
    """An optional tool a protocol needs is not installed (one line: what and how to install)."""


# BLAST's protein defaults (BLOSUM62, gap open 11, extend 1): pyopal's cheaper default gaps let
# local alignments weave high-identity paths through unrelated sequences
GAPS = {"gap_open": 11, "gap_extend": 1}


def _aligner():
    try:
        import pyopal
    except ImportError:
        raise MissingToolError("split.method: homology needs the aligner pyopal, which is not installed: "
                               "pip install pyopal (or the project's 'homology' extra)") from None
    return pyopal


def homology_pairs(sequences: dict, *, identity: float = 0.3, coverage: float = 0.8,
                   prefilter: float = 0.28, threads: int = 0) -> list[tuple[str, str, float, float]]:
    """Pairs of ids whose sequences are homologous: (a, b, identity, coverage).

    Smith-Waterman (BLOSUM62, gap open 11 / extend 1, pyopal's SIMD aligner): every pair is scored; pairs whose score
    reaches ``prefilter`` x the smaller self-score (unrelated pairs stay near 0.2 on real and
    random proteins) are aligned in full, and linked when the alignment's identity (identical
    columns / alignment length) is at least ``identity`` and it covers at least ``coverage`` of
    the shorter sequence (MMseqs2's ``--min-seq-id 0.3 -c 0.8`` in spirit). Identical
    sequences always pair.
    """
    pyopal = _aligner()
    ids = list(sequences)
    seqs = [str(sequences[i]) for i in ids]
    selfs = [next(iter(pyopal.align(q, [q], mode="score", algorithm="sw", threads=1, **GAPS))).score for q in seqs]
    pairs = []
    for i in range(len(seqs) - 1):
        rest = seqs[i + 1:]
        scores = pyopal.align(seqs[i], rest, mode="score", algorithm="sw", threads=threads, **GAPS)
        cand = [i + 1 + r.target_index for r in scores
                if r.score >= prefilter * min(selfs[i], selfs[i + 1 + r.target_index])]
        if not cand:
            continue
        full = list(pyopal.align(seqs[i], [seqs[j] for j in cand], mode="full", algorithm="sw", threads=threads, **GAPS))
        for r in full:
            j = cand[r.target_index]
            shorter = min(len(seqs[i]), len(seqs[j]))
            cov = min(r.query_end - r.query_start, r.target_end - r.target_start) / shorter
            ident = r.identity()
            if seqs[i] == seqs[j] or (ident >= identity and cov >= coverage):
                pairs.append((ids[i], ids[j], round(float(ident), 4), round(float(cov), 4)))
    return pairs


def homology_groups(proteins: pd.DataFrame, *, identity: float = 0.3, coverage: float = 0.8,
                    pairs: list | None = None) -> tuple[pd.Series, list]:
    """Cluster id per protein row (single linkage over ``homology_pairs``), and the pairs."""
    seq_of = dict(zip(proteins["protein_id"], proteins["sequence"]))
    if pairs is None:
        pairs = homology_pairs(seq_of, identity=identity, coverage=coverage)
    parent = {p: p for p in proteins["protein_id"]}

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b, *_ in pairs:
        if a in parent and b in parent:
            parent[find(b)] = find(a)
    roots = [find(p) for p in proteins["protein_id"]]
    codes = {r: i for i, r in enumerate(dict.fromkeys(roots))}
    return pd.Series([codes[r] for r in roots], index=proteins.index, name="group"), pairs

