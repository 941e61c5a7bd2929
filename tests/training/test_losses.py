"""Losses: focal loss down-weights easy examples; the authors' loss is the published multi-task loss
and weighs plasma membrane far above the other labels."""
import torch
import torch.nn.functional as F

from proloc_lib.training.losses import authors_loss, bce_focal_loss, focal_loss


def test_focal_loss_downweights_easy_examples():
    logits = torch.tensor([[4.0, -4.0], [0.1, -0.1]])
    y = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
    fl = torch.stack([focal_loss(logits[i:i + 1], y[i:i + 1]) for i in range(2)])
    assert torch.isclose(focal_loss(logits, y, gamma=0.0), bce.mean())
    assert (fl / bce.mean(1))[0] < 0.01 < (fl / bce.mean(1))[1]
    assert torch.isclose(bce_focal_loss(logits, y, 1.0, 0.0), bce.mean())


def test_authors_loss_weights_plasma_membrane():
    logits = torch.zeros(4, 5)
    y = torch.zeros(4, 5)
    y[:, 0] = 1
    base = authors_loss(logits, y)
    y2 = y.clone()
    y2[:, 4] = 1      # same number of wrong labels, but now on plasma membrane... no: logits 0 -> same BCE
    logits2 = logits.clone()
    logits2[:, 4] = -3.0   # confidently wrong on PM costs far more than on another label
    logits3 = logits.clone()
    logits3[:, 1] = -3.0
    logits3[:, 4] = 0.0
    y3 = y.clone()
    y3[:, 1] = 1
    assert authors_loss(logits2, y2) > 5 * authors_loss(logits3, y3)
    assert torch.isfinite(base)


def test_authors_loss_is_the_published_multi_task_loss():
    torch.manual_seed(1)
    logits, y = torch.randn(6, 5), (torch.rand(6, 5) > 0.5).float()
    # published: main = BCE(all); focal = mean((1 - exp(-bce))^2 * bce) on column 4 (alpha 1, gamma 2);
    # total = 3 * main + 10 * (4 * focal + 4 * BCE(column 4))
    bce4 = F.binary_cross_entropy_with_logits(logits[:, 4], y[:, 4], reduction="none")
    focal = ((1 - torch.exp(-bce4)) ** 2 * bce4).mean()
    expected = 3 * F.binary_cross_entropy_with_logits(logits, y) + 10 * (4 * focal + 4 * bce4.mean())
    torch.testing.assert_close(authors_loss(logits, y), expected)
