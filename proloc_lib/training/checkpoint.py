"""The checkpoint: one typed object, written by training and read by ``predict``.

On disk: ``model.safetensors`` (weights, no pickle) + ``config.json`` (everything else).
``Checkpoint.load`` validates the JSON before any weights are read, in this one place:

* labels: distinct names, as many as the model's ``n_labels``, equal (names and order) to the
  labels the caller expects, and to the labels recorded inside the weights file at save time
  (``config.json`` can be edited by hand; the weights' own metadata cannot drift from the
  head rows they describe);
* encoder configs: only allow-listed keys, plain values, model names that are hub / timm ids.
  A checkpoint may never name a file to load (timm's ``checkpoint_path``, ``pretrained_cfg``
  with a ``file``, a ``local-dir:`` model, a local folder as a hub id): the fingerprints are
  computed from the very config that would load the file, so they cannot catch it.

* weights: sizes in config.json within ``TrainConfig``'s ranges, then the tensors the declared
  model needs compared with the safetensors header (names, shapes, float dtypes) before any
  model is built or tensor read (a config declaring 10^8 blocks allocates nothing), then every
  tensor finite.

Errors are ``CheckpointError`` (a ``errors.UserError``: one line naming the file, exit code 2).
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from proloc_lib.core.errors import UserError
from proloc_lib.core.fileio import SafetensorsHeaderError, publish, read_safetensors_header, write_text
from proloc_lib.features.encoders import IMAGE_KEYS, SEQUENCE_KEYS
from proloc_lib.training.model import FusionConfig, FusionModel
from proloc_lib.training.settings import TrainConfig

WEIGHTS, CONFIG = "model.safetensors", "config.json"
FORMAT = "proloc-checkpoint/1"
REQUIRED_KEYS = ("model", "labels", "thresholds", "encoders", "sequence_encoder", "image_encoder")
ENCODER_KEYS = ("sequence", "image", "max_residues", "long_policy")
OPTIONAL_ENCODER_KEYS = ("crop_grid", "jpeg_draft")   # jpeg_draft: extraction decoded JPEGs at draft size
LONG_POLICIES = ("truncate", "windows")

# Architecture keys a random-weight encoder may set (allow-list: anything else, e.g. timm's
# checkpoint_path / pretrained_cfg / pretrained_cfg_overlay, would let a config load a file).
VIT_OVERRIDE_KEYS = frozenset({
    "img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias",
    "qk_norm", "init_values", "class_token", "no_embed_class", "reg_tokens", "pre_norm", "fc_norm",
    "global_pool", "dynamic_img_size", "drop_rate", "pos_drop_rate", "proj_drop_rate", "attn_drop_rate",
    "drop_path_rate"})
T5_CONFIG_KEYS = frozenset({
    "d_model", "d_ff", "num_layers", "num_heads", "d_kv", "relative_attention_num_buckets",
    "relative_attention_max_distance", "feed_forward_proj", "layer_norm_epsilon", "dropout_rate",
    "initializer_factor"})
NESTED = {"sequence": {"config": T5_CONFIG_KEYS}, "image": {"overrides": VIT_OVERRIDE_KEYS}}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*\Z")           # a plain word: timm names, revisions, options
_WORDS = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+ -]*\Z")         # option values: 'bicubic', 'plain resize'
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?\Z")  # org/name


class CheckpointError(UserError, ValueError):
    """A checkpoint folder whose files or config.json are missing, malformed or unsafe."""


class CheckpointMismatchError(CheckpointError):
    """Labels, encoders or sizes differ from what the model was trained on."""


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


# -- validation --------------------------------------------------------------------------------
def _plain_value(value, where: str, cfg_path: Path) -> None:
    """Scalars, lists or objects of them; strings must be plain words (no paths, URLs, schemes)."""
    if isinstance(value, dict):  # e.g. a preprocessing block: its keys are the loader's business
        for k, v in value.items():
            _plain_value(v, f"{where}.{k}", cfg_path)
        return
    items = value if isinstance(value, list) else [value]
    for v in items:
        if v is None or isinstance(v, (bool, int, float)):
            continue
        if isinstance(v, str) and _WORDS.match(v) and ".." not in v:
            continue
        raise CheckpointError(f"{cfg_path}: {where} = {v!r} is not allowed (only numbers, booleans and plain "
                              f"names; a checkpoint may not name files or URLs)")


def check_encoder_config(kind: str, cfg, cfg_path: Path) -> None:
    """Allow-listed keys and plain values only; the model id must not name a local file or folder."""
    where = f"encoders.{kind}"
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{cfg_path}: '{where}' must be an object, got {type(cfg).__name__}")
    allowed = SEQUENCE_KEYS if kind == "sequence" else IMAGE_KEYS
    unknown = sorted(set(cfg) - set(allowed))
    if unknown:
        raise CheckpointError(f"{cfg_path}: key(s) {unknown} not allowed in '{where}' (allowed: {sorted(allowed)})")
    for key, value in cfg.items():
        if key == "model":
            continue
        sub = NESTED[kind].get(key)
        if sub is None:
            _plain_value(value, f"{where}.{key}", cfg_path)
            continue
        if not isinstance(value, dict):
            raise CheckpointError(f"{cfg_path}: '{where}.{key}' must be an object")
        bad = sorted(set(value) - sub)
        if bad:
            raise CheckpointError(f"{cfg_path}: key(s) {bad} not allowed in '{where}.{key}' "
                                  f"(allowed: {sorted(sub)}; a checkpoint may not name files to load)")
        for k, v in value.items():
            _plain_value(v, f"{where}.{key}.{k}", cfg_path)
    model = cfg.get("model")
    # timm: 'name' or 'name.tag' ('hf-hub:' / 'local-dir:' schemes load other files);
    # transformers: a hub id 'org/name' that is not also a local folder (which it would read).
    pattern = _HUB_ID if kind == "sequence" else _NAME
    if not isinstance(model, str) or not pattern.match(model) or ".." in model:
        raise CheckpointError(f"{cfg_path}: '{where}.model' = {model!r} is not a model id "
                              f"({'org/name' if kind == 'sequence' else 'a timm model name'}; "
                              f"a checkpoint may not name files to load)")
    if kind == "sequence" and cfg.get("pretrained") and Path(model).exists():
        raise CheckpointError(f"{cfg_path}: '{where}.model' = {model!r} is also a local path, which the loader "
                              f"would read instead of the hub model; run from another folder")


def _check_labels(labels, n_labels: int, expected, cfg_path: Path) -> None:
    if (not isinstance(labels, list) or not all(isinstance(x, str) for x in labels)
            or len(labels) != n_labels or len(set(labels)) != len(labels)):
        raise CheckpointMismatchError(f"{cfg_path}: 'labels' must list {n_labels} distinct names "
                                      f"(model n_labels), got {labels!r}")
    if expected is None or list(expected) == labels:
        return
    expected = list(expected)
    if sorted(expected) == sorted(labels):
        raise CheckpointMismatchError(f"{cfg_path}: labels {labels} are in another order than expected {expected}; "
                                      f"the probability columns would be mislabelled")
    raise CheckpointMismatchError(f"{cfg_path}: labels {labels} differ from the expected {expected} "
                                  f"(missing {sorted(set(expected) - set(labels))}, "
                                  f"unexpected {sorted(set(labels) - set(expected))})")


def validate_config(meta, cfg_path: Path, *, labels=None) -> dict:
    """Check a checkpoint's config.json content; returns it unchanged."""
    if not isinstance(meta, dict):
        raise CheckpointError(f"{cfg_path} must hold a JSON object, got {type(meta).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise CheckpointError(f"{cfg_path} lacks required key(s) {missing}")
    for key in ("model", "encoders", "sequence_encoder", "image_encoder"):
        if not isinstance(meta[key], dict):
            raise CheckpointError(f"{cfg_path}: '{key}' must be an object")
    enc = meta["encoders"]
    missing = [k for k in ENCODER_KEYS if k not in enc]
    if missing:
        raise CheckpointError(f"{cfg_path} lacks required key(s) {['encoders.' + k for k in missing]}")
    unknown = sorted(set(enc) - set(ENCODER_KEYS) - set(OPTIONAL_ENCODER_KEYS))
    if unknown:
        raise CheckpointError(f"{cfg_path}: key(s) {unknown} not allowed in 'encoders' "
                              f"(allowed: {list(ENCODER_KEYS + OPTIONAL_ENCODER_KEYS)})")
    if enc["long_policy"] not in LONG_POLICIES:
        raise CheckpointError(f"{cfg_path}: encoders.long_policy must be 'truncate' or 'windows', "
                              f"got {enc['long_policy']!r}")
    for key, default in (("max_residues", None), ("crop_grid", 1)):
        v = enc.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise CheckpointError(f"{cfg_path}: encoders.{key} must be a positive integer, got {v!r}")
    if not isinstance(enc.get("jpeg_draft", False), bool):
        raise CheckpointError(f"{cfg_path}: encoders.jpeg_draft must be true or false, got {enc['jpeg_draft']!r}")
    for kind in ("sequence", "image"):
        check_encoder_config(kind, enc[kind], cfg_path)
    if not isinstance(meta.get("training_images", {}), dict):
        raise CheckpointError(f"{cfg_path}: 'training_images' must be an object")
    for key in ("seq_dim", "img_dim"):
        if key not in meta["model"]:
            raise CheckpointError(f"{cfg_path} lacks required key 'model.{key}'")
    model = meta["model"]
    sizes = ("seq_dim", "img_dim", "n_labels", "d_model", "n_heads", "ff_mult")
    bad = [k for k in sizes if isinstance(model.get(k), int) and not isinstance(model[k], bool) and model[k] < 1]
    if bad:
        raise CheckpointError(f"{cfg_path}: model {', '.join(f'{k}={model[k]!r}' for k in bad)}: "
                              f"sizes must be positive integers")
    try:  # types and ranges (TrainConfig's): nothing absurd is ever built
        mcfg = FusionConfig(**model)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{cfg_path}: bad 'model' config: {' '.join(str(exc).split())[:300]}") from None
    n_labels = mcfg.n_labels
    _check_labels(meta["labels"], n_labels, labels, cfg_path)
    thr = meta["thresholds"]
    try:
        t = np.asarray(thr, dtype=np.float64)
    except (TypeError, ValueError):
        t = np.full(1, np.nan)
    if t.shape != (n_labels,) or np.isnan(t).any() or ((t < 0) | (t > 1)).any():
        raise CheckpointError(f"{cfg_path}: 'thresholds' must be {n_labels} numbers in [0, 1], got {thr!r}")
    fallback = meta.get("threshold_fallback", [])
    if (not isinstance(fallback, list) or not all(isinstance(x, str) for x in fallback)
            or not set(fallback) <= set(meta["labels"])):
        raise CheckpointError(f"{cfg_path}: 'threshold_fallback' must list label names of 'labels', got {fallback!r}")
    if trained_end_token(meta) not in END_TOKENS:
        raise CheckpointError(f"{cfg_path}: training.end_token must be one of {END_TOKENS}, "
                              f"got {trained_end_token(meta)!r}")
    # the dims the model was built for must be the hidden sizes of the features it was fed
    for kind, dim in (("sequence", "seq_dim"), ("image", "img_dim")):
        stored = meta[f"{kind}_encoder"].get("hidden_size")
        if stored is not None and stored != meta["model"][dim]:
            raise CheckpointMismatchError(
                f"{cfg_path}: model {dim} is {meta['model'][dim]} but the stored {kind} encoder "
                f"fingerprint has hidden size {stored}")
    return meta


def trained_end_token(meta: dict) -> str:
    """The sequence rows the model was trained on (``TrainConfig.end_token``): "keep" (residues and
    the ``</s>`` row last) or "drop" (residues); checkpoints written before the switch: "drop"."""
    training = meta.get("training")
    return training.get("end_token", "drop") if isinstance(training, dict) else "drop"


def read_config(ckpt_dir: str | Path, *, labels=None) -> dict:
    """config.json of a checkpoint folder, validated (no weights read)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        what = "is not a folder" if ckpt_dir.exists() else "not found"
        raise CheckpointError(f"checkpoint folder {ckpt_dir} {what} (expected {CONFIG} + {WEIGHTS} inside)")
    cfg_path, weights = ckpt_dir / CONFIG, ckpt_dir / WEIGHTS
    for f in (cfg_path, weights):
        if not f.is_file():
            raise CheckpointError(f"checkpoint {ckpt_dir} lacks {f.name} (expected {f})")
    try:
        meta = json.loads(cfg_path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise CheckpointError(f"{cfg_path} is not UTF-8 text (a JSON file is expected)") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{cfg_path} is not valid JSON: {exc}") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {cfg_path}: {exc.strerror or exc}") from None
    return validate_config(meta, cfg_path, labels=labels)


END_TOKENS = TrainConfig.CHOICES["end_token"]
MAX_HEADER = 16 << 20          # bytes of safetensors header: a fusion model's is a few kB
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")


def weights_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{tensor name: (dtype, shape)} from a safetensors file's header alone (no tensor is read),
    after checking that the file is as long as the header says."""
    try:
        header, _ = read_safetensors_header(path, max_header=MAX_HEADER)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from None
    except SafetensorsHeaderError as exc:
        if exc.kind == "length":
            raise CheckpointError(f"{path} is truncated or padded: {exc}") from None
        if exc.kind == "short":
            raise CheckpointError(f"{path} is not a readable safetensors file (truncated or garbage header)") from None
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from None
    out = {}
    try:
        for name, entry in header.items():
            out[name] = (str(entry["dtype"]), tuple(int(d) for d in entry["shape"]))
    except (TypeError, KeyError, IndexError, ValueError):
        raise CheckpointError(f"{path} is not a readable safetensors file (malformed tensor entries)") from None
    return out


def expected_shapes(cfg: FusionConfig) -> dict[str, tuple[int, ...]]:
    """The tensors the model of ``cfg`` holds, from a model on the meta device (nothing allocated)."""
    with torch.device("meta"):
        model = FusionModel(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_weights_fit(path: Path, cfg: FusionConfig, cfg_path: Path) -> None:
    """The weights file holds exactly the tensors (names, shapes, float dtypes) that config.json's
    model declares: compared from the header, before any model is built or tensor read."""
    have, want = weights_header(path), expected_shapes(cfg)
    missing, unexpected = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing or unexpected:
        raise CheckpointError(f"{path} does not fit the model in {cfg_path.name}: "
                              + "; ".join(f"{what} {_names(keys)}" for what, keys in
                                          (("missing", missing), ("unexpected", unexpected)) if keys))
    for name, shape in want.items():
        dtype, got = have[name]
        if got != shape:
            raise CheckpointError(f"{path}: tensor '{name}' has shape {list(got)}, the model in {cfg_path.name} "
                                  f"needs {list(shape)}")
        if dtype not in FLOAT_DTYPES:
            raise CheckpointError(f"{path}: tensor '{name}' is {dtype}, not a floating-point weight")


def _names(keys: list[str], n: int = 3) -> str:
    return ", ".join(f"'{k}'" for k in keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def _read_weights(path: Path, device: str):
    """(state dict, metadata) from a safetensors file; a damaged file is named, not a traceback;
    a tensor holding NaN or infinity is refused, named."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device=device) as fh:
            meta = fh.metadata() or {}
            state = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # SafetensorError, OSError, HeaderTooLarge...: all mean "not usable"
        raise CheckpointError(f"{path} is not a readable safetensors file ({type(exc).__name__}: "
                              f"{' '.join(str(exc).split())[:200]})") from None
    for name, t in state.items():
        if not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{path}: tensor '{name}' holds NaN or infinite values; these weights cannot "
                                  "predict anything (did training diverge?)")
    return state, meta


# -- the object --------------------------------------------------------------------------------
@dataclass(kw_only=True)
class Checkpoint:
    model: "FusionModel"  # noqa: F821
    run_id: str
    labels: list[str]
    label_map: str
    thresholds: list[float]
    training: dict
    config_hash: str
    encoders: dict                      # sequence/image encoder configs, max_residues, long_policy
    sequence_encoder: dict              # the sequence store's fingerprint
    image_encoder: dict                 # the image store's fingerprint
    provenance: dict = field(default_factory=dict)
    # labels whose threshold is the fallback (no positive in validation, nothing to tune on)
    threshold_fallback: list[str] = field(default_factory=list)
    # size and intensity of the training images (data.images.summarize_image_statistics), which
    # predict compares new images with; empty in checkpoints written before it was recorded
    training_images: dict = field(default_factory=dict)

    def meta(self) -> dict:
        """config.json's content."""
        return {"model": self.model.cfg.to_dict(), "run_id": self.run_id, "labels": list(self.labels),
                "label_map": self.label_map, "thresholds": [float(t) for t in self.thresholds],
                "threshold_fallback": list(self.threshold_fallback),
                "training": self.training, "config_hash": self.config_hash, "encoders": self.encoders,
                "sequence_encoder": self.sequence_encoder, "image_encoder": self.image_encoder,
                "provenance": self.provenance,
                **({"training_images": self.training_images} if self.training_images else {})}

    def save(self, out_dir: str | Path) -> Path:
        """Write both files (each whole or not at all, with the user's umask permissions).

        The label names are also recorded in the weights file's metadata, so that a
        config.json edited later (labels renamed or reordered) is caught by ``load``.
        """
        from safetensors.torch import save_file

        out_dir = Path(out_dir)
        meta = json.loads(json.dumps(self.meta(), default=str))
        validate_config(meta, out_dir / CONFIG)  # never write what load would refuse
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = out_dir / f".{WEIGHTS}.partial"
        save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, str(tmp),
                  metadata={"format": FORMAT, "labels": json.dumps(list(self.labels))})
        publish(tmp, out_dir / WEIGHTS)  # safetensors creates 0600; publish applies the umask
        write_text(out_dir / CONFIG, json.dumps(meta, indent=2))
        return out_dir

    @classmethod
    def load(cls, ckpt_dir: str | Path, *, device: str = "cpu", labels: list[str] | None = None) -> "Checkpoint":
        """Read and validate; ``labels``: the label names and order the caller expects."""
        ckpt_dir = Path(ckpt_dir)
        meta = read_config(ckpt_dir, labels=labels)
        mcfg = FusionConfig(**meta["model"])          # sizes in range: checked by read_config
        check_weights_fit(ckpt_dir / WEIGHTS, mcfg, ckpt_dir / CONFIG)
        state, wmeta = _read_weights(ckpt_dir / WEIGHTS, device)
        if "labels" in wmeta:
            try:
                trained = json.loads(wmeta["labels"])
            except json.JSONDecodeError:
                trained = wmeta["labels"]
            if trained != meta["labels"]:
                raise CheckpointMismatchError(
                    f"{ckpt_dir / CONFIG}: labels {meta['labels']} differ from the labels the weights were "
                    f"trained with {trained} (recorded in {WEIGHTS}); config.json was edited or mixed up")
        else:  # written by the first releases (no label record in the weights): config.json is all there is
            _warn(f"{ckpt_dir / WEIGHTS} records no label names (older checkpoint); the label order "
                  f"is taken from {CONFIG} unchecked")
        try:
            model = FusionModel(mcfg)
            model.load_state_dict(state)
        except RuntimeError as exc:  # shape / key mismatch between config.json and the weights
            raise CheckpointError(f"{ckpt_dir / WEIGHTS} does not fit the model in {CONFIG}: "
                                  f"{' '.join(str(exc).split())[:300]}") from None
        model.to(device).eval()
        return cls(model=model, run_id=meta.get("run_id", ""), labels=meta["labels"],
                   label_map=meta.get("label_map", ""), thresholds=list(meta["thresholds"]),
                   training=meta.get("training", {}), config_hash=meta.get("config_hash", ""),
                   encoders=meta["encoders"], sequence_encoder=meta["sequence_encoder"],
                   image_encoder=meta["image_encoder"], provenance=meta.get("provenance", {}),
                   threshold_fallback=list(meta.get("threshold_fallback", [])),
                   training_images=meta.get("training_images") or {})
