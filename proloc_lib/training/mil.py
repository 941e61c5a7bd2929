"""Protein-level multi-instance learning: attention over all images of a protein.

The fusion model scores images one at a time; averaging their probabilities is the simple
protein-level rule. Here a gated-attention pooling head (Ilse et al. 2018) learns which of a
protein's images to trust, on the fusion model's pooled image representations (frozen).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

from proloc_lib.core.runtime import torch_threads
from proloc_lib.training.datasets import FusionDataset, inference_batches
from proloc_lib.training.selection import KeepBest


class AttentionMIL(nn.Module):
    def __init__(self, d: int, n_labels: int, hidden: int = 64, dropout: float = 0.1):
        super().__init__()
        self.v = nn.Sequential(nn.Linear(d, hidden), nn.Tanh())
        self.u = nn.Sequential(nn.Linear(d, hidden), nn.Sigmoid())
        self.w = nn.Linear(hidden, 1)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(d, n_labels))

    def forward(self, bag: torch.Tensor):
        """bag (n_images, d) -> logits (n_labels,), attention weights (n_images,)."""
        a = torch.softmax(self.w(self.v(bag) * self.u(bag)).squeeze(-1), dim=0)
        return self.head((a[:, None] * bag).sum(0)), a


@torch.no_grad()
def image_features(model, ds: FusionDataset, device: str = "cpu", batch_size: int = 64,
                   pad_to: int | None = None) -> np.ndarray:
    """The fusion model's pooled representation of every image of ``ds`` (row order)."""
    model.eval()
    out = [model.pooled(img.to(device), seq.to(device), mask.to(device))[0].cpu()
           for img, seq, mask in inference_batches(ds, batch_size, pad_to)]
    return torch.cat(out).numpy()


def bags(samples: pd.DataFrame, features: np.ndarray, labels: list[str]):
    """Group image features by protein: (protein ids, list of (n_i, d) tensors, (P, L) targets)."""
    ids = list(dict.fromkeys(samples["protein_id"]))
    index = {p: np.flatnonzero(samples["protein_id"].to_numpy() == p) for p in ids}
    X = [torch.tensor(features[index[p]], dtype=torch.float32) for p in ids]
    y = torch.tensor(np.stack([samples[labels].to_numpy(np.float32)[index[p][0]] for p in ids]))
    return ids, X, y


@torch_threads(1)   # one bag per step: tiny ops (the same weights as with more threads)
def fit_mil(train_bags, val_bags, n_labels: int, epochs: int = 60, lr: float = 1e-3, seed: int = 0) -> AttentionMIL:
    """Train on protein bags, keep the epoch with the lowest validation loss."""
    torch.manual_seed(seed)
    _, Xt, yt = train_bags
    _, Xv, yv = val_bags
    model = AttentionMIL(Xt[0].shape[1], n_labels)
    # foreach: one multi-tensor update per step instead of a Python loop over the parameters (one bag per step)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-2, foreach=True)
    lossf = nn.BCEWithLogitsLoss()
    rng = np.random.default_rng(seed)
    keep = KeepBest()
    for epoch in range(epochs):
        model.train()
        for i in rng.permutation(len(Xt)):
            loss = lossf(model(Xt[i])[0], yt[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            val = float(torch.stack([lossf(model(x)[0], y) for x, y in zip(Xv, yv)]).mean())
        keep.update(model, val, epoch)
    return keep.restore(model).eval()


@torch.no_grad()
@torch_threads(1)
def predict_bags(model: AttentionMIL, bag_set) -> np.ndarray:
    _, X, _ = bag_set
    return torch.stack([torch.sigmoid(model(x)[0]) for x in X]).numpy()
