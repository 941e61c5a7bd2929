"""Paths: the one place that knows where the project is and where each stage reads and writes.

A profile is one YAML file under ``configs/`` (demo, smoke, full) or a file given by its path;
its name (``profile:`` key or file stem) is checked by ``check_name`` before it becomes a folder.
A run of a profile with run seed ``s`` writes its stages under ``run_dir``:
``<data_root>/<profile>/<stage>/`` for seed 0 and ``<data_root>/<profile>/seed-<s>/<stage>/``
otherwise, so replicates never overwrite each other. ``<data_root>/<profile>/images/`` (and the
download caches beside it) are shared by every seed: their files are named by seed or content.
Figures go to ``figures_dir`` and executed notebooks to ``executed_dir``: in the project's
``figures/`` and ``executed/`` for the default data root, inside the run folder when a data root
is given (two data roots never share them). Real reference data for tests and benchmarks is read
from ``reference_dir()``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = PROJECT_ROOT / "configs"
STAGES = ("01_data_assembly", "02_embeddings", "03_training", "04_baselines", "05_figures")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# "<profile>-seed-<s>" names the figures and executed notebooks of run seed s: not a profile name
_SEED_SUFFIX = re.compile(r"-seed-\d+$")


class BadName(ValueError):
    """A profile name that would not stay one folder under its root."""


def check_name(name: str, *, what: str = "profile name") -> str:
    """``name`` if it is one safe folder name (letters, digits, ``._-``; not ``..``), else BadName."""
    name = str(name)
    if not NAME.match(name) or name in (".", "..") or len(name) > 100:
        raise BadName(f"{what} {name!r}: use letters, digits, '.', '_' and '-' (starting with a letter or "
                      "digit), or give a profile file as a path ending in .yaml")
    if _SEED_SUFFIX.search(name):
        raise BadName(f"{what} {name!r}: names ending in -seed-<n> are kept for the outputs of run seeds")
    return name


def data_root(root: str | os.PathLike | None = None) -> Path:
    """Where generated data lives: the argument, else $PROLOC_DATA_ROOT, else ``<project>/data``."""
    return Path(root or os.environ.get("PROLOC_DATA_ROOT") or PROJECT_ROOT / "data").resolve()


def is_default_data_root(root: str | os.PathLike | None = None) -> bool:
    return data_root(root) == (PROJECT_ROOT / "data").resolve()


def _seed(seed) -> int:
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"a run seed is a whole number >= 0, got {seed}")
    return seed


def profile_dir(profile: str, root: str | os.PathLike | None = None) -> Path:
    """``<data_root>/<profile>``: the seed-0 run and what every seed shares (images, caches)."""
    return data_root(root) / check_name(profile)


def run_dir(profile: str, root: str | os.PathLike | None = None, *, seed: int = 0) -> Path:
    """The folder of one run seed's stages: ``<data_root>/<profile>`` or ``.../<profile>/seed-<s>``."""
    seed = _seed(seed)
    base = profile_dir(profile, root)
    return base if seed == 0 else base / f"seed-{seed}"


def run_name(profile: str, *, seed: int = 0) -> str:
    """``<profile>`` for seed 0, ``<profile>-seed-<s>`` otherwise (figures and executed folders)."""
    seed = _seed(seed)
    return check_name(profile) if seed == 0 else f"{check_name(profile)}-seed-{seed}"


def stage_dir(profile: str, stage: str, root: str | os.PathLike | None = None, *, seed: int = 0) -> Path:
    if stage not in STAGES:
        raise ValueError(f"unknown stage '{stage}' (stages: {STAGES})")
    return run_dir(profile, root, seed=seed) / stage


def figures_dir(profile: str, root: str | os.PathLike | None = None, *, seed: int = 0,
                data_root: str | os.PathLike | None = None) -> Path:
    """Notebook 05's figures: ``<root>/<run name>`` with a figures root (argument or
    $PROLOC_FIGURES_ROOT); else ``<project>/figures/<run name>`` for the default data root, and
    ``<run dir>/figures`` when a data root is given (figures follow their data)."""
    base = root or os.environ.get("PROLOC_FIGURES_ROOT")
    if base:
        return Path(base).resolve() / run_name(profile, seed=seed)
    if is_default_data_root(data_root):
        return (PROJECT_ROOT / "figures").resolve() / run_name(profile, seed=seed)
    return run_dir(profile, data_root, seed=seed) / "figures"


def executed_dir(profile: str, *, seed: int = 0, data_root: str | os.PathLike | None = None) -> Path:
    """Where ``proloc run`` writes executed notebooks: ``<project>/executed/<run name>`` for the
    default data root, ``<run dir>/executed`` when a data root is given."""
    if is_default_data_root(data_root):
        return PROJECT_ROOT / "executed" / run_name(profile, seed=seed)
    return run_dir(profile, data_root, seed=seed) / "executed"


def project_path(p: str | os.PathLike) -> Path:
    """Resolve a path written in a config relative to the project root."""
    p = Path(p)
    return p if p.is_absolute() else PROJECT_ROOT / p


def reference_dir(root: str | os.PathLike | None = None) -> Path:
    """The folder of real reference data (the authors' test tables, the Vislocas tables, a real HPA
    image): the argument, else $PROLOC_REFERENCE_DIR, else ``shared/reference`` beside the project."""
    return Path(root or os.environ.get("PROLOC_REFERENCE_DIR") or PROJECT_ROOT.parent / "shared" / "reference")
