"""Training samples (one per image, joined to its protein's sequence), batches (shuffled,
length-bucketed, padded) and device-resident features."""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from functools import partial

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from proloc_lib.core.runtime import torch_threads
from proloc_lib.features.batching import pad_batch
from proloc_lib.features.store import STORE_DTYPE, EmbeddingStore
from proloc_lib.training.settings import TrainConfig

IMAGE_LABEL_PREFIX = "image_label:"  # the image row's own label columns, carried next to the protein's


def image_samples(images: pd.DataFrame, proteins: pd.DataFrame, labels: list[str], split: str | None = None):
    """One row per image with its protein's sequence key, split and labels (joined by id).

    When ``images`` has the label columns (images.parquet: the image row's own labels), they come
    along as ``image_label:<label>`` columns, the targets of ``targets="image"`` (the published loop).
    """
    for col in ("protein_id", "seq_hash", "split", *labels):
        if col not in proteins.columns:
            raise KeyError(f"protein table lacks column '{col}'")
    own = [lab for lab in labels if lab in images.columns]
    img_cols = ["image_id", "protein_id"] + (own if len(own) == len(labels) else [])
    img = images[img_cols].rename(columns={lab: IMAGE_LABEL_PREFIX + lab for lab in own})
    img = img.merge(proteins[["protein_id", "seq_hash", "split", *labels]], on="protein_id", how="inner",
                    validate="many_to_one")
    if split is not None:
        img = img[img["split"] == split]
    return img.reset_index(drop=True)


class FusionDataset(Dataset):
    """Reads tokens lazily from the stores; each unique sequence is loaded once per store object
    (``EmbeddingStore.rows``: datasets over one store share the copy).

    ``end_token``: the sequence rows it gives, the residues ("drop") or the residues and the
    ``</s>`` row last ("keep", the published input; needs a store with end rows).
    :meth:`for_config` gives the dataset of a configuration's choice. ``y`` holds the protein's
    labels (``targets="protein"``), ``y_image`` the image row's own labels when the samples carry
    them (``targets="image"``), else None.
    """

    def __init__(self, samples: pd.DataFrame, labels: list[str], seq_store: EmbeddingStore,
                 img_store: EmbeddingStore, *, end_token: str = "drop"):
        if end_token not in ("drop", "keep"):
            raise ValueError(f"end_token must be 'drop' or 'keep', got {end_token!r}")
        self.samples = samples.reset_index(drop=True)
        self.labels = labels
        self.end_token = end_token
        self.y = torch.tensor(self.samples[labels].to_numpy(np.float32))
        img_cols = [IMAGE_LABEL_PREFIX + lab for lab in labels]
        self.y_image = (torch.tensor(self.samples[img_cols].to_numpy(np.float32))
                        if all(c in self.samples.columns for c in img_cols) else None)
        self.seq_store, self.img_store = seq_store, img_store
        missing_seq = set(self.samples["seq_hash"]) - seq_store.keys()
        missing_img = set(self.samples["image_id"]) - img_store.keys()
        if missing_seq or missing_img:
            raise KeyError(f"{len(missing_seq)} sequences and {len(missing_img)} images of this split are not in "
                           f"the embedding stores (failed or not extracted; see the stores' failures.json)")
        self._views = {end_token: self}
        self.seq_lengths = np.array([self._seq(h).shape[0] for h in self.samples["seq_hash"]], dtype=np.int64)

    def subset(self, rows) -> "FusionDataset":
        """The same stores, only the given sample rows (labels come along)."""
        return FusionDataset(self.samples.loc[sorted(rows)], self.labels, self.seq_store, self.img_store,
                             end_token=self.end_token)

    def for_config(self, cfg: TrainConfig) -> "FusionDataset":
        """This dataset with ``cfg.end_token``'s sequence rows: itself, or one view per choice, made
        once (the same object every call, so runs of one configuration share it)."""
        if cfg.end_token not in self._views:
            view = FusionDataset(self.samples, self.labels, self.seq_store, self.img_store, end_token=cfg.end_token)
            view._views = self._views
            self._views[cfg.end_token] = view
        return self._views[cfg.end_token]

    def targets(self, kind: str = "protein") -> torch.Tensor:
        """The training targets: the protein's label union, or the image row's own label columns."""
        if kind == "protein":
            return self.y
        if self.y_image is None:  # e.g. data whose images.parquet has no label columns: say so, use the protein's
            if not getattr(self, "_warned", False):
                self._warned = True
                warnings.warn("targets='image': these samples carry no image-level label columns (images.parquet "
                              f"without {self.labels}); training on the protein's labels instead", stacklevel=2)
            return self.y
        return self.y_image

    def _seq(self, h) -> torch.Tensor:
        """The float32 rows of sequence ``h`` this dataset gives (the store's shared copy)."""
        return self.seq_store.rows(h, end_row=self.end_token == "keep")

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        row = self.samples.iloc[i]
        return self.img_store.get(row["image_id"]).float(), self._seq(row["seq_hash"]), self.y[i]


def collate(batch, pad_to: int | None = None):
    imgs, seqs, ys = zip(*batch)
    seq, mask = pad_batch(list(seqs), pad_to)
    return torch.stack(imgs), seq, mask, torch.stack(ys)


def bucketed_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator,
                     batch_tokens: int | None = None) -> list[list[int]]:
    """Batches of similar sequence length (little padding), in shuffled order.

    A batch closes at ``batch_size`` samples or when its padded size (longest x count) would
    pass ``batch_tokens``, so long sequences travel in small batches and short ones in full ones.
    (Not ``embeddings.length_buckets``: that one is deterministic by key; training needs a seeded
    shuffle of bucket membership and order every epoch.)
    """
    noisy = lengths + rng.uniform(0, 0.1 * max(1, lengths.max()), size=len(lengths))
    batches, cur, longest = [], [], 0
    for i in np.argsort(noisy):
        grown = max(longest, int(lengths[i]))
        if cur and (len(cur) >= batch_size or (batch_tokens and grown * (len(cur) + 1) > batch_tokens)):
            batches.append(cur)
            cur, grown = [], int(lengths[i])
        cur.append(int(i))
        longest = grown
    if cur:
        batches.append(cur)
    rng.shuffle(batches)
    return batches


def row_lengths(residues: np.ndarray, cfg: TrainConfig) -> np.ndarray:
    """The sequence rows ``cfg`` sees for sequences of ``residues`` residues (for plans made from
    lengths alone): one more each under ``end_token="keep"`` (the ``</s>`` row)."""
    return np.asarray(residues) + (1 if cfg.end_token == "keep" else 0)


def pad_length(cfg: TrainConfig, ds: FusionDataset, *, all_splits=()) -> int | None:
    """The fixed sequence width of ``ds``'s batches under ``cfg.padding`` (None: each batch its own longest).

    ``"split"`` (the published code, per file): the longest of ``ds`` itself; ``"global"``: the
    longest over ``ds`` and ``all_splits`` (pass every split: train, val and test). Lengths as
    ``cfg.end_token`` gives the rows: with "keep", the longest ``L + 1`` (the published file's width).
    """
    if cfg.padding == "batch":
        return None
    if cfg.padding == "split":
        return int(ds.for_config(cfg).seq_lengths.max())
    return max(int(d.for_config(cfg).seq_lengths.max()) for d in (ds, *all_splits))


def epoch_batches(lengths: np.ndarray, cfg: TrainConfig, *, shuffle: bool, seed: int,
                  pad_to: int | None = None) -> list[tuple[np.ndarray, int]]:
    """One epoch's batches as (row indices, padded width): the same rows, order and widths as
    :func:`make_loader` with the same seed (a test checks this), computed from lengths alone."""
    n = len(lengths)
    if cfg.bucket_batches:
        idx = bucketed_batches(lengths, cfg.batch_size, np.random.default_rng(seed), cfg.batch_tokens)
    else:
        order = np.arange(n)
        if shuffle:  # as DataLoader(shuffle=True, generator=seeded) draws it: a base seed, then the permutation
            gen = torch.Generator().manual_seed(seed)
            torch.empty((), dtype=torch.int64).random_(generator=gen)
            order = torch.randperm(n, generator=gen).numpy()
        idx = [order[i:i + cfg.batch_size] for i in range(0, n, cfg.batch_size)]
    out = []
    for b in idx:
        b = np.asarray(b, dtype=np.int64)
        width = max(int(lengths[b].max()), pad_to or 0)
        if cfg.pad_multiple > 1:  # a few fixed widths: kernels and compiled graphs are reused
            width = -(-width // cfg.pad_multiple) * cfg.pad_multiple
        out.append((b, width))
    return out


def make_loader(ds: FusionDataset, cfg: TrainConfig, shuffle: bool, seed: int, *,
                pad_to: int | None = None) -> DataLoader:
    """The store-reading loader (per-sample reads, CPU padding): the reference the device-resident
    path is tested against, and the fallback when features do not fit in device memory."""
    ds = ds.for_config(cfg)
    if pad_to is None and cfg.padding != "batch":
        pad_to = int(ds.seq_lengths.max())
    fn = partial(collate, pad_to=pad_to)
    if cfg.bucket_batches:
        rng = np.random.default_rng(seed)
        return DataLoader(ds, batch_sampler=bucketed_batches(ds.seq_lengths, cfg.batch_size, rng, cfg.batch_tokens),
                          collate_fn=fn)
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=cfg.batch_size, shuffle=shuffle, collate_fn=fn, generator=gen)


class ResidentFeatures:
    """A split's features loaded once into device memory; batches are gathered there by index.

    Image tokens are one [N, T, D] tensor; sequences one packed [sum L + 1, D] buffer of the unique
    sequences with offsets, its last row zeros: padded positions gather that row, so a batch is one
    ``index_select`` and no masking pass. Kept as float16 (the store's dtype) on CUDA and float32 on
    the CPU (no conversion pass per batch). Batches come out as ``out_dtype`` (float32 by default,
    bit-identical to the store-reading loader's; float16 under CUDA autocast, which casts it to
    the same bf16/fp16 values as it would the float32 copy).
    """

    def __init__(self, ds: FusionDataset, device: str = "cpu", *, targets: str = "protein",
                 out_dtype: torch.dtype = torch.float32):
        self.device = torch.device(device)
        keep = STORE_DTYPE if self.device.type == "cuda" else torch.float32
        self.out_dtype = out_dtype
        keys = list(dict.fromkeys(ds.samples["seq_hash"]))
        pos = {k: i for i, k in enumerate(keys)}
        seqs = [ds._seq(k) for k in keys]   # the dataset's rows (with </s> under end_token "keep")
        lengths = torch.tensor([s.shape[0] for s in seqs], dtype=torch.int64)
        offsets = torch.zeros(len(keys), dtype=torch.int64)
        offsets[1:] = torch.cumsum(lengths, 0)[:-1]
        # packed in the kept dtype, one sequence at a time (no second float32 copy of them all);
        # float16 -> float32 (the shared copy) -> float16 on CUDA gives back the stored values
        packed = torch.zeros(int(lengths.sum()) + 1, ds.seq_store.hidden_size, dtype=keep)
        for s, o in zip(seqs, offsets.tolist()):
            packed[o:o + s.shape[0]] = s
        self.seq = packed.to(self.device)
        self.zero_row = int(self.seq.shape[0] - 1)
        self.seq_len, self.seq_off = lengths.to(self.device), offsets.to(self.device)
        self.sample_seq = torch.tensor([pos[k] for k in ds.samples["seq_hash"]], dtype=torch.int64, device=self.device)
        self.img = torch.stack([ds.img_store.get(k) for k in ds.samples["image_id"]]).to(self.device, keep)
        self.y = ds.targets(targets).to(self.device)
        self.n = len(ds)

    @staticmethod
    def nbytes_needed(ds: FusionDataset) -> int:
        """Bytes the features of ``ds`` take in device memory (float16), before loading them."""
        seq_res = sum(int(ds.seq_lengths[i]) for i in np.unique(ds.samples["seq_hash"], return_index=True)[1])
        img = ds.img_store.get(ds.samples["image_id"].iloc[0]) if len(ds) else torch.zeros(0, 0)
        return 2 * (seq_res * ds.seq_store.hidden_size + len(ds) * img.numel())

    def batch(self, idx: torch.Tensor, width: int, *, reuse: bool = False):
        """(img, seq, mask, y) for rows ``idx`` (a device tensor), sequences padded to ``width``.

        ``reuse``: gather into buffers kept from the previous call (the previous batch is
        overwritten): on the CPU a fresh 100 MB tensor per batch costs more in page faults than the
        copy itself. Only for a loop that is done with one batch before it asks for the next.
        """
        s = self.sample_seq[idx]
        ar = torch.arange(width, device=self.device)
        mask = ar[None, :] < self.seq_len[s][:, None]
        pos = torch.where(mask, self.seq_off[s][:, None] + ar[None, :], self.zero_row).reshape(-1)
        if reuse and self.seq.dtype == self.out_dtype:
            # a row gather is memory-bound: one CPU thread, measured 6x faster here
            with torch_threads(1) if self.device.type == "cpu" else contextlib.nullcontext():
                seq = torch.index_select(self.seq, 0, pos, out=self._buffer("seq", pos.numel(), self.seq.shape[1]))
                img = torch.index_select(self.img, 0, idx, out=self._buffer("img", len(idx), *self.img.shape[1:]))
        else:
            seq = self.seq.index_select(0, pos).to(self.out_dtype)
            img = self.img.index_select(0, idx).to(self.out_dtype)
        return img, seq.view(len(idx), width, -1), mask, self.y[idx]

    def _buffer(self, name: str, rows: int, *shape):
        """A [rows, *shape] view of one flat buffer per name that only grows."""
        need = rows * math.prod(shape)
        buf = getattr(self, "_buf_" + name, None)
        if buf is None or buf.numel() < need:
            buf = torch.empty(need, dtype=self.out_dtype, device=self.device)
            setattr(self, "_buf_" + name, buf)
        return buf[:need].view(rows, *shape)


def _fits_on_device(nbytes: int, device: str) -> bool:
    """Half the free device memory (CUDA) or of the available RAM (CPU) for the features."""
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return nbytes < 0.5 * free
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return True
    return nbytes < 0.5 * avail


class _StoreBatches:
    """Fallback when a split does not fit: the same batches, read from the stores per sample."""

    def __init__(self, ds: FusionDataset, device: str, *, targets: str = "protein"):
        self.ds, self.device, self.y = ds, torch.device(device), ds.targets(targets)

    def batch(self, idx: torch.Tensor, width: int, *, reuse: bool = False):  # reuse: nothing to reuse here
        rows = idx.tolist()
        imgs, seqs, _ = zip(*(self.ds[i] for i in rows))
        seq, mask = pad_batch(list(seqs), width)
        return (torch.stack(imgs).to(self.device), seq.to(self.device), mask.to(self.device),
                self.y[rows].to(self.device))


def features_on_device(ds: FusionDataset, device: str, *, targets: str = "protein", resident="auto",
                       out_dtype: torch.dtype = torch.float32):
    """Device-resident features when they fit (``resident``: "auto", True, False), else store reads."""
    need = ResidentFeatures.nbytes_needed(ds) * (1 if torch.device(device).type == "cuda" else 2)
    use = resident is True or (resident == "auto" and _fits_on_device(need, device))
    if use:
        return ResidentFeatures(ds, device, targets=targets, out_dtype=out_dtype)
    return _StoreBatches(ds, device, targets=targets)


def inference_batches(ds: FusionDataset, batch_size: int = 64, pad_to: int | None = None):
    """(img, seq, mask) batches in the dataset's row order (``pad_to``: the authors' global padding)."""
    for img, seq, mask, _ in DataLoader(ds, batch_size=batch_size, shuffle=False,
                                        collate_fn=partial(collate, pad_to=pad_to)):
        yield img, seq, mask
