"""BCE + focal loss for multi-label logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def focal_loss(logits, targets, gamma: float = 2.0, alpha: float | None = None):
    """Binary focal loss (Lin et al. 2017), mean over all entries; gamma=0 is plain BCE."""
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = torch.exp(-bce)  # probability of the true class, computed stably from the BCE
    loss = (1 - p_t) ** gamma * bce
    if alpha is not None:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.mean()


def bce_focal_loss(logits, targets, bce_weight: float = 1.0, focal_weight: float = 1.0, gamma: float = 2.0):
    bce = F.binary_cross_entropy_with_logits(logits, targets)
    return bce_weight * bce + focal_weight * focal_loss(logits, targets, gamma)


def authors_loss(logits, targets, pm_index: int = 4, gamma: float = 2.0):
    """The published objective: 3*BCE(all labels) + 10*(4*focal(PM) + 4*BCE(PM)),
    PM = plasma membrane (column ``pm_index``)."""
    bce_all = F.binary_cross_entropy_with_logits(logits, targets)
    pm_logit, pm_y = logits[:, pm_index], targets[:, pm_index]
    bce_pm = F.binary_cross_entropy_with_logits(pm_logit, pm_y)
    return 3 * bce_all + 10 * (4 * focal_loss(pm_logit, pm_y, gamma) + 4 * bce_pm)
