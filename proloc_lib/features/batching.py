"""Batches of variable-length sequences: length buckets under a token budget, padding with a mask."""

from __future__ import annotations

import torch


# -- length bucketing (the one implementation) ---------------------------------------------------
def length_buckets(lengths, token_budget: int | None = None, max_batch: int = 256, *, rng=None,
                   jitter: float = 0.0, shuffle: bool = False) -> list[list]:
    """Batches of items of similar length, so padding each batch to its own longest wastes little.

    ``lengths``: ``{key: length}`` (batches of keys) or a sequence / 1-d array of lengths
    (batches of integer indices). Items are sorted by length (ties by key or index) and a batch
    is closed when it holds ``max_batch`` items or when its padded size, longest x count, would
    pass ``token_budget`` (None: no budget). A single item longer than the budget gets a batch
    of its own. ``jitter`` > 0 (needs ``rng``, a numpy Generator) adds uniform noise of up to
    ``jitter`` x the longest length to the sort keys, so batches differ between epochs;
    ``shuffle`` shuffles the batch order with ``rng``. Every item appears in exactly one batch.

    Training: ``length_buckets(lengths, batch_tokens, batch_size, rng=rng, jitter=0.1,
    shuffle=True)``; embedding: ``length_buckets({key: n_residues}, token_budget)``.
    """
    import numpy as np

    if isinstance(lengths, dict):
        keys = list(lengths)
        lens = np.asarray([int(lengths[k]) for k in keys], dtype=np.int64)
        order = sorted(range(len(keys)), key=lambda i: (lens[i], keys[i]))
    else:
        keys = None
        lens = np.asarray(lengths, dtype=np.int64).reshape(-1)
        order = list(np.argsort(lens, kind="stable"))
    if jitter:
        if rng is None:
            raise ValueError("length_buckets: jitter needs rng (a numpy Generator)")
        noisy = lens + rng.uniform(0, jitter * max(1, int(lens.max()) if len(lens) else 1), size=len(lens))
        order = list(np.argsort(noisy))
    batches, cur, longest = [], [], 0
    for i in order:
        grown = max(longest, int(lens[i]))
        if cur and (len(cur) >= max_batch or (token_budget and grown * (len(cur) + 1) > token_budget)):
            batches.append(cur)
            cur, grown = [], int(lens[i])
        cur.append(keys[i] if keys is not None else int(i))
        longest = grown
    if cur:
        batches.append(cur)
    if shuffle:
        if rng is None:
            raise ValueError("length_buckets: shuffle needs rng (a numpy Generator)")
        rng.shuffle(batches)
    return batches


# -- reading for training ----------------------------------------------------------------------
def pad_batch(tensors: list[torch.Tensor], pad_to: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack variable-length (L_i, D) tensors to (B, Lmax, D) with a bool mask (True = real).

    ``pad_to`` pads further, to a fixed length (the published code's global padding)."""
    lengths = torch.tensor([t.shape[0] for t in tensors])
    width = max(int(lengths.max()), pad_to or 0)
    out = torch.zeros(len(tensors), width, tensors[0].shape[-1], dtype=tensors[0].dtype)
    for i, t in enumerate(tensors):
        out[i, : t.shape[0]] = t
    mask = torch.arange(out.shape[1])[None, :] < lengths[:, None]
    return out, mask
