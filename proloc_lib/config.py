"""Profiles, paths, seeds: the one place that knows where each stage reads and writes.

A profile is one YAML file under ``configs/`` (demo, smoke, full). Each stage writes
under ``<data_root>/<profile>/<stage>/``; figures go to ``<figures_root>/<profile>/``.
"""
from __future__ import annotations

import contextlib
import copy
import os
import random
from pathlib import Path

import numpy as np
import yaml

from .errors import UserError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = PROJECT_ROOT / "configs"
STAGES = ("01_data_assembly", "02_embeddings", "03_training", "04_baselines", "05_figures")


class ProfileError(UserError, ValueError):
    """A profile file is missing, unreadable, loops through ``extends`` or breaks the schema."""


class UnknownProfile(ProfileError, FileNotFoundError):
    pass


class DeviceError(UserError, ValueError):
    pass


class DeviceUnavailable(UserError, RuntimeError):
    pass


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _shown(path: Path) -> str:
    """A profile path as the user would write it: relative to the project or the cwd when inside."""
    for base in (PROJECT_ROOT, Path.cwd()):
        try:
            return str(path.resolve().relative_to(base.resolve()))
        except ValueError:
            continue
    return str(path)


def profile_path(name: str | os.PathLike) -> Path:
    """``configs/<name>.yaml``, or ``name`` itself when it is a path to a .yaml/.yml file."""
    name = str(name)
    path = Path(name) if name.endswith((".yaml", ".yml")) else CONFIG_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        what = "is a folder" if path.is_dir() else "does not exist"
        raise UnknownProfile(f"no profile '{name}': {_shown(path)} {what}; known profiles: {', '.join(known)}")
    return path


def _read_yaml(path: Path) -> dict:
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ProfileError(f"{_shown(path)}: not a UTF-8 text file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ProfileError(f"{_shown(path)}: not valid YAML{where}: {problem}") from None
    except OSError as exc:
        raise ProfileError(f"{_shown(path)}: cannot read ({exc.strerror or exc})") from None
    if cfg is None:
        return {}
    if not isinstance(cfg, dict):
        raise ProfileError(f"{_shown(path)}: a profile is a mapping of keys (profile, data, training, ...), "
                           f"got {type(cfg).__name__}")
    return cfg


def _origins(cfg: dict, file: str, prefix: tuple = ()) -> dict:
    """Every key path of ``cfg`` -> the file that set it (for errors that name the right file)."""
    out = {}
    for k, v in cfg.items():
        out[prefix + (k,)] = file
        if isinstance(v, dict):
            out.update(_origins(v, file, prefix + (k,)))
    return out


def _load_chain(path: Path, chain: tuple[Path, ...]) -> tuple[dict, dict]:
    real = path.resolve()
    if real in chain:
        loop = " -> ".join(_shown(p) for p in (*chain, real))
        raise ProfileError(f"{_shown(path)}: 'extends' makes a loop ({loop})")
    cfg = _read_yaml(path)
    origins = _origins(cfg, _shown(path))
    if "extends" in cfg:
        parent = cfg["extends"]
        if not isinstance(parent, str) or not parent:
            raise ProfileError(f"{_shown(path)}: 'extends' must name a profile (e.g. extends: demo), got {parent!r}")
        beside = path.parent / (parent if parent.endswith((".yaml", ".yml")) else f"{parent}.yaml")
        try:  # a profile beside this file first (user profiles kept together), then configs/
            parent_path = beside if beside.is_file() else profile_path(parent)
        except UnknownProfile as exc:
            raise ProfileError(f"{_shown(path)}: extends: {exc}") from None
        base, base_origins = _load_chain(parent_path, (*chain, real))
        cfg = _merge(base, {k: v for k, v in cfg.items() if k != "extends"})
        origins = {**base_origins, **origins}
    return cfg, origins


def load_profile(name: str | os.PathLike) -> dict:
    """Read ``configs/<name>.yaml`` (or a path), following ``extends:``, checked against the schema.

    Every key, nested ones included, is checked before any work (``proloc_lib.schema``): an
    unknown or misspelt key, a wrong type, a loop through ``extends`` raise ``ProfileError``,
    one line naming the key, the file that set it and the allowed keys.
    """
    from .schema import validate_profile

    path = profile_path(name)
    cfg, origins = _load_chain(path, ())
    cfg.pop("extends", None)
    validate_profile(cfg, file=_shown(path), origins=origins)
    cfg.setdefault("profile", path.stem)
    return cfg


def data_root(root: str | os.PathLike | None = None) -> Path:
    """Where generated data lives: the argument, else $PROLOC_DATA_ROOT, else ``<project>/data``."""
    return Path(root or os.environ.get("PROLOC_DATA_ROOT") or PROJECT_ROOT / "data").resolve()


def stage_dir(profile: str, stage: str, root: str | os.PathLike | None = None) -> Path:
    if stage not in STAGES:
        raise ValueError(f"unknown stage '{stage}' (stages: {STAGES})")
    return data_root(root) / profile / stage


def figures_dir(profile: str, root: str | os.PathLike | None = None) -> Path:
    base = root or os.environ.get("PROLOC_FIGURES_ROOT") or PROJECT_ROOT / "figures"
    return Path(base).resolve() / profile


def project_path(p: str | os.PathLike) -> Path:
    """Resolve a path written in a config relative to the project root."""
    p = Path(p)
    return p if p.is_absolute() else PROJECT_ROOT / p


def resolve_device(device: str = "auto") -> str:
    """'auto' -> 'cuda' when available, else 'cpu'; other names are validated."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    kind, _, index = str(device).partition(":")
    if kind not in ("cpu", "cuda", "mps") or (index and not (kind == "cuda" and index.isdigit())):
        raise DeviceError(f"unknown device '{device}' (use auto, cpu, cuda, cuda:N, mps)")
    if kind == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable(f"device '{device}' requested but CUDA is not available")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise DeviceUnavailable(f"device '{device}' requested but MPS is not available")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover - torch is a declared dependency
        pass


@contextlib.contextmanager
def torch_threads(n: int):
    """torch on ``n`` intra-op threads inside the block (this thread's setting, restored after);
    also a decorator. For loops of tiny ops (a bag of two images, a 64-wide head) and memory-bound
    gathers: more threads cannot split them, and waking idle ones for every op cost 10-30x the op
    itself on a busy 2-core CPU (measured)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def provenance_note(cfg_or_provenance: dict) -> str:
    """The label every table and figure carries: what is real and what is not."""
    prov = cfg_or_provenance.get("provenance", cfg_or_provenance)
    parts = []
    if prov.get("synthetic_images"):
        parts.append("SYNTHETIC IHC-like images")
    if prov.get("random_weight_encoders"):
        parts.append("RANDOM-WEIGHT encoders (not ProtT5/ViT weights)")
    if not parts:
        return "Real data and pretrained encoders."
    seq = "real UniProt sequences (SCL2205)" if prov.get("real_sequences") else "sequences"
    return "Demo numbers: " + " + ".join(parts) + f", {seq}. Not comparable with the paper."
