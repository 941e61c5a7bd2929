"""Keep the best epoch: the one model-selection helper every training loop uses."""

from __future__ import annotations

import math


class KeepBest:
    """Remembers the weights of the epoch with the lowest score and counts epochs without
    improvement (early stopping when ``patience`` is set).

    A non-finite score never counts as an improvement. ``state_dict``/``load_state_dict`` carry
    the counters (not the weights) for resumable loops.
    """

    def __init__(self, *, patience: int | None = None, min_delta: float = 1e-6):
        self.patience, self.min_delta = patience, min_delta
        self.best, self.best_epoch, self.bad_epochs = math.inf, None, 0
        self.weights: dict | None = None

    def update(self, model, score: float, epoch: int | None = None) -> bool:
        """Record one epoch's score; returns True when it is the best so far (weights copied)."""
        score = float(score)
        if math.isfinite(score) and score < self.best - self.min_delta:
            self.best, self.best_epoch, self.bad_epochs = score, epoch, 0
            self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_epochs >= self.patience

    def restore(self, model):
        """Load the best weights into ``model`` (no-op when no epoch had a finite score)."""
        if self.weights is not None:
            model.load_state_dict(self.weights)
        return model

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict, weights: dict | None = None) -> None:
        self.best, self.best_epoch, self.bad_epochs = state["best"], state["best_epoch"], state["bad_epochs"]
        self.weights = weights
