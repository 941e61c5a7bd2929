"""The profile schema: every key a ``configs/*.yaml`` file may hold, with its type.

One class per section; **adding a key is one line** in its section's class (``name: type = None``
for an optional key, no default for a required one). Types are strict (YAML already gives typed
values): ``true`` is not an integer, ``"5"`` is not a number. Training overrides (``training.base``,
``training.configurations.<name>``, ``training.ablation_overrides``, ``training.ablations.<label>``)
are checked against the fields of ``training.TrainConfig`` (which inherits ``model.ModelSwitches``)
and their allowed values (``CHOICES``), so a new switch there is allowed here with no edit.

``validate_profile`` raises ``config.ProfileError``: one line naming the key (dotted), the file
that set it and the keys allowed there.
"""

from __future__ import annotations

import difflib
import functools
import re
import typing
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from proloc_lib.core.errors import UserError
from proloc_lib.training.plan import Plan, build_plan
from proloc_lib.training.settings import NAMED_CONFIGS, TrainConfig


class ProfileError(UserError, ValueError):
    """A profile file is missing, unreadable, loops through ``extends`` or breaks the schema."""


class UnknownProfile(ProfileError, FileNotFoundError):
    pass


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# -- data -----------------------------------------------------------------------------------------
class Filters(Section):
    if_verification: Optional[str] = None
    intensity: Optional[str] = None
    quantity: Optional[str] = None


class Split(Section):
    method: Literal["stratified", "benchmark", "homology"] = "stratified"
    folds: Optional[int] = None
    val_fraction: Optional[float] = None
    test_fraction: Optional[float] = None
    identity: Optional[float] = None      # global (needle) identity that links two proteins (data.homology)


class Data(Section):
    source: Literal["scldata", "hpa"]
    label_map: str
    labels: Optional[Literal["columns", "mapping"]] = None
    mirror: Optional[str] = None          # base URL of a mirror (null: the public sources)
    authors_table: Optional[bool] = None  # fetch the authors' own test table (pinned) for a second test truth
    max_proteins: Optional[int] = None    # seeded sample of proteins per benchmark file (null: all)
    proteins: Optional[list[str]] = None  # only these Ensembl gene ids (a trial build; null: all)
    subsample_seed: Optional[int] = None
    rate_limit_per_s: Optional[float] = None  # image requests per second (null: none for a 127.0.0.1 mirror)
    stream: Optional[bool] = None
    n_proteins: Optional[int] = None
    min_length: Optional[int] = None
    max_length: Optional[int] = None
    images_per_protein: Optional[int] = None
    image_size: Optional[int] = None
    benchmark_files: Optional[list[str]] = None
    filters: Optional[Filters] = None
    split: Split


# -- embeddings -----------------------------------------------------------------------------------
class T5Arch(Section):
    """Architecture of a random-weight ProtT5-style encoder (T5Config swallows unknown keys)."""
    d_model: Optional[int] = None
    d_ff: Optional[int] = None
    num_layers: Optional[int] = None
    num_heads: Optional[int] = None
    d_kv: Optional[int] = None
    relative_attention_num_buckets: Optional[int] = None
    relative_attention_max_distance: Optional[int] = None
    feed_forward_proj: Optional[str] = None
    layer_norm_epsilon: Optional[float] = None
    dropout_rate: Optional[float] = None
    initializer_factor: Optional[float] = None


class SequenceEncoder(Section):
    model: str
    pretrained: bool
    revision: Optional[str] = None
    config: Optional[T5Arch] = None
    init_seed: Optional[int] = None


class ImageEncoder(Section):
    model: str
    pretrained: bool
    overrides: Optional[dict[str, Any]] = None   # timm.create_model keyword arguments
    init_seed: Optional[int] = None
    crop_pct: Optional[float] = None             # preprocessing (published: squash, 1.0, bilinear)
    crop_mode: Optional[Literal["center", "squash"]] = None
    interpolation: Optional[Literal["bilinear", "bicubic"]] = None


class EmbeddingsBase(Section):
    max_residues: Optional[int] = None
    long_policy: Optional[Literal["truncate", "windows"]] = None
    token_budget: Optional[int] = None
    image_batch_size: Optional[int] = None
    crop_grid: Optional[int] = None
    shard_size: Optional[int] = None
    jpeg_draft: Optional[bool] = None
    decode_workers: Optional[Union[int, Literal["auto"]]] = None
    image_autocast: Optional[bool] = None


class ImageEncoderOverride(ImageEncoder):
    model: Optional[str] = None
    pretrained: Optional[bool] = None


class ImageVariant(EmbeddingsBase):
    """Overrides merged onto the embeddings section for one extra image store."""
    image: Optional[ImageEncoderOverride] = None


class Embeddings(EmbeddingsBase):
    sequence: SequenceEncoder
    image: ImageEncoder
    max_residues: int
    long_policy: Literal["truncate", "windows"]
    token_budget: int
    image_batch_size: int
    shard_size: int
    image_variants: Optional[dict[str, ImageVariant]] = None


# -- training, baselines, figures -----------------------------------------------------------------
class CrossValidation(Section):
    config: str


class Control(Section):
    """The label-permutation control: the configuration it trains and how many runs (default:
    one per training seed; more runs, a smaller leak it can detect)."""
    config: Optional[str] = None
    runs: Optional[int] = None


class ResplitPlan(Section):
    """Variance over re-splits (experiments.run_resplits): each method re-split ``repeats`` times."""
    methods: list[Literal["stratified", "homology"]]
    repeats: Optional[int] = None
    config: Optional[str] = None


class Training(Section):
    # override mappings are typed loosely here and checked field by field against TrainConfig
    seeds: Optional[list[int]] = None
    base: Optional[dict[str, Any]] = None
    configurations: Optional[dict[str, Optional[dict[str, Any]]]] = None
    ablation_overrides: Optional[dict[str, Any]] = None
    ablations: Optional[dict[str, dict[str, Any]]] = None
    cross_validation: Union[bool, CrossValidation, None] = None
    control: Union[bool, Control, None] = None     # label-permutation control: {config: name, runs: n}
    resplits: Union[bool, ResplitPlan, None] = None


# keys an ablation may carry besides TrainConfig switches
ABLATION_KEYS = {"of": str, "image_variant": str}   # image_variant: an embeddings.image_variants name


class Baselines(Section):
    mlp_hidden: int
    mlp_epochs: int
    logreg_C: float
    light_attention_epochs: int


class Figures(Section):
    formats: list[Literal["png", "svg", "pdf"]]
    bootstrap_resamples: Optional[int] = None     # per-protein bootstrap intervals
    permutation_resamples: Optional[int] = None   # null of the label-permutation control


class Provenance(Section):
    real_sequences: bool
    synthetic_images: bool
    random_weight_encoders: bool


class Profile(Section):
    profile: Optional[str] = None
    description: str
    offline: bool
    provenance: Provenance
    data: Data
    embeddings: Embeddings
    training: Training
    baselines: Baselines
    figures: Figures


# -- validation -----------------------------------------------------------------------------------
def _unwrap(tp):
    """The model class (or dict value type) a field annotation leads to, through Optional/Union."""
    origin = typing.get_origin(tp)
    if origin in (Union, getattr(__import__("types"), "UnionType", Union)):
        for arg in typing.get_args(tp):
            found = _unwrap(arg)
            if found is not None:
                return found
        return None
    if origin is dict:
        return ("dict", typing.get_args(tp)[1])
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    return None


def _model_at(root: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The section class that holds ``loc`` (a key path); None when it is not a section."""
    cur: Any = root
    for part in loc:
        if isinstance(cur, tuple):          # ("dict", value type): ``part`` is a free name
            cur = _unwrap(cur[1])
            continue
        if not (isinstance(cur, type) and issubclass(cur, BaseModel)) or part not in cur.model_fields:
            return None
        cur = _unwrap(cur.model_fields[part].annotation)
    return cur if isinstance(cur, type) and issubclass(cur, BaseModel) else None


def _dotted(loc) -> str:
    return ".".join(str(p) for p in loc)


def _origin(origins: dict, loc: tuple, file: str) -> str:
    for n in range(len(loc), 0, -1):
        if tuple(loc[:n]) in origins:
            return origins[tuple(loc[:n])]
    return file


def _describe_value(v) -> str:
    text = repr(v)
    text = text if len(text) <= 40 else text[:37] + "..."
    hint = ""
    if isinstance(v, str):
        try:
            float(v)
            hint = " (YAML read it as text: write numbers like 1.0e-4 with a dot)"
        except ValueError:
            pass
    return f"{text} ({type(v).__name__}){hint}"


def _message(err: dict, allowed_at, prefix: tuple, file: str, origins: dict) -> str:
    loc = prefix + tuple(err["loc"])
    kind = err["type"]
    where = _origin(origins, loc, file)
    key = _dotted(loc)
    if kind == "extra_forbidden":
        allowed = allowed_at(loc[:-1])
        guess = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"; did you mean '{guess[0]}'?" if guess else ""
        section = _dotted(loc[:-1]) or "the top level"
        return f"{where}: unknown key '{key}'{hint} (allowed in {section}: {', '.join(sorted(allowed))})"
    if kind == "missing":
        return f"{where}: missing key '{key}' (needed by every profile; add it or extend a profile that has it)"
    msg = re.sub(r" or instance of \w+", "", err["msg"]).rstrip(".")
    msg = msg[0].lower() + msg[1:]
    return f"{where}: {key}: {msg}, got {_describe_value(err.get('input'))}"


def _clean_loc(loc: tuple) -> tuple:
    """Drop pydantic's union-member tags (e.g. 'int', "literal['auto']", 'CrossValidation')."""
    out = []
    for p in loc:
        if isinstance(p, str) and (p in ("int", "float", "str", "bool", "dict", "list", "none")
                                   or p.startswith(("literal[", "function-", "list[", "dict["))
                                   or (p[:1].isupper() and p in _SECTION_NAMES)):
            continue
        out.append(p)
    return tuple(out)


_SECTION_NAMES = {c.__name__ for c in (Filters, Split, Data, T5Arch, SequenceEncoder, ImageEncoder,
                                       ImageEncoderOverride, ImageVariant, Embeddings, CrossValidation,
                                       Control, ResplitPlan,
                                       Training, Baselines, Figures, Provenance, Profile)}


@functools.lru_cache(maxsize=1)
def train_overrides_model() -> type[BaseModel]:
    """A section built from ``training.TrainConfig``'s fields: its types, its allowed values."""
    from dataclasses import fields

    hints = typing.get_type_hints(TrainConfig)
    choices = {**getattr(TrainConfig, "MODEL_CHOICES", {}), **getattr(TrainConfig, "CHOICES", {})}
    spec = {}
    for f in fields(TrainConfig):
        tp = Literal[tuple(choices[f.name])] if f.name in choices else hints[f.name]
        spec[f.name] = (Optional[tp], None)
    return create_model("TrainConfigOverrides", __base__=Section, **spec)


def _raise(exc: ValidationError, allowed_at, prefix: tuple, file: str, origins: dict):
    errs = exc.errors()
    # unknown keys first (a typo also makes a required key look missing), then the deepest error:
    # of a union's members, the one that got furthest into the value is the one the user meant
    errs.sort(key=lambda e: (e["type"] != "extra_forbidden", e["type"] == "missing", -len(_clean_loc(tuple(e["loc"])))))
    first = dict(errs[0], loc=_clean_loc(tuple(errs[0]["loc"])))
    raise ProfileError(_message(first, allowed_at, prefix, file, origins)) from None


def validate_profile(cfg: dict, *, file: str, origins: dict | None = None) -> Plan:
    """Check a merged profile against the schema and expand its training section (once); raise
    ``ProfileError`` naming key and file. Returns the training plan."""
    origins = origins or {}

    def allowed_profile(loc):
        model = _model_at(Profile, _clean_loc(tuple(loc)))
        return list(model.model_fields) if model else []

    try:
        Profile.model_validate(cfg)
    except ValidationError as exc:
        _raise(exc, allowed_profile, (), file, origins)

    overrides = train_overrides_model()
    names = list(overrides.model_fields)
    training = cfg.get("training") or {}
    blocks = []
    if training.get("base") is not None:
        blocks.append((("training", "base"), training["base"], names))
    if training.get("ablation_overrides") is not None:
        blocks.append((("training", "ablation_overrides"), training["ablation_overrides"], names))
    for name, over in (training.get("configurations") or {}).items():
        blocks.append((("training", "configurations", name), over or {}, names))
    for label, spec in (training.get("ablations") or {}).items():
        extra = {k: spec[k] for k in ABLATION_KEYS if k in spec}
        for k, tp in ABLATION_KEYS.items():
            if k in extra and not isinstance(extra[k], tp):
                loc = ("training", "ablations", label, k)
                raise ProfileError(f"{_origin(origins, loc, file)}: {_dotted(loc)}: expected a "
                                   f"{tp.__name__}, got {_describe_value(extra[k])}")
        blocks.append((("training", "ablations", label), {k: v for k, v in spec.items() if k not in extra},
                       names + list(ABLATION_KEYS)))
    for prefix, block, allowed in blocks:
        try:
            overrides.model_validate(block)
        except ValidationError as exc:
            _raise(exc, lambda loc, allowed=allowed: allowed, prefix, file, origins)
    named = set(NAMED_CONFIGS)
    refs = [(("training", "configurations", n), n) for n in (training.get("configurations") or {})]
    refs += [(("training", "ablations", lab, "of"), spec["of"]) for lab, spec in (training.get("ablations") or {}).items()
             if "of" in spec]
    for key in ("cross_validation", "control"):
        if isinstance(training.get(key), dict) and training[key].get("config") is not None:
            refs.append((("training", key, "config"), training[key]["config"]))
    rs = training.get("resplits")
    if isinstance(rs, dict) and rs.get("config") is not None:
        refs.append((("training", "resplits", "config"), rs["config"]))
    for loc, name in refs:
        if name not in named:
            raise ProfileError(f"{_origin(origins, loc, file)}: {_dotted(loc)}: unknown training configuration "
                               f"'{name}' (known: {', '.join(sorted(named))})")
    try:
        return build_plan(training)
    except ValueError as exc:
        raise ProfileError(f"{_origin(origins, ('training',), file)}: training: {exc}") from None
