"""The published-weights loader on a file written the way the published train.py writes it."""
import pytest
import torch
from torch import nn

# the plain-tensor re-implementation of the published forward, and the published key names
from test_published_model import published_forward, published_weights

from proloc_lib.training.model import FusionModel, PublishedWeightsError

DI, DS, C = 24, 20, 5


class PublishedStandIn(nn.Module):
    """Modules under the published CrossAttentionModel's attribute names (model.py), so that its
    ``state_dict()`` has the released file's keys and shapes; no forward needed."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.image_projection = nn.Linear(DI, d)
        self.sequence_projection = nn.Linear(DS, d)
        self.cross_attention = nn.MultiheadAttention(d, heads, dropout=0.5, batch_first=True)
        self.self_attention = nn.MultiheadAttention(d, heads, dropout=0.5, batch_first=True)
        self.feed_forward = nn.Sequential(nn.Linear(d, 4 * d), nn.ReLU(), nn.Dropout(0.5), nn.Linear(4 * d, d))
        self.layer_norm1 = nn.LayerNorm(d)
        self.layer_norm2 = nn.LayerNorm(d)
        self.classifier = nn.Linear(d, C)
        with torch.no_grad():                     # LayerNorms away from 1/0, so a mix-up would show
            for p in self.parameters():
                p.add_(0.1 * torch.randn_like(p))


def _saved(tmp_path, d, heads, name="best_model.pth"):
    torch.manual_seed(d + heads)
    published = PublishedStandIn(d, heads)
    path = tmp_path / name
    torch.save(published.state_dict(), path)      # what the published train.py does
    return path, {k: v.clone() for k, v in published.state_dict().items()}


def _inputs():
    g = torch.Generator().manual_seed(1)
    img, seq = torch.randn(3, 7, DI, generator=g), torch.randn(3, 11, DS, generator=g)
    mask = torch.ones(3, 11, dtype=torch.bool)
    mask[1, 6:] = False                           # padding present, and (as published) ignored
    return img, seq, mask


def test_a_file_saved_like_best_model_pth_loads_and_gives_the_published_logits(tmp_path):
    path, weights = _saved(tmp_path, d=32, heads=4)
    assert {k: v.shape for k, v in weights.items()} == {k: v.shape for k, v in published_weights().items()}
    model = FusionModel.from_published_file(path, n_heads=4, n_blocks=3)
    assert (model.cfg.d_model, model.cfg.img_dim, model.cfg.seq_dim, model.cfg.n_labels) == (32, DI, DS, C)
    assert model.cfg.share_blocks and not model.cfg.cross_residual and not model.training
    img, seq, mask = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(img, seq, mask), published_forward(weights, img, seq, 4, 3),
                                   rtol=1e-5, atol=1e-5)


def test_the_256_head_file_of_the_published_test_py_loads_with_256_heads(tmp_path):
    """best_model_heads_256.pth: d_model 512 split into 256 heads of 2. The weights have the same
    shapes for any head count, so the head count is an argument; the logits depend on it."""
    path, weights = _saved(tmp_path, d=512, heads=256, name="best_model_heads_256.pth")
    img, seq, mask = _inputs()
    m256 = FusionModel.from_published_file(path, n_heads=256, n_blocks=6)
    m8 = FusionModel.from_published_file(path, n_heads=8, n_blocks=6)
    with torch.no_grad():
        out256 = m256(img, seq, mask)
        torch.testing.assert_close(out256, published_forward(weights, img, seq, 256, 6), rtol=1e-4, atol=1e-4)
        assert not torch.allclose(out256, m8(img, seq, mask), atol=1e-3)


def test_a_head_count_that_does_not_split_d_model_is_one_line_naming_the_file(tmp_path):
    path, _ = _saved(tmp_path, d=32, heads=4)
    with pytest.raises(PublishedWeightsError, match=r"best_model\.pth: n_heads=256 does not divide .*d_model=32"):
        FusionModel.from_published_file(path, n_heads=256)


class Payload:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_weights_only_refuses_pickled_code_and_other_files(tmp_path, capsys):
    bad = tmp_path / "evil.pth"
    torch.save({"image_projection.weight": Payload()}, bad)
    with pytest.raises(PublishedWeightsError, match=r"evil\.pth: not a readable weights file"):
        FusionModel.from_published_file(bad)
    assert "pickled code ran" not in capsys.readouterr().out
    other = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(PublishedWeightsError, match="not a state dict of the published CrossAttentionModel"):
        FusionModel.from_published_file(other)
