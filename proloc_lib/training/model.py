"""The ProLoc-IHS fusion model, with the published code's defects available only as switches.

image tokens (B,T,Di) --proj--> (B,T,d) ---- queries ----\
                                                          cross-attention --> N blocks --> mean pool --> 5 logits
sequence tokens (B,L,Ds) --proj--> (B,L,d) -- keys/values /   (key padding mask applied)

``apply_mask=False`` reproduces the authors' unused padding mask, ``share_blocks=True`` their
single block applied N times, ``query="sequence"`` the reversed cross-attention ablation.

Checked against the published ``model.py`` (github xinshuaiiii/ProLoc-IHS, identical to the
earlier ``model1.py``): image and sequence projections are plain Linear layers to d_model; one
cross-attention (image queries, sequence keys/values, dropout on the attention weights, mask
not passed) whose output is used directly (``cross_residual=False``); then ONE self-attention +
feed-forward block applied ``num_layers`` times (``share_blocks=True``), each sub-layer
post-norm ``LayerNorm(x + sublayer(x))`` with no dropout on the residual branch
(``residual_dropout=False``), the feed-forward ``Linear(d, 4d) -> ReLU -> Dropout -> Linear(4d, d)``;
mean over all image tokens (CLS included); one Linear head. ``tests/training/test_model.py``
checks this model, with the published weights' names, against a plain-torch re-implementation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from proloc_lib.core.errors import UserError
from proloc_lib.training.settings import ModelSwitches, check_ranges, make_config


class PublishedWeightsError(UserError, ValueError):
    """A published weights file that cannot be read or does not fit the published model."""


@dataclass(kw_only=True)
class FusionConfig(ModelSwitches):
    seq_dim: int
    img_dim: int
    n_labels: int = 5

    INPUT_RANGES = {"seq_dim": dict(ge=1, le=65536), "img_dim": dict(ge=1, le=65536), "n_labels": dict(ge=1, le=1000)}

    def __post_init__(self):
        super().__post_init__()
        check_ranges(self, self.INPUT_RANGES)

    def to_dict(self) -> dict:
        return asdict(self)


class MaskSource:
    """Where a model's dropout masks come from when that is more than one generator: several
    runs stepped as one model (``training.stacked``), or masks drawn ahead of a compiled step
    (``training.capture``). Given to :meth:`FusionModel.use_generator` in place of a generator."""

    def keep(self, like: torch.Tensor, p: float) -> torch.Tensor:
        raise NotImplementedError


def dropout_keep(like: torch.Tensor, p: float, generator: "torch.Generator | MaskSource | None") -> torch.Tensor:
    """Inverted-dropout multiplier for ``like``: 0 where dropped, 1/(1-p) where kept.

    Drawn as uniform numbers from ``generator`` (the training run's own; None: torch's global
    one): a run's masks then depend only on its own draws, whatever else trains beside it, and on
    the CPU ``rand`` is about 3x faster than the ``bernoulli_`` that ``nn.Dropout`` uses.
    """
    if isinstance(generator, MaskSource):
        return generator.keep(like, p)
    if p >= 1:
        return torch.zeros_like(like)
    return keep_from_uniform(torch.rand(like.shape, generator=generator, device=like.device), p, like.dtype)


def keep_from_uniform(u: torch.Tensor, p: float, dtype: torch.dtype) -> torch.Tensor:
    """The dropout multiplier from uniform numbers ``u``: 0 where ``u < p``, 1/(1-p) elsewhere."""
    return (u >= p).to(dtype) * (1.0 / (1.0 - p))


class DrawsMasks:
    """A module whose dropout masks come from ``self.generator`` (set by ``FusionModel.use_generator``)."""
    generator: "torch.Generator | MaskSource | None" = None


class Dropout(nn.Module, DrawsMasks):
    """``nn.Dropout`` drawing its masks from ``self.generator`` (see :func:`dropout_keep`)."""

    def __init__(self, p: float):
        super().__init__()
        self.p, self.generator = p, None

    def forward(self, x):
        return x * dropout_keep(x, self.p, self.generator) if self.training and self.p > 0 else x

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Attention(nn.MultiheadAttention, DrawsMasks):
    """``nn.MultiheadAttention`` (the same parameters and names; batch first) whose dropout on the
    attention weights draws from ``self.generator``. Without that dropout (evaluation, or p=0)
    it is the parent's forward, with its fused kernels."""

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, average_attn_weights=True):
        if not (self.training and self.dropout > 0):
            return super().forward(query, key, value, key_padding_mask=key_padding_mask,
                                   need_weights=need_weights, average_attn_weights=average_attn_weights)
        (b, t, d), s, h = query.shape, key.shape[1], self.num_heads
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)

        def heads(x, w, bias, n):
            return F.linear(x, w, bias).view(b, n, h, d // h).transpose(1, 2)
        q, k, v = heads(query, w_q, b_q, t), heads(key, w_k, b_k, s), heads(value, w_v, b_v, s)
        scores = (q * (d // h) ** -0.5) @ k.transpose(-2, -1)
        if key_padding_mask is not None:
            scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        weights = scores.softmax(-1)
        weights = weights * dropout_keep(weights, self.dropout, self.generator)
        out = self.out_proj((weights @ v).transpose(1, 2).reshape(b, t, d))
        if not need_weights:
            return out, None
        return out, weights.mean(1) if average_attn_weights else weights


class Block(nn.Module):
    """Self-attention + feed-forward, each with a residual and post-LayerNorm."""

    def __init__(self, d: int, heads: int, ff_mult: int, dropout: float, attn_dropout: float,
                 activation: str = "gelu", residual_dropout: bool = True):
        super().__init__()
        self.attn = Attention(d, heads, dropout=attn_dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(d)
        act = nn.ReLU() if activation == "relu" else nn.GELU()
        self.ff = nn.Sequential(nn.Linear(d, ff_mult * d), act, Dropout(dropout), nn.Linear(ff_mult * d, d))
        self.norm2 = nn.LayerNorm(d)
        self.drop = Dropout(dropout) if residual_dropout else nn.Identity()

    def forward(self, x, pad_mask=None):
        a, _ = self.attn(x, x, x, key_padding_mask=pad_mask, need_weights=False)
        x = self.norm1(x + self.drop(a))
        return self.norm2(x + self.drop(self.ff(x)))


# The published CrossAttentionModel's parameter names -> ours (with share_blocks=True), so its
# state dict (e.g. the released best_model.pth) loads into FusionModel: ``load_published``.
PUBLISHED_KEYS = {
    "image_projection": "img_proj", "sequence_projection": "seq_proj", "cross_attention": "cross",
    "self_attention": "blocks.0.attn", "feed_forward": "blocks.0.ff", "layer_norm1": "blocks.0.norm1",
    "layer_norm2": "blocks.0.norm2", "classifier": "head",
}


def published_to_ours(state_dict: dict) -> dict:
    """Rename a published ``CrossAttentionModel`` state dict to ``FusionModel``'s names."""
    out = {}
    for key, value in state_dict.items():
        prefix, _, rest = key.partition(".")
        if prefix not in PUBLISHED_KEYS:
            raise KeyError(f"unexpected key in a published state dict: {key!r}")
        out[f"{PUBLISHED_KEYS[prefix]}.{rest}"] = value
    return out


class FusionModel(nn.Module):
    def __init__(self, cfg: FusionConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        attn_drop = cfg.dropout if cfg.attn_dropout is None else cfg.attn_dropout
        self.img_proj = nn.Linear(cfg.img_dim, d)
        self.seq_proj = nn.Linear(cfg.seq_dim, d)
        self.cross = Attention(d, cfg.n_heads, dropout=attn_drop, batch_first=True)
        self.cross_norm = nn.LayerNorm(d)
        n_distinct = min(1, cfg.n_blocks) if cfg.share_blocks else cfg.n_blocks
        self.blocks = nn.ModuleList(Block(d, cfg.n_heads, cfg.ff_mult, cfg.dropout, attn_drop, cfg.ff_activation,
                                          cfg.residual_dropout) for _ in range(n_distinct))
        self.drop = Dropout(cfg.dropout) if cfg.residual_dropout else nn.Identity()
        self.head = nn.Linear(d, cfg.n_labels)

    def use_generator(self, generator: "torch.Generator | MaskSource | None") -> None:
        """Every dropout mask from ``generator`` (a training run's own random stream, or a
        :class:`MaskSource`; None: torch's global one)."""
        for m in self.modules():
            if isinstance(m, DrawsMasks):
                m.generator = generator

    @classmethod
    def from_published_file(cls, path, *, n_heads: int = 8, n_blocks: int = 6) -> "FusionModel":
        """The published model from a file its ``train.py`` wrote (``torch.save(model.state_dict())``,
        e.g. the released ``best_model.pth``), read with ``torch.load(weights_only=True)`` (no
        pickled code runs) onto the CPU.

        Sizes (d_model, image and sequence dims, labels) come from the weights; ``n_heads`` and
        ``n_blocks`` do not show in them (the heads split d_model, the one block is applied
        ``n_blocks`` times), so they are given: the published ``train.py`` uses 8 and 6, its
        ``test.py`` loads ``best_model_heads_256.pth`` with 256 heads (d_model 512: 2 per head).
        """
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:   # unpickling refused, truncated file, not a torch file: all "not usable"
            raise PublishedWeightsError(f"{path}: not a readable weights file ({type(exc).__name__}: "
                                        f"{' '.join(str(exc).split())[:200]})") from None
        if not isinstance(state, dict) or "image_projection.weight" not in state:
            raise PublishedWeightsError(f"{path}: not a state dict of the published CrossAttentionModel "
                                        "(no image_projection.weight)")
        try:
            d_model, img_dim = state["image_projection.weight"].shape
            seq_dim = state["sequence_projection.weight"].shape[1]
            n_labels = state["classifier.weight"].shape[0]
        except (KeyError, ValueError, AttributeError) as exc:
            raise PublishedWeightsError(f"{path}: published weights lack or misshape {exc}") from None
        if d_model % n_heads:
            raise PublishedWeightsError(f"{path}: n_heads={n_heads} does not divide this model's d_model={d_model}")
        switches = make_config("authors", {"d_model": int(d_model), "n_heads": int(n_heads),
                                           "n_blocks": int(n_blocks)}).model_switches()
        model = cls(FusionConfig(seq_dim=int(seq_dim), img_dim=int(img_dim), n_labels=int(n_labels), **switches))
        try:
            model.load_published(state)
        except (KeyError, RuntimeError) as exc:
            raise PublishedWeightsError(f"{path}: {' '.join(str(exc).split())[:300]}") from None
        return model.eval()

    def load_published(self, state_dict: dict) -> None:
        """Load the published model's weights (needs the published architecture switches)."""
        if not self.cfg.share_blocks:
            raise ValueError("the published model shares one block across layers: use share_blocks=True")
        missing, unexpected = self.load_state_dict(published_to_ours(state_dict), strict=False)
        # cross_norm exists in every configuration but is unused when cross_residual=False
        missing = [k for k in missing if not (k.startswith("cross_norm.") and not self.cfg.cross_residual)]
        if missing or unexpected:
            raise KeyError(f"published weights do not fit: missing {missing}, unexpected {unexpected}")

    def _layers(self):
        return [self.blocks[0]] * self.cfg.n_blocks if self.cfg.share_blocks else list(self.blocks)

    def forward(self, img_tokens, seq_tokens, seq_mask, return_attention: bool = False):
        """img_tokens (B,T,Di); seq_tokens (B,L,Ds); seq_mask (B,L) bool, True = real residue."""
        pooled, weights = self.pooled(img_tokens, seq_tokens, seq_mask, return_attention)
        logits = self.head(pooled)
        return (logits, weights) if return_attention else logits

    def pooled(self, img_tokens, seq_tokens, seq_mask, return_attention: bool = False):
        """The pooled representation before the head (B, d), and the cross-attention weights."""
        if seq_mask.dtype != torch.bool:
            seq_mask = seq_mask.bool()
        img = self.img_proj(img_tokens)
        seq = self.seq_proj(seq_tokens)
        seq_pad = ~seq_mask
        if self.cfg.query == "image":
            q, kv, kv_pad, q_pad = img, seq, seq_pad, None
        else:
            q, kv, kv_pad, q_pad = seq, img, None, seq_pad
        attn_mask = kv_pad if self.cfg.apply_mask else None
        a, weights = self.cross(q, kv, kv, key_padding_mask=attn_mask, need_weights=return_attention,
                                average_attn_weights=True)
        # published: the attention output itself goes on (image content enters only through the weights)
        x = self.cross_norm(q + self.drop(a)) if self.cfg.cross_residual else a
        self_pad = q_pad if self.cfg.apply_mask else None
        for blk in self._layers():
            x = blk(x, self_pad)
        if q_pad is not None and self.cfg.apply_mask:
            keep = (~q_pad).unsqueeze(-1).to(x.dtype)
            pooled = (x * keep).sum(1) / keep.sum(1).clamp_min(1.0)
        else:
            pooled = x.mean(1)
        return pooled, weights
