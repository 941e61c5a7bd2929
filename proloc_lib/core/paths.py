"""Paths: the one place that knows where the project is and where each stage reads and writes.

A profile is one YAML file under ``configs/`` (demo, smoke, full). Each stage writes
under ``<data_root>/<profile>/<stage>/``; figures go to ``<figures_root>/<profile>/``. Real
reference data for tests and benchmarks is read from ``reference_dir()``.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = PROJECT_ROOT / "configs"
STAGES = ("01_data_assembly", "02_embeddings", "03_training", "04_baselines", "05_figures")


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


def reference_dir(root: str | os.PathLike | None = None) -> Path:
    """The folder of real reference data (the authors' test tables, the Vislocas tables, a real HPA
    image): the argument, else $PROLOC_REFERENCE_DIR, else ``shared/reference`` beside the project."""
    return Path(root or os.environ.get("PROLOC_REFERENCE_DIR") or PROJECT_ROOT.parent / "shared" / "reference")
