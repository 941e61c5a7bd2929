"""Sequence features: each unique sequence embedded once (long ones truncated or in windows) into a store."""

from __future__ import annotations

from pathlib import Path

import torch

from proloc_lib.core.progress import bar as progress_bar
from proloc_lib.data.sequences import InvalidSequenceError, clean_sequence
from proloc_lib.features.batching import length_buckets
from proloc_lib.features.store import (
    END_ROWS,
    EmbeddingStore,
    _repair_report,
    parse_shard,
    select_shard,
)


# -- sequence extraction -----------------------------------------------------------------------
def _windows(n: int, size: int) -> list[tuple[int, int]]:
    """Overlapping windows (half overlap) covering 0..n."""
    stride = max(1, size // 2)
    starts = list(range(0, max(1, n - size) + 1, stride))
    if starts[-1] + size < n:
        starts.append(n - size)
    return [(s, min(n, s + size)) for s in starts]


def embed_sequence_long(encoder, seq: str, max_residues: int, *, end_token: bool = False) -> torch.Tensor:
    """Windows of ``max_residues`` with half overlap; per-residue outputs averaged where they overlap.
    ``end_token``: the ``</s>`` row of the last window (the one that ends the sequence) appended."""
    out = torch.zeros(len(seq), encoder.hidden_size)
    count = torch.zeros(len(seq), 1)
    end = None
    for a, b in _windows(len(seq), max_residues):
        rows = encoder.embed_batch([seq[a:b]], end_token=end_token)[0]
        out[a:b] += rows[:b - a]
        count[a:b] += 1
        if end_token and b == len(seq):
            end = rows[b - a:]
    out = out / count
    return torch.cat([out, end]) if end_token else out


def extract_sequences(sequences: dict[str, str], encoder, store_dir: str | Path, token_budget: int = 8000,
                      max_residues: int = 1000, long_policy: str = "truncate", shard_size: int = 256,
                      shard: str | None = None, on_stale: str = "error", progress: bool = True, *,
                      verify: str = "quick") -> dict:
    """Embed each unique sequence once ({key: sequence}); resumable; returns a report.

    The store keeps each sequence's ``</s>`` row beside its residue rows (``store.END_ROWS``), so
    a configuration can see the published input (``TrainConfig.end_token``).

    ``verify='full'`` re-hashes every shard first; bad shards are set aside, listed under
    ``repaired`` and their items embedded again."""
    if long_policy not in ("truncate", "windows"):
        raise ValueError(f"long_policy must be 'truncate' or 'windows', got '{long_policy}'")
    share = parse_shard(shard)
    fp = dict(encoder.fingerprint(), max_residues=max_residues, long_policy=long_policy)
    store = EmbeddingStore.open(store_dir, fp, encoder.hidden_size, "sequence", on_stale, verify=verify,
                                extraction={END_ROWS: True})
    todo = store.missing(select_shard(sequences, share))
    failures, clean = [], {}
    for k in todo:
        try:
            clean[k] = clean_sequence(sequences[k], where=f"sequence {k}")
        except InvalidSequenceError as exc:
            failures.append({"key": k, "error": str(exc)})
    long_keys = {k for k, s in clean.items() if len(s) > max_residues}
    report = {"requested": len(sequences), "already_stored": len(sequences) - len(todo) if shard is None else None,
              "embedded": 0, "long_sequences": len(long_keys), "long_policy": long_policy, "failures": failures,
              "repaired": _repair_report(store)}
    tag = "all" if shard is None else "s{}of{}".format(*share)
    buffer: dict[str, torch.Tensor] = {}
    ends: dict[str, torch.Tensor] = {}

    def keep(k: str, rows: torch.Tensor) -> None:   # residues to the item, the </s> row apart
        buffer[k], ends[k] = rows[:-1], rows[-1]

    lengths = {k: min(len(s), max_residues) for k, s in clean.items()}
    batches = length_buckets(lengths, token_budget)
    bar = progress_bar(total=len(clean), desc="ProtT5 sequences", unit="seq", disable=not progress)
    for batch in batches:
        short = [k for k in batch if k not in long_keys or long_policy == "truncate"]
        if short:
            outs = encoder.embed_batch([clean[k][:max_residues] for k in short], end_token=True)
            for k, rows in zip(short, outs):
                keep(k, rows)
        for k in batch:
            if k in long_keys and long_policy == "windows":
                keep(k, embed_sequence_long(encoder, clean[k], max_residues, end_token=True))
        bar.update(len(batch))
        if len(buffer) >= shard_size:
            store.commit(buffer, tag, end_rows=ends)
            report["embedded"] += len(buffer)
            buffer.clear()
            ends.clear()
    store.commit(buffer, tag, end_rows=ends)
    report["embedded"] += len(buffer)
    bar.close()
    store.record_failures(failures)
    return report
