"""Training and inference for the fusion model on stored embeddings.

Samples are images (each paired with its protein's sequence). Model selection follows the
configuration (validation loss, or training loss for the authors' setting); the test split is
never seen here: notebook 03 scores it once, at the end.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import threading
import time
import warnings
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .config import torch_threads
from .embeddings import STORE_DTYPE, EmbeddingStore, pad_batch
from .losses import authors_loss, bce_focal_loss
from .model import FusionConfig, FusionModel, ModelSwitches
from .selection import KeepBest


@dataclass(kw_only=True)
class TrainConfig(ModelSwitches):
    """Every way the published setting differs from the corrected one is a switch here.

    The architecture switches come from ``model.ModelSwitches`` (one model schema); the fields
    below are the training protocol. Defaults are the corrected protocol; published values are
    in the comments and in ``NAMED_CONFIGS['authors']``.
    """
    optimizer: str = "adamw"         # authors: "adam"
    lr: float = 1e-4
    weight_decay: float = 0.01
    schedule: str = "warmup_cosine"  # authors: "constant"
    warmup_frac: float = 0.05
    grad_clip: float | None = 1.0    # max gradient norm; authors: None (no clipping)
    batch_size: int = 32
    bucket_batches: bool = True      # batches of similar sequence length
    batch_tokens: int | None = 16384  # with buckets: at most this many padded residues per batch
    padding: str = "batch"           # pad each batch to its own longest ("batch"); to the longest of its
                                     # split ("split": the published code, per file); of all splits ("global")
    targets: str = "protein"         # "protein": the union of the protein's labels; "image": the image
                                     # row's own label columns (the published loop)
    max_epochs: int = 30
    patience: int | None = 5         # None: no early stopping
    loss: str = "bce_focal"          # authors: "authors" (plasma-membrane-weighted)
    bce_weight: float = 1.0
    focal_weight: float = 1.0
    focal_gamma: float = 2.0
    select_on: str = "val_loss"      # authors: "train_loss"
    thresholds: str = "tuned"        # per-label, on validation; authors: "fixed" (0.5)
    amp: bool = True                 # mixed precision, on CUDA only
    images_per_protein: int | None = None  # ablation: train on at most this many images per protein
    pad_multiple: int = 1            # round each batch's padded width up to a multiple of this (fewer
                                     # distinct shapes for compiled kernels; masked models give the same output)

    CHOICES = {"optimizer": ("adam", "adamw"), "schedule": ("constant", "warmup_cosine"),
               "loss": ("bce_focal", "authors"), "select_on": ("val_loss", "train_loss"),
               "thresholds": ("fixed", "tuned"), "padding": ("batch", "split", "global"),
               "targets": ("protein", "image")}

    def __post_init__(self):
        super().__post_init__()
        for key, allowed in self.CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"training option {key}={getattr(self, key)!r}: choose one of {allowed}")
        if not isinstance(self.pad_multiple, int) or self.pad_multiple < 1:
            raise ValueError(f"training option pad_multiple={self.pad_multiple!r}: give an integer >= 1")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown training options {sorted(unknown)} (known: {sorted(known)})")
        return cls(**d)

    def hash(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


# The two named configurations. A profile's ``training.base`` (sizes, epochs) applies to both.
NAMED_CONFIGS = {
    "authors": dict(n_heads=8, n_blocks=6, share_blocks=True, apply_mask=False, dropout=0.5,
                    ff_activation="relu", residual_dropout=False, cross_residual=False, optimizer="adam",
                    lr=1e-5, weight_decay=0.0, schedule="constant", grad_clip=None, batch_size=2,
                    bucket_batches=False, padding="split", targets="image", loss="authors",
                    select_on="train_loss", patience=None, thresholds="fixed", amp=False),
    "corrected": dict(apply_mask=True, share_blocks=False, attn_dropout=0.0, ff_activation="gelu",
                      residual_dropout=True, cross_residual=True, loss="bce_focal", optimizer="adamw",
                      schedule="warmup_cosine", grad_clip=1.0, bucket_batches=True, padding="batch",
                      targets="protein", select_on="val_loss", thresholds="tuned", amp=True),
}


def make_config(name: str, base: dict | None = None, **overrides) -> TrainConfig:
    """Named configuration + the profile's base settings + explicit switches (ablations)."""
    if name not in NAMED_CONFIGS:
        raise ValueError(f"unknown training configuration '{name}' (known: {sorted(NAMED_CONFIGS)})")
    return TrainConfig.from_dict({**NAMED_CONFIGS[name], **(base or {}), **overrides})


class NaNLossError(FloatingPointError):
    pass


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
    """Reads tokens lazily from the stores; each unique sequence is loaded once.

    ``y`` holds the protein's labels (``targets="protein"``), ``y_image`` the image row's own
    labels when the samples carry them (``targets="image"``), else None.
    """

    def __init__(self, samples: pd.DataFrame, labels: list[str], seq_store: EmbeddingStore,
                 img_store: EmbeddingStore):
        self.samples = samples.reset_index(drop=True)
        self.labels = labels
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
        self._seq_cache: dict[str, torch.Tensor] = {}
        self.seq_lengths = np.array([self._seq(h).shape[0] for h in self.samples["seq_hash"]], dtype=np.int64)

    def subset(self, rows) -> "FusionDataset":
        """The same stores, only the given sample rows (labels come along)."""
        return FusionDataset(self.samples.loc[sorted(rows)], self.labels, self.seq_store, self.img_store)

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

    def _seq(self, h):
        if h not in self._seq_cache:
            self._seq_cache[h] = self.seq_store.get(h).float()
        return self._seq_cache[h]

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


def pad_length(cfg: TrainConfig, ds: FusionDataset, *, all_splits=()) -> int | None:
    """The fixed sequence width of ``ds``'s batches under ``cfg.padding`` (None: each batch its own longest).

    ``"split"`` (the published code, per file): the longest of ``ds`` itself; ``"global"``: the
    longest over ``ds`` and ``all_splits`` (pass every split: train, val and test).
    """
    if cfg.padding == "batch":
        return None
    if cfg.padding == "split":
        return int(ds.seq_lengths.max())
    return max(int(d.seq_lengths.max()) for d in (ds, *all_splits))


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
        seqs = [ds.seq_store.get(k) for k in keys]
        lengths = torch.tensor([s.shape[0] for s in seqs], dtype=torch.int64)
        offsets = torch.zeros(len(keys), dtype=torch.int64)
        offsets[1:] = torch.cumsum(lengths, 0)[:-1]
        zero = torch.zeros(1, ds.seq_store.hidden_size, dtype=seqs[0].dtype if seqs else STORE_DTYPE)
        self.seq = torch.cat([*seqs, zero]).to(self.device, keep)
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


def build_model(cfg: TrainConfig, seq_dim: int, img_dim: int, n_labels: int) -> FusionModel:
    return FusionModel(FusionConfig(seq_dim=seq_dim, img_dim=img_dim, n_labels=n_labels, **cfg.model_switches()))


def loss_fn(cfg: TrainConfig, pm_index: int):
    if cfg.loss == "authors":
        return lambda logits, y: authors_loss(logits, y, pm_index, cfg.focal_gamma)
    return lambda logits, y: bce_focal_loss(logits, y, cfg.bce_weight, cfg.focal_weight, cfg.focal_gamma)


def _amp_dtype(cfg: TrainConfig, device: str):
    """bfloat16 where the GPU has it (A100/H100), float16 with loss scaling elsewhere (Colab's T4);
    None: full precision (CPU, or amp off)."""
    if not (cfg.amp and str(device).startswith("cuda")):
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _autocast(cfg: TrainConfig, device: str):
    dtype = _amp_dtype(cfg, device)
    return torch.autocast("cuda", dtype=dtype) if dtype is not None else contextlib.nullcontext()


@torch.no_grad()
def evaluate_loss(model, batches, lossf, cfg, device) -> float:
    """Mean loss over ``batches``: (img, seq, mask, y) tuples (a loader, or gathered batches)."""
    model.eval()
    total, n = torch.zeros((), device=device), 0
    for img, seq, mask, y in batches:
        with _autocast(cfg, device):
            logits = model(img.to(device), seq.to(device), mask.to(device))
        total += lossf(logits.float(), y.to(device)) * len(y)
        n += len(y)
    return float(total) / max(n, 1)


def _schedule(opt, cfg: TrainConfig, total_steps: int):
    if cfg.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    warm = max(1, int(cfg.warmup_frac * total_steps))

    def factor(step):
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total_steps - warm))))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


# -- resume keying -------------------------------------------------------------------------------
RESUME_FORMAT = 3   # 3: dropout from the run's own generator


def _frame_digest(ds: FusionDataset, targets: str) -> str:
    """Sample ids, sequence keys and targets, in order: what a run trains or validates on."""
    h = hashlib.sha256()
    h.update("\n".join(f"{a}:{b}" for a, b in zip(ds.samples["image_id"], ds.samples["seq_hash"])).encode())
    h.update(ds.targets(targets).numpy().tobytes())
    return h.hexdigest()[:16]


def run_key(train_ds: FusionDataset, val_ds: FusionDataset, cfg: TrainConfig, seed: int, *,
            pad_to: int | None = None) -> dict:
    """Everything that determines a training run; a resume state must match it to be continued."""
    return {"format": RESUME_FORMAT, "config_hash": cfg.hash(), "seed": int(seed),
            "train": _frame_digest(train_ds, cfg.targets), "val": _frame_digest(val_ds, cfg.targets),
            "seq_store": train_ds.seq_store.meta.get("fingerprint_id"),
            "img_store": train_ds.img_store.meta.get("fingerprint_id"), "global_pad_to": pad_to}


def _set_aside(path: Path, why: str) -> Path:
    aside = path.with_name(f"{path.stem}.set-aside-{time.strftime('%Y%m%dT%H%M%S')}{path.suffix}")
    path.replace(aside)
    warnings.warn(f"{path}: {why}; not continued (set aside as {aside.name}); training starts afresh",
                  stacklevel=3)
    return aside


# -- the loop ------------------------------------------------------------------------------------
class _Run:
    """One run's model, optimiser, schedule, selection and random stream, stepped by :func:`_train_runs`.

    RNG scheme (the same for a run alone and beside others, lockstep or threads): the weights are
    drawn after ``torch.manual_seed(seed)``; the next draw of that stream seeds the run's own
    generator, and every dropout mask of the run comes from it (``FusionModel.use_generator``),
    so a run's masks depend only on its own steps. Shuffles use ``seed + epoch`` generators. The
    caller's global generator is left where it was.
    """

    def __init__(self, job: "TrainJob", labels, device, pad_to):
        cfg, seed, train_ds, val_ds = job.cfg, int(job.seed), job.train_ds, job.val_ds
        self.cfg, self.device, self.seed = cfg, device, seed
        if cfg.images_per_protein:
            train_ds = train_ds.subset(train_ds.samples.sample(frac=1.0, random_state=seed)
                                       .groupby("protein_id").head(cfg.images_per_protein).index)
        self.train_ds, self.val_ds = train_ds, val_ds
        cuda = torch.device(device).type == "cuda"
        cuda_devices = range(torch.cuda.device_count()) if cuda else []
        with torch.random.fork_rng(devices=cuda_devices):  # the caller's global stream stays where it was
            torch.manual_seed(seed)
            self.model = build_model(cfg, train_ds.seq_store.hidden_size, train_ds.img_store.hidden_size,
                                     len(labels)).to(device)
            dropout_seed = int(torch.randint(2 ** 62, (1,)))
        self.gen = torch.Generator(device=device).manual_seed(dropout_seed)
        self.model.use_generator(self.gen)
        opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        self.opt = opt_cls(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                           **({"foreach": True} if cuda else {}))
        self.train_pad = pad_to if cfg.padding == "global" else pad_length(cfg, train_ds)
        self.val_pad = pad_to if cfg.padding == "global" else pad_length(cfg, val_ds)
        steps_per_epoch = len(epoch_batches(train_ds.seq_lengths, cfg, shuffle=True, seed=seed, pad_to=self.train_pad))
        self.sched = _schedule(self.opt, cfg, cfg.max_epochs * steps_per_epoch)
        self.lossf = loss_fn(cfg, labels.index("plasma membrane") if "plasma membrane" in labels else len(labels) - 1)
        # float16 needs loss scaling against gradient underflow; bfloat16 and float32 do not
        self.scaler = torch.amp.GradScaler("cuda", enabled=_amp_dtype(cfg, device) == torch.float16)
        self.keep = KeepBest(patience=cfg.patience)
        self.state = {"epoch": 0, "history": [], "finished": False}
        self.key = run_key(train_ds, val_ds, cfg, seed, pad_to=pad_to)
        self.resume = Path(job.resume_dir) / "last_state.pt" if job.resume_dir else None
        self.stream = torch.cuda.Stream(device) if cuda else None
        self.feats = self.val_feats = None   # set by _train_runs
        if self.resume is not None and self.resume.exists():
            self._load_resume()

    def plan(self, epoch: int, val: bool = False):
        ds = self.val_ds if val else self.train_ds
        return epoch_batches(ds.seq_lengths, self.cfg, shuffle=not val, seed=self.seed + (0 if val else epoch),
                             pad_to=self.val_pad if val else self.train_pad)

    def _load_resume(self):
        try:
            saved = torch.load(self.resume, map_location=self.device, weights_only=True)
            key = json.loads(saved["run_key"])
        except Exception as exc:  # unreadable, or an older format without a key
            _set_aside(self.resume, f"unreadable or older resume state ({type(exc).__name__})")
            return
        if key != self.key:
            diff = sorted(k for k in set(key) | set(self.key) if key.get(k) != self.key.get(k))
            _set_aside(self.resume, f"resume state of another run (differs in {', '.join(diff)})")
            return
        self.model.load_state_dict(saved["model"])
        self.opt.load_state_dict(saved["optimizer"])
        self.sched.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        self.state = json.loads(saved["state_json"])
        self.keep.load_state_dict(self.state.pop("keep"), saved["best_model"])
        self.gen.set_state(saved["rng"].cpu())  # dropout continues as if never interrupted

    def save(self):
        if self.resume is None:
            return
        self.resume.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.resume.with_suffix(".tmp")
        torch.save({"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                    "scheduler": self.sched.state_dict(), "best_model": self.keep.weights,
                    "state_json": json.dumps({**self.state, "keep": self.keep.state_dict()}),
                    "run_key": json.dumps(self.key), "rng": self.gen.get_state(), "scaler": self.scaler.state_dict()},
                   tmp)
        tmp.replace(self.resume)

    def step(self, img, seq, mask, y):
        cfg = self.cfg
        with _autocast(cfg, self.device):
            logits = self.model(img, seq, mask)
        loss = self.lossf(logits.float(), y)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.opt)
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip, foreach=True)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        return loss.detach()

    def end_epoch(self, epoch: int, loss_sum, n: int, seconds: float, *, reuse: bool):
        """Validate, record, select, save; raises NaNLossError on a non-finite training loss."""
        train_loss = float(loss_sum) / max(n, 1)
        if not math.isfinite(train_loss):
            raise self.fail(epoch)
        val_b = (self.val_feats.batch(torch.as_tensor(i).to(self.device), w, reuse=reuse)
                 for i, w in self.plan(epoch, val=True))
        val = evaluate_loss(self.model, val_b, self.lossf, self.cfg, self.device)
        self.state["history"].append({"epoch": epoch, "train_loss": train_loss, "val_loss": val,
                                      "seconds": seconds, "samples_per_s": n / seconds})
        self.keep.update(self.model, val if self.cfg.select_on == "val_loss" else train_loss, epoch)
        self.state["epoch"] = epoch
        self.state["finished"] = self.keep.should_stop or epoch >= self.cfg.max_epochs
        self.save()

    def fail(self, epoch):
        self.keep.restore(self.model)
        self.model.use_generator(None)
        err = NaNLossError(f"non-finite training loss at epoch {epoch}; the best model so far is kept "
                           f"(epoch {self.keep.best_epoch or 'none'}). Lower the learning rate or check the inputs.")
        err.model, err.history = self.model, pd.DataFrame(self.state["history"])
        return err

    def result(self):
        if self.keep.weights is None:  # every epoch scored NaN: nothing trustworthy to return
            raise NaNLossError(f"no epoch reached a finite {self.cfg.select_on.replace('_', ' ')}; check the inputs")
        self.keep.restore(self.model)
        self.model.use_generator(None)
        hist = pd.DataFrame(self.state["history"])
        hist["best"] = hist["epoch"] == self.keep.best_epoch
        return self.model, hist


def _lockstep(runs: list[_Run], device: str, bar, *, reuse: bool, stop: threading.Event | None = None,
              share: int | None = None, threads=None):
    """Train ``runs`` epoch by epoch, step by step in turn (on CUDA each on its own stream).

    ``share``: how many runs train at the same time in all (threads), for each run's share of the
    wall time in its history; default: the runs stepped here. Returns early when ``stop`` is set.
    ``threads``: a function giving this thread's intra-op threads, asked before every step.
    """
    first = min(r.state["epoch"] for r in runs) + 1
    for epoch in range(first, max(r.cfg.max_epochs for r in runs) + 1):
        active = [r for r in runs if not r.state["finished"] and r.state["epoch"] < epoch <= r.cfg.max_epochs]
        if not active:
            return
        t0 = time.perf_counter()
        plans = {id(r): [(torch.as_tensor(i).to(device, non_blocking=True), w) for i, w in r.plan(epoch)]
                 for r in active}
        sums = {id(r): torch.zeros((), device=device) for r in active}
        ns = {id(r): 0 for r in active}
        for r in active:
            r.model.train()
            if r.stream is not None:  # the index tensors were made on the default stream
                r.stream.wait_stream(torch.cuda.current_stream(device))
        for k in range(max(len(p) for p in plans.values())):
            if stop is not None and stop.is_set():
                return
            if threads is not None:
                torch.set_num_threads(threads())
            for r in active:
                if k >= len(plans[id(r)]):
                    continue
                idx, width = plans[id(r)][k]
                with torch.cuda.stream(r.stream) if r.stream is not None else contextlib.nullcontext():
                    img, seq, mask, y = r.feats.batch(idx, width, reuse=reuse)
                    sums[id(r)] += r.step(img, seq, mask, y) * len(idx)
                ns[id(r)] += len(idx)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)
        seconds = (time.perf_counter() - t0) / (share or len(active))  # each run's share of the wall time
        for r in active:
            r.end_epoch(epoch, sums[id(r)], ns[id(r)], seconds, reuse=reuse)
            bar.update(1)


def _workers(workers, device: str, n_runs: int) -> int:
    """Runs trained at once in threads: on the CPU as many as cores (up to the runs), since small
    models leave cores idle inside one run (2 cores, demo model: 1.3x); on CUDA one thread, the
    runs in lockstep on their own streams."""
    if workers != "auto":
        return max(1, min(int(workers), n_runs))
    if torch.device(device).type != "cpu":
        return 1
    return max(1, min(torch.get_num_threads(), n_runs))


def _train_runs(runs: list[_Run], device: str, progress: bool, resident, workers="auto"):
    """Train the runs (see :func:`train_jobs`) on features loaded once per dataset."""
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # float32 matmuls on tensor cores (authors' amp off)
        torch.backends.cudnn.allow_tf32 = True
    todo = [r for r in runs if not r.state["finished"]]
    if not todo:
        return
    feats = {}
    for r in todo:  # loaded once, off the epoch clock
        # under CUDA autocast the model casts its inputs anyway: hand it the stored float16
        out = STORE_DTYPE if _amp_dtype(r.cfg, device) is not None else torch.float32
        for ds, attr in ((r.train_ds, "feats"), (r.val_ds, "val_feats")):
            key = (id(ds), r.cfg.targets, out)
            if key not in feats:
                feats[key] = features_on_device(ds, device, targets=r.cfg.targets, resident=resident, out_dtype=out)
            setattr(r, attr, feats[key])
    n_workers = _workers(workers, device, len(todo))
    total = sum(r.cfg.max_epochs - r.state["epoch"] for r in todo)
    with tqdm(total=total, desc="epochs" if len(todo) == 1 else f"epochs ({len(todo)} runs)",
              disable=not progress) as bar:
        if n_workers == 1:
            # one step at a time on the CPU: the gather buffers can be reused
            _lockstep(todo, device, bar, reuse=torch.device(device).type == "cpu")
            return
        stop, cores, left, lock = threading.Event(), torch.get_num_threads(), [len(todo)], threading.Lock()
        # each thread's share of the cores, grown as runs finish (the last runs alone get them all)
        share_of_cores = lambda: max(1, cores // min(n_workers, max(1, left[0])))

        def work(run):
            try:
                with torch_threads(share_of_cores()):
                    _lockstep([run], device, bar, reuse=False, stop=stop, share=n_workers, threads=share_of_cores)
            finally:
                with lock:
                    left[0] -= 1

        with ThreadPoolExecutor(n_workers, thread_name_prefix="proloc-train") as pool:
            futures = [pool.submit(work, r) for r in todo]
            try:
                wait(futures, return_when=FIRST_EXCEPTION)
                for f in futures:
                    if f.done() and f.exception() is not None:
                        raise f.exception()
            except BaseException:  # a failed run or Ctrl-C: the others stop after their current step
                stop.set()
                raise


@dataclass(kw_only=True)
class TrainJob:
    """One training run for :func:`train_jobs`: a configuration, a seed and its data.

    ``resume_dir``: the run's keyed resume state (see :func:`train_fusion`); ``global_pad_to``:
    the padding width for ``padding="global"`` (default: the longest over train and val)."""
    train_ds: FusionDataset
    val_ds: FusionDataset
    cfg: TrainConfig
    seed: int = 0
    resume_dir: str | Path | None = None
    global_pad_to: int | None = None


def train_jobs(jobs: list[TrainJob], labels: list[str], *, device: str = "cpu", progress: bool = True,
               resident="auto", workers="auto") -> list[tuple]:
    """Train several runs at once (any configurations, seeds and data): [(model, history)] in order.

    On the CPU the runs train in parallel threads (``workers``: "auto" = one per core, up to the
    runs), on CUDA in lockstep on their own streams, runs of one configuration and data together
    (the published loop stays at batch 2 per model). Each run draws only from its own random
    streams (``_Run``), so its result equals the same run trained alone; a test checks weights and
    losses. A failed run (NaNLossError) or an interrupt stops them all; every finished epoch is in
    the resume states.
    """
    runs = [_Run(j, labels, device, _global_pad(j.cfg, j.train_ds, j.val_ds, j.global_pad_to)) for j in jobs]
    if torch.device(device).type == "cuda" and workers in ("auto", 1):
        groups: dict[tuple, list[_Run]] = {}
        for j, r in zip(jobs, runs):   # features of one group at a time in device memory
            groups.setdefault((j.cfg.hash(), id(j.train_ds), id(j.val_ds)), []).append(r)
        for group in groups.values():
            _train_runs(group, device, progress, resident, workers=1)
    else:
        _train_runs(runs, device, progress, resident, workers)
    return [r.result() for r in runs]


def train_fusion_seeds(train_ds: FusionDataset, val_ds: FusionDataset, cfg: TrainConfig, labels: list[str], *,
                       seeds, device: str = "cpu", progress: bool = True, resume_dir: str | Path | None = None,
                       global_pad_to: int | None = None, resident="auto", workers="auto") -> list[tuple]:
    """Several seeds of one configuration at once (:func:`train_jobs`): [(model, history)] in
    ``seeds`` order. ``resume_dir``: one keyed state per seed under ``seed-<s>/``."""
    seeds = [int(s) for s in seeds]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds repeat: {seeds}")
    jobs = [TrainJob(train_ds=train_ds, val_ds=val_ds, cfg=cfg, seed=s, global_pad_to=global_pad_to,
                     resume_dir=Path(resume_dir) / f"seed-{s}" if resume_dir else None) for s in seeds]
    return train_jobs(jobs, labels, device=device, progress=progress, resident=resident, workers=workers)


def _global_pad(cfg, train_ds, val_ds, global_pad_to):
    if cfg.padding != "global":
        return None
    return global_pad_to or pad_length(cfg, train_ds, all_splits=(val_ds,))


def train_fusion(train_ds: FusionDataset, val_ds: FusionDataset, cfg: TrainConfig, labels: list[str],
                 device: str = "cpu", seed: int = 0, progress: bool = True, resume_dir: str | Path | None = None,
                 *, global_pad_to: int | None = None, resident="auto"):
    """Train; keep the epoch best by ``cfg.select_on`` (``selection.KeepBest``); returns (model, history).

    Batches are gathered on the device from features loaded once (``resident="auto"``: when they
    fit in half the free device memory; else read from the stores). ``global_pad_to``: the
    longest sequence over all splits, for ``padding="global"`` (default: over train and val).
    With ``resume_dir``, the state after every epoch is saved there (weights-only torch format),
    keyed by everything that determines the run (:func:`run_key`): a matching state continues,
    a finished one (early-stopped or at max_epochs) is returned as it is, any other is set aside.
    A non-finite loss stops training with NaNLossError; the best model so far is kept on it.
    """
    job = TrainJob(train_ds=train_ds, val_ds=val_ds, cfg=cfg, seed=seed, resume_dir=resume_dir,
                   global_pad_to=global_pad_to)
    return train_jobs([job], labels, device=device, progress=progress, resident=resident)[0]


def inference_batches(ds: FusionDataset, batch_size: int = 64, pad_to: int | None = None):
    """(img, seq, mask) batches in the dataset's row order (``pad_to``: the authors' global padding)."""
    for img, seq, mask, _ in DataLoader(ds, batch_size=batch_size, shuffle=False,
                                        collate_fn=partial(collate, pad_to=pad_to)):
        yield img, seq, mask


@torch.no_grad()
def predict_proba(model, ds: FusionDataset, device: str = "cpu", batch_size: int = 64,
                  pad_to: int | None = None) -> np.ndarray:
    """Probabilities in the dataset's row order."""
    model.eval()
    out = [torch.sigmoid(model(img.to(device), seq.to(device), mask.to(device))).cpu()
           for img, seq, mask in inference_batches(ds, batch_size, pad_to)]
    return torch.cat(out).numpy()


def train_config_dict(cfg: TrainConfig) -> dict:
    return asdict(cfg)


PLAN_KEYS = {"seeds", "base", "configurations", "ablations", "ablation_overrides", "cross_validation", "control",
             "resplits"}


RESPLIT_KEYS = {"methods", "repeats", "config"}
RESPLIT_METHODS = ("stratified", "homology")


def resplit_plan(section: dict) -> list[dict]:
    """The ``resplits`` of a training section, checked and expanded: one {method, config, seeds}
    per protocol. Profile shape: ``resplits: {methods: [stratified, homology], repeats: 3,
    config: corrected}`` (repeat r re-splits with seed r and trains with seed r)."""
    rs = section.get("resplits")
    if not rs:
        return []
    if not isinstance(rs, dict) or set(rs) - RESPLIT_KEYS:
        raise ValueError(f"training.resplits = {rs!r}: give a mapping with keys {sorted(RESPLIT_KEYS)}")
    methods = list(rs.get("methods", ["stratified"]))
    bad = [m for m in methods if m not in RESPLIT_METHODS]
    if bad:
        raise ValueError(f"training.resplits.methods {bad}: choose from {RESPLIT_METHODS}")
    name = rs.get("config", "corrected")
    if name not in NAMED_CONFIGS:
        raise ValueError(f"training.resplits.config {name!r}: choose one of {sorted(NAMED_CONFIGS)}")
    return [{"method": m, "config": name, "seeds": list(range(int(rs.get("repeats", 3))))} for m in methods]


def training_plan(section: dict) -> list[dict]:
    """Expand a profile's ``training`` section into runs; every option is checked up front.

    ``configurations: {name: overrides}`` are the named settings (authors, corrected), one run id
    ``fusion.<name>`` each, trained with every seed of ``seeds`` (the same seeds for every
    configuration, so runs pair by seed). ``ablations: {slug: {of: name, image_variant: variant,
    switches}}`` change single switches of one of them (first seed only; run id
    ``ablation.<slug>``, labels with spaces are slugged); ``image_variant`` trains on the store
    ``02_embeddings/images-<variant>/``. ``ablation_overrides`` (e.g. a shorter schedule) apply to
    every ablation run and to the run ``ablation.reference`` they are compared with.
    ``cross_validation``, ``control`` and ``resplits`` are read by ``experiments.plan_runs``.

    Returns one dict per (run, seed): ``run_id`` (also under ``model``), ``config``, ``seed``,
    ``train`` (TrainConfig), and for ablations ``ablation`` (the slug) and ``image_variant``.
    """
    from .runs import make_id, parse, slug

    unknown = set(section) - PLAN_KEYS
    if unknown:
        raise ValueError(f"unknown keys in the training section {sorted(unknown)} (allowed: {sorted(PLAN_KEYS)})")
    base = section.get("base", {})
    resplit_plan(section)  # checked here, run by experiments.run_resplits
    seeds = list(section.get("seeds", [0]))
    configurations = section.get("configurations") or {"corrected": {}}
    runs = []
    for seed in seeds:
        for name, over in configurations.items():
            rid = make_id("fusion", name)
            runs.append({"run_id": rid, "model": rid, "config": name, "seed": seed,
                         "train": make_config(name, base, **(over or {}))})
    ablations = section.get("ablations") or {}
    common = section.get("ablation_overrides") or {}
    if any(slug(label) == "reference" for label in ablations):
        raise ValueError("'reference' is reserved for the run the ablations are compared with; rename that ablation")
    seen = set()
    for label, spec in ({"reference": {}, **ablations} if ablations else {}).items():
        spec = dict(spec or {})
        of = spec.pop("of", "corrected")
        variant = spec.pop("image_variant", None)
        rid = make_id("ablation", label)
        if rid in seen:
            raise ValueError(f"ablation '{label}' gives the run id {rid} twice (ablation names must differ "
                             "after slugging; 'reference' is reserved)")
        seen.add(rid)
        over = {**configurations.get(of, {}), **common, **spec}
        run = {"run_id": rid, "model": rid, "config": of, "seed": seeds[0], "train": make_config(of, base, **over),
               "ablation": parse(rid)[1]}
        if variant is not None:
            run["image_variant"] = str(variant)
        runs.append(run)
    return runs
