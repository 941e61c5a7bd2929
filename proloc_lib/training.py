"""Training and inference for the fusion model on stored embeddings.

Samples are images (each paired with its protein's sequence); model selection uses the
validation loss only, and the test split is touched once, for the final evaluation.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .embeddings import EmbeddingStore, pad_batch
from .losses import bce_focal_loss
from .model import FusionConfig, FusionModel


@dataclass
class TrainConfig:
    d_model: int = 512
    n_heads: int = 8
    n_blocks: int = 2
    dropout: float = 0.1
    lr: float = 1e-4
    weight_decay: float = 0.01
    batch_size: int = 32
    max_epochs: int = 30
    patience: int = 5
    bce_weight: float = 1.0
    focal_weight: float = 1.0
    focal_gamma: float = 2.0
    apply_mask: bool = True
    share_blocks: bool = False
    query: str = "image"
    bucket_batches: bool = True

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown training options {sorted(unknown)} (known: {sorted(known)})")
        return cls(**d)


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
        self.y = torch.tensor(self.samples[labels].to_numpy(np.float32))
        self.seq_store, self.img_store = seq_store, img_store
        missing_seq = set(self.samples["seq_hash"]) - seq_store.keys()
        missing_img = set(self.samples["image_id"]) - img_store.keys()
        if missing_seq or missing_img:
            raise KeyError(f"{len(missing_seq)} sequences and {len(missing_img)} images of this split are not in "
                           f"the embedding stores (failed or not extracted; see the stores' failures.json)")
        self._seq_cache: dict[str, torch.Tensor] = {}
        self.seq_lengths = np.array([self._seq(h).shape[0] for h in self.samples["seq_hash"]])

    def _seq(self, h):
        if h not in self._seq_cache:
            self._seq_cache[h] = self.seq_store.get(h).float()
        return self._seq_cache[h]

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        row = self.samples.iloc[i]
        return self.img_store.get(row["image_id"]).float(), self._seq(row["seq_hash"]), self.y[i]


def collate(batch):
    imgs, seqs, ys = zip(*batch)
    seq, mask = pad_batch(list(seqs))
    return torch.stack(imgs), seq, mask, torch.stack(ys)


def bucketed_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[list[int]]:
    """Batches of similar sequence length (little padding), in shuffled order."""
    noisy = lengths + rng.uniform(0, 0.1 * max(1, lengths.max()), size=len(lengths))
    order = np.argsort(noisy)
    batches = [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def make_loader(ds: FusionDataset, batch_size: int, shuffle: bool, bucket: bool, seed: int) -> DataLoader:
    if bucket:
        rng = np.random.default_rng(seed)
        batches = bucketed_batches(ds.seq_lengths, batch_size, rng)
        return DataLoader(ds, batch_sampler=batches, collate_fn=collate)
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, collate_fn=collate, generator=gen)


def build_model(cfg: TrainConfig, seq_dim: int, img_dim: int, n_labels: int) -> FusionModel:
    return FusionModel(FusionConfig(seq_dim=seq_dim, img_dim=img_dim, n_labels=n_labels, d_model=cfg.d_model,
                                    n_heads=cfg.n_heads, n_blocks=cfg.n_blocks, dropout=cfg.dropout,
                                    apply_mask=cfg.apply_mask, share_blocks=cfg.share_blocks, query=cfg.query))


def _loss(model, batch, cfg, device):
    img, seq, mask, y = (t.to(device) for t in batch)
    logits = model(img, seq, mask)
    return bce_focal_loss(logits, y, cfg.bce_weight, cfg.focal_weight, cfg.focal_gamma), len(y)


@torch.no_grad()
def evaluate_loss(model, loader, cfg, device) -> float:
    model.eval()
    total, n = 0.0, 0
    for batch in loader:
        loss, b = _loss(model, batch, cfg, device)
        total += float(loss) * b
        n += b
    return total / max(n, 1)


def train_fusion(train_ds: FusionDataset, val_ds: FusionDataset, cfg: TrainConfig, n_labels: int,
                 device: str = "cpu", seed: int = 0, progress: bool = True):
    """Train with early stopping on validation loss; returns (best model, history frame)."""
    torch.manual_seed(seed)
    model = build_model(cfg, train_ds.seq_store.hidden_size, train_ds.img_store.hidden_size, n_labels).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    val_loader = make_loader(val_ds, cfg.batch_size, False, cfg.bucket_batches, seed)
    best, best_state, bad_epochs, history = math.inf, None, 0, []
    for epoch in tqdm(range(1, cfg.max_epochs + 1), desc="epochs", disable=not progress):
        model.train()
        t0, total, n = time.perf_counter(), 0.0, 0
        for batch in make_loader(train_ds, cfg.batch_size, True, cfg.bucket_batches, seed + epoch):
            loss, b = _loss(model, batch, cfg, device)
            if not torch.isfinite(loss):
                raise NaNLossError(f"non-finite training loss at epoch {epoch}; best model so far kept "
                                   f"(val loss {best:.4f}). Lower the learning rate or check the inputs.")
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            total += float(loss) * b
            n += b
        val = evaluate_loss(model, val_loader, cfg, device)
        history.append({"epoch": epoch, "train_loss": total / n, "val_loss": val,
                        "seconds": time.perf_counter() - t0, "samples_per_s": n / (time.perf_counter() - t0)})
        if val < best - 1e-6:
            best, bad_epochs = val, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad_epochs += 1
            if bad_epochs >= cfg.patience:
                break
    model.load_state_dict(best_state)
    hist = pd.DataFrame(history)
    hist["best"] = hist["val_loss"] == best
    return model, hist


@torch.no_grad()
def predict_proba(model, ds: FusionDataset, device: str = "cpu", batch_size: int = 64) -> np.ndarray:
    """Probabilities in the dataset's row order."""
    model.eval()
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=collate)
    out = []
    for img, seq, mask, _ in loader:
        out.append(torch.sigmoid(model(img.to(device), seq.to(device), mask.to(device))).cpu())
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
