"""Profiles, paths, seeds: the one place that knows where each stage reads and writes.

A profile is one YAML file under ``configs/`` (demo, smoke, full). Each stage writes
under ``<data_root>/<profile>/<stage>/``; figures go to ``<figures_root>/<profile>/``.
"""
from __future__ import annotations

import copy
import os
import random
from pathlib import Path

import numpy as np
import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = PROJECT_ROOT / "configs"
STAGES = ("01_data_assembly", "02_embeddings", "03_training", "04_baselines", "05_figures")
TOP_LEVEL_KEYS = {"profile", "description", "extends", "offline", "provenance", "data",
                  "embeddings", "training", "baselines", "figures"}


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_profile(name: str) -> dict:
    """Read ``configs/<name>.yaml`` (or a path), following ``extends:``; unknown keys fail here."""
    path = Path(name) if str(name).endswith((".yaml", ".yml")) else CONFIG_DIR / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"no profile '{name}' ({path}); known profiles: {known}")
    cfg = yaml.safe_load(path.read_text()) or {}
    if "extends" in cfg:
        cfg = _merge(load_profile(cfg["extends"]), {k: v for k, v in cfg.items() if k != "extends"})
    unknown = set(cfg) - TOP_LEVEL_KEYS
    if unknown:
        raise ValueError(f"profile {path}: unknown keys {sorted(unknown)} (allowed: {sorted(TOP_LEVEL_KEYS)})")
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
    kind = str(device).split(":")[0]
    if kind not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown device '{device}' (use auto, cpu, cuda, cuda:N, mps)")
    if kind == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device '{device}' requested but CUDA is not available")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"device '{device}' requested but MPS is not available")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover - torch is a declared dependency
        pass


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
