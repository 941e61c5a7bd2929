"""Sequence homology between proteins: global identities, linked pairs and their clusters.

The criterion is the one DeepLoc 2.0 partitioned by (GraphPart, ``needle`` mode with its
defaults): a Needleman-Wunsch alignment as EMBOSS ``needle`` makes it (EBLOSUM62, gap open 10,
gap extend 0.5, end gaps free) and identity = identical columns / alignment length, end gaps
included (needle's ``Identity``, GraphPart's ``--denominator full``). Two proteins are linked
when that identity reaches the threshold (default 0.3). Unrelated proteins align near 0.2
under it, so a 30% threshold means what it says.

The aligner is parasail (PyPI, SIMD, in process): semi-global mode (``sg``: free end gaps on
both sequences, needle's ``-endweight`` off) with BLOSUM62 and every score doubled, so gap open
20 / extend 1 are needle's 10 / 0.5 in whole numbers (a gap of n columns costs open +
(n - 1) x extend in both). Where several alignments share the best score, parasail and needle
may pick different ones; the identity can then differ by a column or two.
"""

from __future__ import annotations

import functools
import re
from concurrent.futures import ThreadPoolExecutor

import pandas as pd

from proloc_lib.core.errors import UserError

# needle's defaults as GraphPart passes them, doubled to whole numbers (see the module text)
NEEDLE = {"matrix": "EBLOSUM62", "gapopen": 10, "gapextend": 0.5, "endweight": False}
SCALE = 2
GAP_OPEN, GAP_EXTEND = int(NEEDLE["gapopen"] * SCALE), int(NEEDLE["gapextend"] * SCALE)
DEFAULT_IDENTITY = 0.3
_CIGAR = re.compile(r"(\d+)([=XIDM])")


class MissingToolError(UserError, ImportError):
    """An optional tool a protocol needs is not installed (one line: what and how to install)."""


def _parasail():
    try:
        import parasail
    except ImportError:
        raise MissingToolError("homology needs the aligner parasail, which is not installed: pip install "
                               "parasail (a dependency of proloc-ihs: pip install -e .)") from None
    return parasail


@functools.lru_cache(maxsize=1)
def _matrix():
    """BLOSUM62 with every score times ``SCALE`` (parasail takes whole-number gap penalties)."""
    parasail = _parasail()
    m = parasail.blosum62.copy()
    base = parasail.blosum62.matrix
    for i in range(base.shape[0]):
        for j in range(base.shape[1]):
            m.set_value(i, j, int(base[i, j]) * SCALE)
    return m


def aligner_description() -> str:
    """What the identities come from, for reports and data cards."""
    parasail = _parasail()
    return (f"parasail {parasail.__version__} semi-global alignment = EMBOSS needle defaults (EBLOSUM62, gap open "
            f"{NEEDLE['gapopen']}, extend {NEEDLE['gapextend']}, end gaps free); identity = identical columns / "
            "alignment length with end gaps (needle's Identity; GraphPart --denominator full)")


def global_identity(a: str, b: str) -> tuple[float, int, int]:
    """(identity, identical columns, alignment length) of the needle-style global alignment of a and b.

    The length counts every column, end gaps included: len(a) + len(b) - aligned pairs.
    """
    parasail = _parasail()
    if not a or not b:
        return 0.0, 0, len(a) + len(b)
    r = parasail.sg_trace_scan_sat(a, b, GAP_OPEN, GAP_EXTEND, _matrix())
    cigar = r.cigar.decode
    ops = _CIGAR.findall(cigar.decode() if isinstance(cigar, bytes) else cigar)
    matches = sum(int(n) for n, op in ops if op == "=")
    pairs = sum(int(n) for n, op in ops if op in "=XM")
    length = len(a) + len(b) - pairs
    return matches / length, matches, length


def could_reach(len_a: int, len_b: int, identity: float) -> bool:
    """Whether two lengths allow ``identity`` at all: identical columns <= the shorter length and the
    alignment is at least as long as the longer one, so identity <= shorter / longer. Exact, not a guess."""
    return min(len_a, len_b) >= identity * max(len_a, len_b)


def _workers(threads: int | None) -> int:
    if threads:
        return max(1, int(threads))
    import os
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def homology_pairs(sequences: dict, *, identity: float = DEFAULT_IDENTITY, threads: int | None = None
                   ) -> list[tuple[str, str, float]]:
    """Every pair of ids whose global identity (``global_identity``) is at least ``identity``:
    (a, b, identity), all against all. Identical sequences always pair. Pairs whose lengths rule
    the threshold out (``could_reach``) are not aligned; nothing else is skipped. parasail
    releases the GIL, so ``threads`` (default: the usable CPUs) align rows in parallel."""
    _parasail()   # one clear error before any work when the aligner is missing
    ids = list(sequences)
    seqs = [str(sequences[i]) for i in ids]

    def row(i: int) -> list[tuple[str, str, float]]:
        out = []
        for j in range(i + 1, len(seqs)):
            if seqs[i] == seqs[j]:
                out.append((ids[i], ids[j], 1.0))
            elif could_reach(len(seqs[i]), len(seqs[j]), identity):
                ident = global_identity(seqs[i], seqs[j])[0]
                if ident >= identity:
                    out.append((ids[i], ids[j], round(ident, 4)))
        return out

    with ThreadPoolExecutor(_workers(threads)) as pool:
        return [p for part in pool.map(row, range(len(seqs))) for p in part]


def nearest_identity(queries: dict, targets: dict, *, threads: int | None = None) -> pd.DataFrame:
    """For each query, the target of highest global identity: columns ``query``, ``target``, ``identity``.

    Every query-target pair is aligned (no bound): the figure a reader of a split wants, e.g. how
    close each test protein's nearest training protein is."""
    _parasail()
    t_ids = list(targets)
    t_seqs = [str(targets[t]) for t in t_ids]

    def best(q: str) -> dict:
        seq = str(queries[q])
        top = (None, -1.0)
        for t, s in zip(t_ids, t_seqs):
            ident = 1.0 if s == seq else global_identity(seq, s)[0]
            if ident > top[1]:
                top = (t, ident)
        return {"query": q, "target": top[0], "identity": round(max(top[1], 0.0), 4)}

    with ThreadPoolExecutor(_workers(threads)) as pool:
        rows = list(pool.map(best, list(queries)))
    return pd.DataFrame(rows, columns=["query", "target", "identity"])


def homology_groups(proteins: pd.DataFrame, *, identity: float = DEFAULT_IDENTITY,
                    pairs: list | None = None) -> tuple[pd.Series, list]:
    """Cluster id per protein row (single linkage over ``homology_pairs``), and the pairs."""
    seq_of = dict(zip(proteins["protein_id"], proteins["sequence"]))
    if pairs is None:
        pairs = homology_pairs(seq_of, identity=identity)
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
