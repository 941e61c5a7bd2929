"""Every switch of the published and the corrected protocol (``TrainConfig``) and the two named
configurations. No torch import."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import numbers
import typing
from dataclasses import asdict, dataclass, fields

# ``train_on``: which splits of the protein table a run learns from
TRAINING_SPLITS = {"train": ("train",), "train+val": ("train", "val")}
# switches added after the first release: hashed only when set away from these values
HASHED_ONLY_OFF_DEFAULT = {"train_on": "train", "end_token": "drop"}

# Allowed values of the numeric fields, in pydantic's words (ge, gt, le, lt): checked by every
# ``__post_init__`` (profiles, checkpoints and resume states alike) and, at ``proloc run --check``,
# by the profile schema. The upper bounds keep an absurd value (a typo, a hostile checkpoint)
# from being attempted at all.
_OPS = {"ge": (lambda v, b: v >= b, ">="), "gt": (lambda v, b: v > b, ">"),
        "le": (lambda v, b: v <= b, "<="), "lt": (lambda v, b: v < b, "<")}


def range_text(bounds: dict) -> str:
    """``{"ge": 1, "le": 64}`` -> ``'>= 1 and <= 64'``."""
    return " and ".join(f"{_OPS[op][1]} {b}" for op, b in bounds.items())


@functools.lru_cache(maxsize=None)
def _number_kinds(cls) -> dict:
    """{field: (integral, None allowed)} from the dataclass's annotations."""
    out = {}
    for name, tp in typing.get_type_hints(cls).items():
        args = typing.get_args(tp) or (tp,)
        out[name] = (int in args and float not in args, type(None) in args)
    return out


def check_ranges(obj, ranges: dict) -> None:
    """Raise ValueError naming the first field of ``obj`` outside its range (None passes where the
    field allows it)."""
    kinds = _number_kinds(type(obj))
    for name, bounds in ranges.items():
        v = getattr(obj, name)
        integral, optional = kinds[name]
        if v is None and optional:
            continue
        kind = numbers.Integral if integral else numbers.Real
        if isinstance(v, bool) or not isinstance(v, kind) or (isinstance(v, float) and not math.isfinite(v)):
            what = "an integer" if integral else "a finite number"
            raise ValueError(f"option {name}={v!r}: give {what} {range_text(bounds)}")
        if not all(_OPS[op][0](v, b) for op, b in bounds.items()):
            raise ValueError(f"option {name}={v!r}: must be {range_text(bounds)}")


@dataclass(kw_only=True)
class ModelSwitches:
    """The architecture and its published-vs-corrected switches: the one model schema.

    ``training.TrainConfig`` inherits these fields (one set of defaults); ``FusionConfig`` adds
    the input widths. Defaults are the corrected model; the published values are in the comments.
    """
    d_model: int = 512
    n_heads: int = 8
    n_blocks: int = 6
    ff_mult: int = 4
    ff_activation: str = "gelu"      # published: "relu"
    dropout: float = 0.1
    attn_dropout: float | None = None  # on attention weights; None: same as ``dropout``
    residual_dropout: bool = True    # dropout on the residual branches; published: False (only on
                                     # attention weights and inside the feed-forward, after the ReLU)
    cross_residual: bool = True      # cross-attention output added to its queries + LayerNorm;
                                     # published: False (the attention output is used directly)
    apply_mask: bool = True          # published: mask computed, never applied
    share_blocks: bool = False       # published: one block's weights reused for every layer
    query: str = "image"             # which modality asks: "image" (paper) or "sequence" (ablation)

    MODEL_CHOICES = {"ff_activation": ("gelu", "relu"), "query": ("image", "sequence")}
    MODEL_RANGES = {"d_model": dict(ge=1, le=8192), "n_heads": dict(ge=1, le=256), "n_blocks": dict(ge=0, le=64),
                    "ff_mult": dict(ge=1, le=64), "dropout": dict(ge=0, lt=1), "attn_dropout": dict(ge=0, lt=1)}

    def __post_init__(self):
        check_ranges(self, self.MODEL_RANGES)   # first: n_heads 0 must not reach the division below
        if self.d_model % self.n_heads:
            raise ValueError(f"option n_heads={self.n_heads}: d_model {self.d_model} is not divisible by it")
        for key, allowed in self.MODEL_CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"model option {key}={getattr(self, key)!r}: choose one of {allowed}")

    def model_switches(self) -> dict:
        """Only the architecture fields (what ``FusionConfig`` needs besides the input widths)."""
        return {f.name: getattr(self, f.name) for f in fields(ModelSwitches)}


@dataclass(kw_only=True)
class TrainConfig(ModelSwitches):
    """Every way the published setting differs from the corrected one is a switch here.

    The architecture switches come from ``model.ModelSwitches`` (one model schema); the fields
    below are the training protocol. Defaults are the corrected protocol; published values are
    in the comments and in ``NAMED_CONFIGS['authors']``.
    """
    optimizer: str = "adamw"         # authors: "adam"
    lr: float = 1e-4
    weight_decay: float = 0.01
    schedule: str = "warmup_cosine"  # authors: "constant"
    warmup_frac: float = 0.05
    grad_clip: float | None = 1.0    # max gradient norm; authors: None (no clipping)
    batch_size: int = 32
    bucket_batches: bool = True      # batches of similar sequence length
    batch_tokens: int | None = 16384  # with buckets: at most this many padded residues per batch
    padding: str = "batch"           # pad each batch to its own longest ("batch"); to the longest of its
                                     # split ("split": the published code, per file); of all splits ("global")
    targets: str = "protein"         # "protein": the union of the protein's labels; "image": the image
                                     # row's own label columns (the published loop)
    max_epochs: int = 30
    patience: int | None = 5         # None: no early stopping
    loss: str = "bce_focal"          # authors: "authors" (plasma-membrane-weighted)
    bce_weight: float = 1.0
    focal_weight: float = 1.0
    focal_gamma: float = 2.0
    select_on: str = "val_loss"      # authors: "train_loss"
    thresholds: str = "tuned"        # per-label, on validation; authors: "fixed" (0.5)
    amp: bool = True                 # mixed precision, on CUDA only
    images_per_protein: int | None = None  # ablation: train on at most this many images per protein
    pad_multiple: int = 1            # round each batch's padded width up to a multiple of this (fewer
                                     # distinct shapes for compiled kernels; masked models give the same output)
    train_on: str = "train"          # the proteins it learns from: "train" (validation held out for early
                                     # stopping and thresholds); authors: "train+val" (the published train.py
                                     # has no validation part: every non-test protein, the whole benchmark
                                     # train file; its validation loss is then only reported)
    end_token: str = "drop"          # the sequence's rows: its residues ("drop"), or the residues and the
                                     # ProtT5 end token's (</s>) row last ("keep"; authors: the published
                                     # prott5.py keeps it, so its files hold L + 1 rows, padded per file
                                     # to the longest L + 1)
    # -- execution only: how the runs are stepped, not what they compute (outside hash() and the resume key)
    stack_seeds: bool = False        # the seeds of this configuration stepped as one model with a leading
                                     # seed dimension (training.stacked); needs fixed batch shapes:
                                     # padding split/global, no bucket_batches, no float16 loss scaling.
                                     # For GPUs (fewer, larger kernels): on the CPU it is slower
    capture_step: str = "off"        # the fixed-shape step compiled once (training.capture): "cuda" (CUDA
                                     # graphs on a GPU, eager on the CPU), "always" (the CPU too), "off"

    CHOICES = {"optimizer": ("adam", "adamw"), "schedule": ("constant", "warmup_cosine"),
               "loss": ("bce_focal", "authors"), "select_on": ("val_loss", "train_loss"),
               "thresholds": ("fixed", "tuned"), "padding": ("batch", "split", "global"),
               "targets": ("protein", "image"), "train_on": tuple(TRAINING_SPLITS), "end_token": ("drop", "keep"),
               "capture_step": ("off", "cuda", "always")}
    RANGES = {"lr": dict(gt=0, le=10), "weight_decay": dict(ge=0, le=10), "warmup_frac": dict(ge=0, lt=1),
              "grad_clip": dict(gt=0, le=1e6), "batch_size": dict(ge=1, le=65536),
              "batch_tokens": dict(ge=1, le=10**9), "max_epochs": dict(ge=1, le=10000),
              "patience": dict(ge=1, le=10000), "bce_weight": dict(ge=0, le=1000), "focal_weight": dict(ge=0, le=1000),
              "focal_gamma": dict(ge=0, le=100), "images_per_protein": dict(ge=1, le=10000),
              "pad_multiple": dict(ge=1, le=4096)}
    # switches that change how runs execute, never their result: a run trained with or without them
    # has the same hash, resume key and checkpoint configuration hash
    EXECUTION_ONLY = ("stack_seeds", "capture_step")

    def __post_init__(self):
        super().__post_init__()
        check_ranges(self, self.RANGES)
        for key, allowed in self.CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"training option {key}={getattr(self, key)!r}: choose one of {allowed}")

    def run_problem(self) -> str | None:
        """What makes this configuration pointless to train as a profile's run (None: nothing).

        Not raised by ``__post_init__``: saved configs (checkpoints, resume states) keep loading;
        the profile check (``proloc run --check``) refuses them before any work."""
        if self.patience is not None and self.patience > self.max_epochs:
            return (f"option patience={self.patience}: more than max_epochs {self.max_epochs}, so early stopping "
                    "can never stop anything; lower it or set patience: null")
        if self.loss == "bce_focal" and self.bce_weight == 0 and self.focal_weight == 0:
            return "options bce_weight and focal_weight are both 0: the loss would be zero and nothing would be learnt"
        return None

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown training options {sorted(unknown)} (known: {sorted(known)})")
        return cls(**d)

    def hash(self) -> str:
        """The configuration's id: what its runs compute. Execution-only switches never enter it; a
        switch added after the first release enters it only away from its default, so every
        configuration that existed before keeps its hash (checkpoints, resume states)."""
        d = {k: v for k, v in asdict(self).items()
             if k not in self.EXECUTION_ONLY
             and not (k in HASHED_ONLY_OFF_DEFAULT and v == HASHED_ONLY_OFF_DEFAULT[k])}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]

    @property
    def training_splits(self) -> tuple[str, ...]:
        """The split names (of the protein table's ``split``) a run of this configuration trains on."""
        return TRAINING_SPLITS[self.train_on]



# The two named configurations. A profile's ``training.base`` (sizes, epochs) applies to both.
NAMED_CONFIGS = {
    "authors": dict(n_heads=8, n_blocks=6, share_blocks=True, apply_mask=False, dropout=0.5,
                    ff_activation="relu", residual_dropout=False, cross_residual=False, optimizer="adam",
                    lr=1e-5, weight_decay=0.0, schedule="constant", grad_clip=None, batch_size=2,
                    bucket_batches=False, padding="split", targets="image", loss="authors",
                    select_on="train_loss", patience=None, thresholds="fixed", amp=False, train_on="train+val",
                    end_token="keep"),
    "corrected": dict(apply_mask=True, share_blocks=False, attn_dropout=0.0, ff_activation="gelu",
                      residual_dropout=True, cross_residual=True, loss="bce_focal", optimizer="adamw",
                      schedule="warmup_cosine", grad_clip=1.0, bucket_batches=True, padding="batch",
                      targets="protein", select_on="val_loss", thresholds="tuned", amp=True, train_on="train",
                      end_token="drop"),
}


def make_config(name: str, base: dict | None = None, **overrides) -> TrainConfig:
    """Named configuration + the profile's base settings + explicit switches (ablations)."""
    if name not in NAMED_CONFIGS:
        raise ValueError(f"unknown training configuration '{name}' (known: {sorted(NAMED_CONFIGS)})")
    return TrainConfig.from_dict({**NAMED_CONFIGS[name], **(base or {}), **overrides})


def train_config_dict(cfg: TrainConfig) -> dict:
    return asdict(cfg)
