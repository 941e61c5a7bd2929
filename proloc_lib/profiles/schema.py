"""The profile schema: every key a ``configs/*.yaml`` file may hold, with its type.

One class per section; **adding a key is one line** in its section's class (``name: type = None``
for an optional key, no default for a required one). Types are strict (YAML already gives typed
values): ``true`` is not an integer, ``"5"`` is not a number. Training overrides (``training.base``,
``training.configurations.<name>``, ``training.ablation_overrides``, ``training.ablations.<label>``)
are checked against the fields of ``training.TrainConfig`` (which inherits ``model.ModelSwitches``)
and their allowed values (``CHOICES``), so a new switch there is allowed here with no edit.

Every number has its range (``_num``; the training overrides take ``TrainConfig.RANGES``, the
one place for those), and keys that depend on each other are checked together
(``_check_consistency``: val_fraction + test_fraction < 1, min_length <= max_length, patience <=
max_epochs, d_model divisible by n_heads, ...), all before any work.

``validate_profile`` raises ``config.ProfileError``: one line naming the key (dotted), the file
that set it and the keys allowed there (or the range it must lie in).
"""

from __future__ import annotations

import difflib
import functools
import numbers
import re
import reprlib
import typing
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator

from proloc_lib.core.errors import UserError
from proloc_lib.data.synthetic import MIN_SIZE as MIN_IMAGE_SIZE
from proloc_lib.training.plan import Plan, build_plan
from proloc_lib.training.settings import NAMED_CONFIGS, TrainConfig


class ProfileError(UserError, ValueError):
    """A profile file is missing, unreadable, loops through ``extends`` or breaks the schema."""


class UnknownProfile(ProfileError, FileNotFoundError):
    pass


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _num(tp, **bounds):
    """``tp`` within a range, in pydantic's words (ge, gt, le, lt)."""
    return Annotated[tp, Field(**bounds)]


SEED = _num(int, ge=0, le=2**31 - 1)           # what numpy, torch and python all accept
FRACTION = _num(float, gt=0, lt=1)
MAX_OVERRIDE = 65536                            # any number in a timm keyword argument (sizes, depths)


# -- data -----------------------------------------------------------------------------------------
class Filters(Section):
    if_verification: Optional[str] = None
    intensity: Optional[str] = None
    quantity: Optional[str] = None


class Split(Section):
    method: Literal["stratified", "benchmark", "homology"] = "stratified"
    folds: Optional[_num(int, ge=0, le=100)] = None    # 0: none; 1 is refused (one fold is no cross-validation)
    val_fraction: Optional[FRACTION] = None
    test_fraction: Optional[FRACTION] = None
    # global (needle) identity that links two proteins (data.homology)
    identity: Optional[_num(float, gt=0, le=1)] = None


class Data(Section):
    source: Literal["scldata", "hpa"]
    label_map: str
    labels: Optional[Literal["columns", "mapping"]] = None
    mirror: Optional[str] = None          # base URL of a mirror (null: the public sources)
    authors_table: Optional[bool] = None  # fetch the authors' own test table (pinned) for a second test truth
    max_proteins: Optional[_num(int, ge=1, le=10**6)] = None  # seeded sample of proteins per benchmark file (null: all)
    proteins: Optional[list[str]] = None  # only these Ensembl gene ids (a trial build; null: all)
    subsample_seed: Optional[SEED] = None
    # image requests per second (null: none for a 127.0.0.1 mirror)
    rate_limit_per_s: Optional[_num(float, gt=0, le=1000)] = None
    stream: Optional[bool] = None
    n_proteins: Optional[_num(int, ge=10, le=10**6)] = None   # fewer cannot fill train, validation and test
    min_length: Optional[_num(int, ge=1, le=100_000)] = None
    max_length: Optional[_num(int, ge=1, le=100_000)] = None
    images_per_protein: Optional[_num(int, ge=1, le=1000)] = None
    image_size: Optional[_num(int, ge=MIN_IMAGE_SIZE, le=4096)] = None
    benchmark_files: Optional[list[str]] = None
    filters: Optional[Filters] = None
    split: Split


# -- embeddings -----------------------------------------------------------------------------------
class T5Arch(Section):
    """Architecture of a random-weight ProtT5-style encoder (T5Config swallows unknown keys)."""
    d_model: Optional[_num(int, ge=1, le=8192)] = None
    d_ff: Optional[_num(int, ge=1, le=65536)] = None
    num_layers: Optional[_num(int, ge=1, le=128)] = None
    num_heads: Optional[_num(int, ge=1, le=256)] = None
    d_kv: Optional[_num(int, ge=1, le=1024)] = None
    relative_attention_num_buckets: Optional[_num(int, ge=1, le=1024)] = None
    relative_attention_max_distance: Optional[_num(int, ge=1, le=100_000)] = None
    feed_forward_proj: Optional[str] = None
    layer_norm_epsilon: Optional[_num(float, gt=0, le=1)] = None
    dropout_rate: Optional[_num(float, ge=0, lt=1)] = None
    initializer_factor: Optional[_num(float, gt=0, le=100)] = None


class SequenceEncoder(Section):
    model: str
    pretrained: bool
    revision: Optional[str] = None
    config: Optional[T5Arch] = None
    init_seed: Optional[SEED] = None


class ImageEncoder(Section):
    model: str
    pretrained: bool
    overrides: Optional[dict[str, Any]] = None   # timm.create_model keyword arguments
    init_seed: Optional[SEED] = None
    crop_pct: Optional[_num(float, gt=0, le=1)] = None   # preprocessing (published: squash, 1.0, bilinear)
    crop_mode: Optional[Literal["center", "squash"]] = None
    interpolation: Optional[Literal["bilinear", "bicubic"]] = None

    @field_validator("overrides")
    @classmethod
    def _bounded_numbers(cls, value):
        """timm's sizes and depths: no number past MAX_OVERRIDE (an embed_dim of 10^9 is a typo)."""
        for key, v in (value or {}).items():
            for x in (v if isinstance(v, (list, tuple)) else [v]):
                if isinstance(x, numbers.Real) and not isinstance(x, bool) and not abs(x) <= MAX_OVERRIDE:
                    raise ValueError(f"'{key}' = {describe_value(x)} is out of range (at most {MAX_OVERRIDE})")
        return value


MAX_RESIDUES = _num(int, ge=1, le=100_000)
TOKEN_BUDGET = _num(int, ge=1, le=10**8)
IMAGE_BATCH = _num(int, ge=1, le=65536)
SHARD_SIZE = _num(int, ge=1, le=10**6)


class EmbeddingsBase(Section):
    max_residues: Optional[MAX_RESIDUES] = None
    long_policy: Optional[Literal["truncate", "windows"]] = None
    token_budget: Optional[TOKEN_BUDGET] = None
    image_batch_size: Optional[IMAGE_BATCH] = None
    crop_grid: Optional[_num(int, ge=1, le=16)] = None
    shard_size: Optional[SHARD_SIZE] = None
    jpeg_draft: Optional[bool] = None
    decode_workers: Optional[Union[_num(int, ge=1, le=1024), Literal["auto"]]] = None
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
    max_residues: MAX_RESIDUES
    long_policy: Literal["truncate", "windows"]
    token_budget: TOKEN_BUDGET
    image_batch_size: IMAGE_BATCH
    shard_size: SHARD_SIZE
    image_variants: Optional[dict[str, ImageVariant]] = None


# -- training, baselines, figures -----------------------------------------------------------------
class CrossValidation(Section):
    config: str


class Control(Section):
    """The label-permutation control: the configuration it trains and how many runs (default:
    one per training seed; more runs, a smaller leak it can detect)."""
    config: Optional[str] = None
    runs: Optional[_num(int, ge=1, le=1000)] = None


class ResplitPlan(Section):
    """Variance over re-splits (experiments.run_resplits): each method re-split ``repeats`` times."""
    methods: Annotated[list[Literal["stratified", "homology"]], Field(min_length=1)]
    repeats: Optional[_num(int, ge=1, le=1000)] = None
    config: Optional[str] = None


class Training(Section):
    # override mappings are typed loosely here and checked field by field against TrainConfig
    seeds: Optional[Annotated[list[SEED], Field(min_length=1, max_length=1000)]] = None
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
    mlp_hidden: _num(int, ge=1, le=65536)
    mlp_epochs: _num(int, ge=1, le=100_000)
    logreg_C: _num(float, gt=0, le=1e6)
    light_attention_epochs: _num(int, ge=1, le=10000)


class Figures(Section):
    formats: list[Literal["png", "svg", "pdf"]]
    bootstrap_resamples: Optional[_num(int, ge=10, le=10**6)] = None    # per-protein bootstrap intervals
    permutation_resamples: Optional[_num(int, ge=10, le=10**6)] = None  # null of the label-permutation control


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


_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxlevel = 40, 40, 4, 4, 2


def describe_value(v) -> str:
    """A value as a message quotes it: bounded in length and work, whatever its size or nesting."""
    text = _SHORT.repr(v)
    text = text if len(text) <= 60 else text[:57] + "..."
    hint = ""
    if isinstance(v, str) and len(v) < 100:
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
    msg = re.sub(r" or instance of \w+", "", err["msg"]).rstrip(".").removeprefix("Value error, ")
    msg = msg[0].lower() + msg[1:]
    return f"{where}: {key}: {msg}, got {describe_value(err.get('input'))}"


def _clean_loc(loc: tuple) -> tuple:
    """Drop pydantic's union-member tags (e.g. 'int', "literal['auto']", 'CrossValidation')."""
    out = []
    for p in loc:
        if isinstance(p, str) and (p in ("int", "float", "str", "bool", "dict", "list", "none")
                                   or p.startswith(("literal[", "function-", "list[", "dict[", "constrained-"))
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
    choices = {**TrainConfig.MODEL_CHOICES, **TrainConfig.CHOICES}
    ranges = {**TrainConfig.MODEL_RANGES, **TrainConfig.RANGES}
    spec = {}
    for f in fields(TrainConfig):
        tp = hints[f.name]
        if f.name in choices:
            tp = Literal[tuple(choices[f.name])]
        elif f.name in ranges:   # the range applies to the number; None stays allowed where the field allows it
            base = [a for a in (typing.get_args(tp) or (tp,)) if a is not type(None)]
            tp = _num(base[0], **ranges[f.name])
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
                                   f"{tp.__name__}, got {describe_value(extra[k])}")
        blocks.append((("training", "ablations", label), {k: v for k, v in spec.items() if k not in extra},
                       names + list(ABLATION_KEYS)))
    for prefix, block, allowed in blocks:
        try:
            overrides.model_validate(block)
        except ValidationError as exc:
            _raise(exc, lambda loc, allowed=allowed: allowed, prefix, file, origins)
    named = set(NAMED_CONFIGS)
    refs = [(("training", "configurations", n), n) for n in (training.get("configurations") or {})]
    refs += [(("training", "ablations", lab, "of"), spec["of"])
             for lab, spec in (training.get("ablations") or {}).items() if "of" in spec]
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
        plan = build_plan(training)
    except ValueError as exc:
        raise ProfileError(f"{_origin(origins, ('training',), file)}: {_bounded(exc)}") from None
    _check_consistency(cfg, plan, file, origins)
    return plan


def _bounded(exc: Exception, limit: int = 400) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _check_consistency(cfg: dict, plan: Plan, file: str, origins: dict) -> None:
    """Keys that are each in range but wrong together; one line naming the key and its file."""
    def fail(loc: tuple, problem: str):
        raise ProfileError(f"{_origin(origins, loc, file)}: {_dotted(loc)}: {problem}")

    data = cfg["data"]
    split = data["split"]
    val, test = split.get("val_fraction"), split.get("test_fraction")
    if val is not None and test is not None and val + test >= 1:
        fail(("data", "split", "test_fraction"), f"val_fraction {val} + test_fraction {test} = {val + test:g} "
             "leaves no training proteins; their sum must be below 1")
    if split.get("folds") == 1:
        fail(("data", "split", "folds"), "1 fold is no cross-validation; give 0 (no folds) or at least 2")
    lo, hi = data.get("min_length"), data.get("max_length")
    if lo is not None and hi is not None and lo > hi:
        fail(("data", "min_length"), f"{lo} is above max_length {hi}: no protein would be kept")
    for run in plan.runs + [{"run_id": f"the {name} configuration", "train": c} for name, c in plan.configs.items()]:
        problem = run["train"].run_problem()
        if problem:
            fail(("training",), f"run {run['run_id']}: {problem}")
