"""Baselines on the same splits: label frequency, amino-acid composition + logistic
regression, and small MLP heads on pooled single-modality embeddings."""

from __future__ import annotations

import itertools

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from proloc_lib.data.sequences import AMINO_ACIDS
from proloc_lib.features.batching import length_buckets, pad_batch
from proloc_lib.training.selection import KeepBest

_DIPEPTIDES = ["".join(p) for p in itertools.product(AMINO_ACIDS, repeat=2)]
_AA_INDEX = {a: i for i, a in enumerate(AMINO_ACIDS)}


def label_frequency(y_train: np.ndarray, n: int) -> np.ndarray:
    """Every protein gets the training prevalence of each label as its probability."""
    return np.tile(np.asarray(y_train, dtype=np.float64).mean(0), (n, 1))


def composition_features(seq: str) -> np.ndarray:
    """20 amino-acid + 400 dipeptide frequencies (non-standard residues ignored)."""
    idx = np.array([_AA_INDEX.get(c, -1) for c in seq])
    aac = np.bincount(idx[idx >= 0], minlength=20) / max(1, (idx >= 0).sum())
    a, b = idx[:-1], idx[1:]
    ok = (a >= 0) & (b >= 0)
    dpc = np.bincount(a[ok] * 20 + b[ok], minlength=400) / max(1, ok.sum())
    return np.concatenate([aac, dpc]).astype(np.float32)


def composition_matrix(seqs) -> np.ndarray:
    return np.stack([composition_features(s) for s in seqs])


def fit_logreg(X: np.ndarray, Y: np.ndarray, C: float = 1.0, seed: int = 0):
    """One-vs-rest logistic regression on standardised features; returns a predict_proba fn.

    A label with a single value in training (no positive protein in a small split) gets that
    value as its probability, as scikit-learn's one-vs-rest would give it, without its warning."""
    Y = np.asarray(Y)
    varies = ~np.all(Y == Y[:1], axis=0)
    clf = None
    if varies.any():
        clf = make_pipeline(StandardScaler(), OneVsRestClassifier(
            LogisticRegression(C=C, max_iter=3000, random_state=seed)))
        # one varying label: a 2-D one-column target would be read as binary, not multi-label
        clf.fit(X, Y[:, varies] if varies.sum() > 1 else Y[:, varies].ravel())

    def predict_proba(Xn):
        out = np.tile(Y[0].astype(np.float64), (len(Xn), 1))
        if clf is not None:
            p = np.asarray(clf.predict_proba(Xn))
            out[:, varies] = p if varies.sum() > 1 else p[:, 1:]
        return out

    return predict_proba


class MLPHead(nn.Module):
    def __init__(self, d_in: int, hidden: int, n_out: int, dropout: float = 0.2):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(d_in), nn.Linear(d_in, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, n_out))

    def forward(self, x):
        return self.net(x)


def fit_mlp(X: np.ndarray, Y: np.ndarray, X_val: np.ndarray, Y_val: np.ndarray, hidden: int = 128,
            epochs: int = 100, lr: float = 1e-3, seed: int = 0):
    """Full-batch MLP; keeps the epoch with the lowest validation loss. Returns a predict fn."""
    torch.manual_seed(seed)
    Xt, Yt = torch.tensor(X, dtype=torch.float32), torch.tensor(Y, dtype=torch.float32)
    Xv, Yv = torch.tensor(X_val, dtype=torch.float32), torch.tensor(Y_val, dtype=torch.float32)
    model = MLPHead(X.shape[1], hidden, Y.shape[1])
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-2)
    lossf = nn.BCEWithLogitsLoss()
    keep = KeepBest()
    for epoch in range(epochs):
        model.train()
        opt.zero_grad()
        lossf(model(Xt), Yt).backward()
        opt.step()
        model.eval()
        with torch.no_grad():
            keep.update(model, float(lossf(model(Xv), Yv)), epoch)
    keep.restore(model).eval()

    def predict(Xn):
        with torch.no_grad():
            return torch.sigmoid(model(torch.tensor(Xn, dtype=torch.float32))).numpy()

    return predict


class LightAttention(nn.Module):
    """Light attention over residues (Stärk et al. 2021): convolutional values and attention
    scores along the sequence, attention-weighted sum + max pooling, then an MLP."""

    def __init__(self, d_in: int, n_out: int, d_hidden: int = 128, kernel: int = 9, dropout: float = 0.25):
        super().__init__()
        self.values = nn.Conv1d(d_in, d_hidden, kernel, padding=kernel // 2)
        self.scores = nn.Conv1d(d_in, d_hidden, kernel, padding=kernel // 2)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Sequential(nn.Linear(2 * d_hidden, d_hidden), nn.ReLU(), nn.Linear(d_hidden, n_out))

    def forward(self, x, mask):
        """x (B, L, D), mask (B, L) True = residue."""
        # zero the padding: the convolutions would otherwise read it into the last residues
        x = (x * mask[..., None]).transpose(1, 2)
        v, s = self.drop(self.values(x)), self.scores(x)
        s = s.masked_fill(~mask[:, None, :], float("-inf"))
        attended = (torch.softmax(s, dim=-1) * v).sum(-1)
        maxed = v.masked_fill(~mask[:, None, :], float("-inf")).amax(-1)
        return self.out(torch.cat([attended, maxed], dim=1))


def fit_light_attention(train: list, Y: np.ndarray, val: list, Y_val: np.ndarray, epochs: int = 20,
                        batch_size: int = 16, lr: float = 1e-3, seed: int = 0, batch_tokens: int | None = None):
    """Train on per-residue tensors (lists of (L_i, D)); keep the best validation epoch.

    Batches are length buckets (``embeddings.length_buckets``) of at most ``batch_size``
    sequences and, with ``batch_tokens``, at most that many padded residues.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = LightAttention(train[0].shape[1], Y.shape[1])
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-2)
    lossf = nn.BCEWithLogitsLoss()
    Yt, Yv = torch.tensor(Y, dtype=torch.float32), torch.tensor(Y_val, dtype=torch.float32)

    def run(xs, bs=64):
        model.eval()
        with torch.no_grad():
            return torch.cat([model(*pad_batch(xs[i:i + bs])) for i in range(0, len(xs), bs)])

    keep = KeepBest()
    lengths = {i: len(t) for i, t in enumerate(train)}
    # without a residue budget: plain chunks of batch_size in length order (little padding)
    budget = batch_tokens or batch_size * max(lengths.values())
    batches = [np.array(b) for b in length_buckets(lengths, budget, max_batch=batch_size)]
    for epoch in range(epochs):
        model.train()
        for b in rng.permutation(len(batches)):
            idx = batches[b]
            loss = lossf(model(*pad_batch([train[i] for i in idx])), Yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        keep.update(model, float(lossf(run(val), Yv)), epoch)
    keep.restore(model)
    return lambda xs: torch.sigmoid(run(xs)).numpy()
