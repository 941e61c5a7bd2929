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
import time
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .embeddings import EmbeddingStore, pad_batch
from .losses import authors_loss, bce_focal_loss
from .model import FusionConfig, FusionModel, ModelSwitches


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

    CHOICES = {"optimizer": ("adam", "adamw"), "schedule": ("constant", "warmup_cosine"),
               "loss": ("bce_focal", "authors"), "select_on": ("val_loss", "train_loss"),
               "thresholds": ("fixed", "tuned"), "padding": ("batch", "split", "global"),
               "targets": ("protein", "image")}

    def __post_init__(self):
        super().__post_init__()
        for key, allowed in self.CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"training option {key}={getattr(self, key)!r}: choose one of {allowed}")

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


def image_samples(images: pd.DataFrame, proteins: pd.DataFrame, labels: list[str], split: str | None = None):
    """One row per image with its protein's sequence key, split and labels (joined by id)."""
    for col in ("protein_id", "seq_hash", "split", *labels):
        if col not in proteins.columns:
            raise KeyError(f"protein table lacks column '{col}'")
    img = images[["image_id", "protein_id"]].merge(
        proteins[["protein_id", "seq_hash", "split", *labels]], on="protein_id", how="inner", validate="many_to_one")
    if split is not None:
        img = img[img["split"] == split]
    return img.reset_index(drop=True)


class FusionDataset(Dataset):
    """Reads tokens lazily from the stores; each unique sequence is loaded once."""

    def __init__(self, samples: pd.DataFrame, labels: list[str], seq_store: EmbeddingStore,
                 img_store: EmbeddingStore):
        self.samples = samples.reset_index(drop=True)
        self.labels = labels
        self.y = torch.tensor(self.samples[labels].to_numpy(np.float32))
        self.seq_store, self.img_store = seq_store, img_store
        missing_seq = set(self.samples["seq_hash"]) - seq_store.keys()
        missing_img = set(self.samples["image_id"]) - img_store.keys()
        if missing_seq or missing_img:
            raise KeyError(f"{len(missing_seq)} sequences and {len(missing_img)} images of this split are not in "
                           f"the embedding stores (failed or not extracted; see the stores' failures.json)")
        self._seq_cache: dict[str, torch.Tensor] = {}
        self.seq_lengths = np.array([self._seq(h).shape[0] for h in self.samples["seq_hash"]])

    def subset(self, rows) -> "FusionDataset":
        """The same stores, only the given sample rows (labels come along)."""
        return FusionDataset(self.samples.loc[sorted(rows)], self.labels, self.seq_store, self.img_store)

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


def make_loader(ds: FusionDataset, cfg: TrainConfig, shuffle: bool, seed: int) -> DataLoader:
    pad_to = int(ds.seq_lengths.max()) if cfg.padding != "batch" else None  # TODO(speed): 'global' across splits
    fn = partial(collate, pad_to=pad_to)
    if cfg.bucket_batches:
        rng = np.random.default_rng(seed)
        return DataLoader(ds, batch_sampler=bucketed_batches(ds.seq_lengths, cfg.batch_size, rng, cfg.batch_tokens),
                          collate_fn=fn)
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=cfg.batch_size, shuffle=shuffle, collate_fn=fn, generator=gen)


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
def evaluate_loss(model, loader, lossf, cfg, device) -> float:
    model.eval()
    total, n = 0.0, 0
    for img, seq, mask, y in loader:
        with _autocast(cfg, device):
            logits = model(img.to(device), seq.to(device), mask.to(device))
        total += float(lossf(logits.float(), y.to(device))) * len(y)
        n += len(y)
    return total / max(n, 1)


def _schedule(opt, cfg: TrainConfig, total_steps: int):
    if cfg.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    warm = max(1, int(cfg.warmup_frac * total_steps))

    def factor(step):
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total_steps - warm))))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def train_fusion(train_ds: FusionDataset, val_ds: FusionDataset, cfg: TrainConfig, labels: list[str],
                 device: str = "cpu", seed: int = 0, progress: bool = True, resume_dir: str | Path | None = None):
    """Train; keep the epoch best by ``cfg.select_on``; returns (model, history frame).

    With ``resume_dir``, the state after every epoch is saved there (weights-only torch
    format, loaded without arbitrary pickle) and an interrupted run continues from it.
    A non-finite loss stops training with NaNLossError; the best model so far is kept on it.
    """
    torch.manual_seed(seed)
    if cfg.images_per_protein:
        train_ds = train_ds.subset(train_ds.samples.sample(frac=1.0, random_state=seed)
                                   .groupby("protein_id").head(cfg.images_per_protein).index)
    model = build_model(cfg, train_ds.seq_store.hidden_size, train_ds.img_store.hidden_size, len(labels)).to(device)
    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    opt = opt_cls(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = len(make_loader(train_ds, cfg, True, seed))
    sched = _schedule(opt, cfg, cfg.max_epochs * steps_per_epoch)
    lossf = loss_fn(cfg, labels.index("plasma membrane") if "plasma membrane" in labels else len(labels) - 1)
    val_loader = make_loader(val_ds, cfg, False, seed)
    # float16 needs loss scaling against gradient underflow; bfloat16 and float32 do not
    scaler = torch.amp.GradScaler("cuda", enabled=_amp_dtype(cfg, device) == torch.float16)
    state = {"epoch": 0, "best": math.inf, "bad_epochs": 0, "history": []}
    best_state = None
    resume = Path(resume_dir) / "last_state.pt" if resume_dir else None
    if resume is not None and resume.exists():
        saved = torch.load(resume, map_location=device, weights_only=True)
        if saved["config_hash"] != cfg.hash():
            raise ValueError(f"{resume} was written by another training configuration; delete it to start afresh")
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        best_state = saved["best_model"]
        state = json.loads(saved["state_json"])
        torch.set_rng_state(saved["rng"])  # dropout continues as if never interrupted
        scaler.load_state_dict(saved["scaler"])
    for epoch in tqdm(range(state["epoch"] + 1, cfg.max_epochs + 1), desc="epochs", disable=not progress):
        model.train()
        t0, total, n = time.perf_counter(), 0.0, 0
        for img, seq, mask, y in make_loader(train_ds, cfg, True, seed + epoch):
            with _autocast(cfg, device):
                logits = model(img.to(device), seq.to(device), mask.to(device))
            loss = lossf(logits.float(), y.to(device))
            if not torch.isfinite(loss):
                if best_state is not None:
                    model.load_state_dict(best_state)
                err = NaNLossError(f"non-finite training loss at epoch {epoch}; the best model so far is kept "
                                   f"(epoch {state.get('best_epoch', 'none')}). "
                                   "Lower the learning rate or check the inputs.")
                err.model, err.history = model, pd.DataFrame(state["history"])
                raise err
            opt.zero_grad()
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(opt)
            scaler.update()
            sched.step()
            total += loss.item() * len(y)
            n += len(y)
        seconds = time.perf_counter() - t0
        val = evaluate_loss(model, val_loader, lossf, cfg, device)
        state["history"].append({"epoch": epoch, "train_loss": total / n, "val_loss": val, "seconds": seconds,
                                 "samples_per_s": n / seconds})
        score = val if cfg.select_on == "val_loss" else total / n
        if score < state["best"] - 1e-6:
            state["best"], state["bad_epochs"], state["best_epoch"] = score, 0, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch
        if resume is not None:
            resume.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                        "best_model": best_state, "state_json": json.dumps(state), "config_hash": cfg.hash(),
                        "rng": torch.get_rng_state(), "scaler": scaler.state_dict()},
                       resume.with_suffix(".tmp"))
            resume.with_suffix(".tmp").replace(resume)
        if cfg.patience is not None and state["bad_epochs"] >= cfg.patience:
            break
    if best_state is None:  # every epoch scored NaN: nothing trustworthy to return
        raise NaNLossError(f"no epoch reached a finite {cfg.select_on.replace('_', ' ')}; check the inputs")
    model.load_state_dict(best_state)
    hist = pd.DataFrame(state["history"])
    hist["best"] = hist["epoch"] == state["best_epoch"]
    return model, hist


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


def save_checkpoint(model: FusionModel, out_dir: str | Path, extra: dict) -> Path:
    """safetensors weights + JSON config (no pickle): label order, thresholds, encoders..."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out_dir / "model.safetensors"))
    (out_dir / "config.json").write_text(json.dumps({"model": model.cfg.to_dict(), **extra}, indent=2, default=str))
    return out_dir


def load_checkpoint(ckpt_dir: str | Path, device: str = "cpu") -> tuple[FusionModel, dict]:
    ckpt_dir = Path(ckpt_dir)
    meta = json.loads((ckpt_dir / "config.json").read_text())
    model = FusionModel(FusionConfig(**meta["model"]))
    model.load_state_dict(load_file(str(ckpt_dir / "model.safetensors"), device=device))
    return model.to(device).eval(), meta


def train_config_dict(cfg: TrainConfig) -> dict:
    return asdict(cfg)


PLAN_KEYS = {"seeds", "base", "configurations", "ablations", "ablation_overrides", "cross_validation", "control",
             "resplits"}


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
