"""The `authors` configuration against an independent re-implementation of the published forward.

The reference below is written from the published code's description (github xinshuaiiii/ProLoc-IHS,
model.py): plain tensor operations, the published parameter names, no nn.MultiheadAttention. The same
weights go into our FusionModel through ``load_published``; the logits must agree.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from proloc_lib.training.model import (
    Dropout,
    FusionConfig,
    FusionModel,
    published_to_ours,
)
from proloc_lib.training.settings import NAMED_CONFIGS, make_config

D, HEADS, LAYERS, DI, DS, C = 32, 4, 3, 24, 20, 5


def published_weights(seed=0):
    """A random state dict with the published CrossAttentionModel's names and shapes."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g) * 0.3
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
    split = lambda t: t.reshape(b, t.shape[1], heads, d // heads).transpose(1, 2)
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
    assert (a["share_blocks"], a["apply_mask"], a["cross_residual"], a["residual_dropout"]) == (True, False, False, False)
    assert a["ff_activation"] == "relu" and a["dropout"] == 0.5 and a.get("attn_dropout") is None  # 0.5 on weights too
    assert (a["optimizer"], a["lr"], a["weight_decay"], a["schedule"], a["grad_clip"]) == ("adam", 1e-5, 0.0, "constant", None)
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


def test_authors_loss_is_the_published_multi_task_loss():
    from proloc_lib.training.losses import authors_loss

    torch.manual_seed(1)
    logits, y = torch.randn(6, 5), (torch.rand(6, 5) > 0.5).float()
    # published: main = BCE(all); focal = mean((1 - exp(-bce))^2 * bce) on column 4 (alpha 1, gamma 2);
    # total = 3 * main + 10 * (4 * focal + 4 * BCE(column 4))
    bce4 = F.binary_cross_entropy_with_logits(logits[:, 4], y[:, 4], reduction="none")
    focal = ((1 - torch.exp(-bce4)) ** 2 * bce4).mean()
    expected = 3 * F.binary_cross_entropy_with_logits(logits, y) + 10 * (4 * focal + 4 * bce4.mean())
    torch.testing.assert_close(authors_loss(logits, y), expected)
