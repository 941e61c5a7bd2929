"""The fusion model: the padding mask is honoured, switches do what they say, it learns, and the
`authors` configuration equals an independent re-implementation of the published forward, also when
loaded from a file saved the way the published train.py saves it."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from proloc_lib.features.batching import pad_batch
from proloc_lib.training.losses import bce_focal_loss
from proloc_lib.training.model import (
    Attention,
    Dropout,
    FusionConfig,
    FusionModel,
    PublishedWeightsError,
    published_to_ours,
)
from proloc_lib.training.settings import NAMED_CONFIGS, make_config


def small(**kw):
    torch.manual_seed(0)
    cfg = FusionConfig(seq_dim=12, img_dim=10, d_model=16, n_heads=2, n_blocks=2, dropout=0.0, **kw)
    return FusionModel(cfg).eval()


def batch():
    torch.manual_seed(1)
    seqs = [torch.randn(7, 12), torch.randn(3, 12)]
    seq, mask = pad_batch(seqs)
    return torch.randn(2, 5, 10), seq, mask


def test_padded_content_does_not_change_output_with_mask():
    model = small()
    img, seq, mask = batch()
    out1 = model(img, seq, mask)
    seq2 = seq.clone()
    seq2[~mask] = torch.randn(int((~mask).sum()), 12) * 100
    torch.testing.assert_close(model(img, seq2, mask), out1, rtol=0, atol=1e-6)
    # and equals the unpadded sample alone
    torch.testing.assert_close(model(img[1:], seq[1:, :3], mask[1:, :3]), out1[1:], rtol=0, atol=1e-5)


def test_mask_off_makes_output_depend_on_padding():
    model = small(apply_mask=False)
    img, seq, mask = batch()
    seq2 = seq.clone()
    seq2[~mask] = 5.0
    assert not torch.allclose(model(img, seq2, mask), model(img, seq, mask))


def test_reverse_direction_pools_only_real_residues():
    model = small(query="sequence")
    img, seq, mask = batch()
    seq2 = seq.clone()
    seq2[~mask] = 7.0
    torch.testing.assert_close(model(img, seq2, mask), model(img, seq, mask), rtol=0, atol=1e-6)


def test_shared_blocks_have_one_set_of_weights():
    shared, indep = small(share_blocks=True), small()
    n_shared = sum(p.numel() for p in shared.blocks.parameters())
    n_indep = sum(p.numel() for p in indep.blocks.parameters())
    assert len(shared.blocks) == 1 and len(shared._layers()) == 2
    assert n_indep == 2 * n_shared


def test_config_validation():
    with pytest.raises(ValueError, match="divisible"):
        FusionConfig(seq_dim=4, img_dim=4, d_model=10, n_heads=3)
    with pytest.raises(ValueError, match="query"):
        FusionConfig(seq_dim=4, img_dim=4, d_model=8, n_heads=2, query="text")


def test_model_learns_a_learnable_signal_far_below_label_frequency():
    """Labels are a function of which 'motif' token is present in the sequence."""
    g = torch.Generator().manual_seed(0)
    n, L, n_lab = 96, 12, 5
    motifs = torch.randn(n_lab, 12, generator=g) * 3
    y = (torch.rand(n, n_lab, generator=g) < 0.4).float()
    seqs = []
    for i in range(n):
        length = int(torch.randint(4, L, (1,), generator=g))
        s = torch.randn(length, 12, generator=g) * 0.3
        for j in torch.nonzero(y[i]).flatten():
            s[int(torch.randint(0, length, (1,), generator=g))] += motifs[j]
        seqs.append(s)
    seq, mask = pad_batch(seqs)
    img = torch.randn(n, 4, 10, generator=g)
    torch.manual_seed(0)
    model = FusionModel(FusionConfig(seq_dim=12, img_dim=10, d_model=32, n_heads=4, n_blocks=1, dropout=0.0))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = bce_focal_loss(model(img, seq, mask), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    prior = y.mean(0, keepdim=True).clamp(1e-4, 1 - 1e-4).expand_as(y)
    freq_loss = bce_focal_loss(torch.logit(prior), y)
    assert loss.item() < 0.3 * freq_loss.item(), (loss.item(), freq_loss.item())


def test_attention_with_weight_dropout_is_multihead_attention_plus_dropout():
    """model.Attention's own training path (dropout on the weights from the run's generator) computes
    what nn.MultiheadAttention computes: with a keep-everything dropout it equals the parent's
    output, key-padding mask and averaged weights included; with p=0.5 about half the weights go."""
    torch.manual_seed(0)
    attn = Attention(16, 4, dropout=0.5, batch_first=True)
    q, kv = torch.randn(3, 7, 16), torch.randn(3, 9, 16)
    pad = torch.zeros(3, 9, dtype=torch.bool)
    pad[1, 5:] = True
    attn.eval()
    want, want_w = attn(q, kv, kv, key_padding_mask=pad, need_weights=True)
    attn.train()
    attn.dropout = 1e-12   # the training path, keeping every weight
    got, got_w = attn(q, kv, kv, key_padding_mask=pad, need_weights=True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_w, want_w, rtol=1e-5, atol=1e-6)
    attn.dropout = 0.5
    attn.generator = torch.Generator().manual_seed(1)
    _, w = attn(q, kv, kv, key_padding_mask=pad, need_weights=True, average_attn_weights=False)
    kept = (w[~pad[:, None, None, :].expand_as(w)] > 0).float().mean()
    assert 0.4 < kept < 0.6
    attn.generator = torch.Generator().manual_seed(1)   # the same generator state: the same masks
    _, w2 = attn(q, kv, kv, key_padding_mask=pad, need_weights=True, average_attn_weights=False)
    assert torch.equal(w, w2)


def test_dropout_draws_from_its_generator_and_scales_what_it_keeps():
    drop = Dropout(0.25).train()
    x = torch.ones(2000)
    drop.generator = torch.Generator().manual_seed(3)
    a = drop(x)
    drop.generator = torch.Generator().manual_seed(3)
    assert torch.equal(a, drop(x))
    torch.testing.assert_close(a.unique(), torch.tensor([0.0, 1 / 0.75]))
    assert abs((a == 0).float().mean().item() - 0.25) < 0.04
    assert torch.equal(drop.eval()(x), x)



# -- the published forward ---------------------------------------------------------------------------
# The reference below is written from the published code's description (github xinshuaiiii/ProLoc-IHS,
# model.py): plain tensor operations, the published parameter names, no nn.MultiheadAttention. The same
# weights go into our FusionModel through ``load_published``; the logits must agree.
D, HEADS, LAYERS, DI, DS, C = 32, 4, 3, 24, 20, 5


def published_weights(seed=0):
    """A random state dict with the published CrossAttentionModel's names and shapes."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.3
    sd = {"image_projection.weight": r(D, DI), "image_projection.bias": r(D),
          "sequence_projection.weight": r(D, DS), "sequence_projection.bias": r(D),
          "feed_forward.0.weight": r(4 * D, D), "feed_forward.0.bias": r(4 * D),
          "feed_forward.3.weight": r(D, 4 * D), "feed_forward.3.bias": r(D),
          "classifier.weight": r(C, D), "classifier.bias": r(C)}
    for att in ("cross_attention", "self_attention"):
        sd.update({f"{att}.in_proj_weight": r(3 * D, D), f"{att}.in_proj_bias": r(3 * D),
                   f"{att}.out_proj.weight": r(D, D), f"{att}.out_proj.bias": r(D)})
    for ln in ("layer_norm1", "layer_norm2"):
        sd.update({f"{ln}.weight": 1 + r(D), f"{ln}.bias": r(D)})
    return sd


def attention(x_q, x_kv, w, prefix, heads):
    """softmax(Q K^T / sqrt(d_h)) V per head, then the output projection (no mask: the published
    code computes key_padding_mask and never passes it)."""
    wq, wk, wv = w[f"{prefix}.in_proj_weight"].chunk(3)
    bq, bk, bv = w[f"{prefix}.in_proj_bias"].chunk(3)
    q, k, v = x_q @ wq.T + bq, x_kv @ wk.T + bk, x_kv @ wv.T + bv
    b, tq, d = q.shape

    def split(t):
        return t.reshape(b, t.shape[1], heads, d // heads).transpose(1, 2)
    q, k, v = split(q), split(k), split(v)
    att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), dim=-1)
    out = (att @ v).transpose(1, 2).reshape(b, tq, d)
    return out @ w[f"{prefix}.out_proj.weight"].T + w[f"{prefix}.out_proj.bias"]


def published_forward(w, img, seq, heads, layers):
    img = img @ w["image_projection.weight"].T + w["image_projection.bias"]
    seq = seq @ w["sequence_projection.weight"].T + w["sequence_projection.bias"]
    x = attention(img, seq, w, "cross_attention", heads)          # output used directly
    for _ in range(layers):                                       # the same weights each time
        x = F.layer_norm(x + attention(x, x, w, "self_attention", heads), (x.shape[-1],),
                         w["layer_norm1.weight"], w["layer_norm1.bias"])
        ff = torch.relu(x @ w["feed_forward.0.weight"].T + w["feed_forward.0.bias"])
        ff = ff @ w["feed_forward.3.weight"].T + w["feed_forward.3.bias"]
        x = F.layer_norm(x + ff, (x.shape[-1],), w["layer_norm2.weight"], w["layer_norm2.bias"])
    return x.mean(dim=1) @ w["classifier.weight"].T + w["classifier.bias"]


def authors_model():
    tcfg = make_config("authors", {"d_model": D, "n_heads": HEADS, "n_blocks": LAYERS})
    return FusionModel(FusionConfig(seq_dim=DS, img_dim=DI, n_labels=C, **tcfg.model_switches()))


def test_authors_model_equals_the_published_forward():
    torch.manual_seed(0)
    w = published_weights()
    model = authors_model()
    model.load_published(w)
    model.eval()                                   # dropout off: the comparison is deterministic
    img, seq = torch.randn(3, 7, DI), torch.randn(3, 11, DS)
    mask = torch.ones(3, 11, dtype=torch.bool)
    mask[1, 6:] = False                            # padding present, and (as published) ignored
    with torch.no_grad():
        ours = model(img, seq, mask)
        ref = published_forward(w, img, seq, HEADS, LAYERS)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    # The reference is sensitive to what we claim matters: a residual after cross-attention or GELU
    # in the feed-forward would change the logits.
    model.cfg.cross_residual = True
    with torch.no_grad():
        assert not torch.allclose(model(img, seq, mask), ref, atol=1e-3)


def test_authors_switches_are_the_published_values():
    a = NAMED_CONFIGS["authors"]
    assert ((a["share_blocks"], a["apply_mask"], a["cross_residual"], a["residual_dropout"])
            == (True, False, False, False))
    assert a["ff_activation"] == "relu" and a["dropout"] == 0.5 and a.get("attn_dropout") is None  # 0.5 on weights too
    assert ((a["optimizer"], a["lr"], a["weight_decay"], a["schedule"], a["grad_clip"])
            == ("adam", 1e-5, 0.0, "constant", None))
    assert (a["batch_size"], a["padding"], a["targets"], a["loss"]) == (2, "split", "image", "authors")
    assert (a["select_on"], a["patience"], a["thresholds"], a["amp"]) == ("train_loss", None, "fixed", False)
    assert (a["d_model"] if "d_model" in a else 512, a["n_heads"], a["n_blocks"]) == (512, 8, 6)


def test_authors_dropout_sits_only_on_attention_weights_and_inside_the_feed_forward():
    model = authors_model()
    drops = {name: m.p for name, m in model.named_modules() if isinstance(m, Dropout)}
    assert drops == {"blocks.0.ff.2": 0.5}         # after the ReLU; no residual-branch dropout
    assert model.cross.dropout == 0.5 and model.blocks[0].attn.dropout == 0.5
    assert len(model.blocks) == 1


def test_published_names_map_completely():
    mapped = published_to_ours(published_weights())
    ours = set(authors_model().state_dict())
    assert set(mapped) == ours - {"cross_norm.weight", "cross_norm.bias"}   # unused without the cross residual
    with pytest.raises(KeyError, match="unexpected key"):
        published_to_ours({"pooler.weight": torch.zeros(1)})


# -- a weights file in the published format ---------------------------------------------------------
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
