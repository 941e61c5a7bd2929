"""Stage manifests: what each notebook read (with checksums), its parameters, versions, commit.

A stage writes its outputs into a temporary folder and renames it into place only once the
manifest is written (``stage_output``), so an interrupted run never leaves a half-written
stage that a later notebook would take for complete.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

from proloc_lib.core.errors import UserError
from proloc_lib.core.fileio import file_sha256 as sha256
from proloc_lib.core.fileio import publish, umask_mode, write_text
from proloc_lib.core.paths import PROJECT_ROOT


class ManifestError(UserError, ValueError):
    """A stage manifest that exists but cannot be read."""


PACKAGES = ("torch", "transformers", "timm", "numpy", "pandas", "scikit-learn", "safetensors",
            "p-scldata", "iterative-stratification", "papermill")
MANIFEST = "manifest.json"


def package_versions(names=PACKAGES) -> dict:
    out = {"python": platform.python_version()}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    return out


def git_commit() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (rev + ("+dirty" if dirty else "")) if rev else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _files(paths) -> list[Path]:
    out = []
    for p in map(Path, paths):
        out.extend(sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p])
    return out


def build_manifest(stage: str, params: dict, inputs=(), outputs_dir: Path | None = None,
                   provenance: dict | None = None, extra: dict | None = None) -> dict:
    """Inputs are hashed file by file (folders recursively); outputs listed with their hashes."""
    man = {
        "stage": stage,
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "parameters": params,
        "provenance": provenance or {},
        "inputs": {str(p): sha256(p) for p in _files(inputs)},
        "packages": package_versions(),
    }
    if outputs_dir is not None:
        man["outputs"] = {str(p.relative_to(outputs_dir)): sha256(p) for p in _files([outputs_dir])
                          if p.name != MANIFEST}
    if extra:
        man.update(extra)
    return man


def read_manifest(stage_path: str | Path) -> dict:
    path = Path(stage_path) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: the stage that writes {Path(stage_path).name} has not completed; "
            "run the earlier notebooks first (bash run_all.sh runs them in order)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path} is not a valid manifest ({exc}); rerun the stage that writes "
                            f"{Path(stage_path).name}") from None


@contextlib.contextmanager
def stage_output(final_dir: str | Path, stage: str, params: dict, inputs=(), provenance=None):
    """Yield a temporary folder; on success write its manifest and swap it into place.

    The previous complete output (if any) stays readable until the new one is whole.
    ``yield``s a dict the caller may fill with extra manifest fields.
    """
    final_dir = Path(final_dir)
    tmp = final_dir.with_name(final_dir.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    extra: dict = {}
    try:
        yield tmp, extra
        man = build_manifest(stage, params, inputs, tmp, provenance, extra)
        write_text(tmp / MANIFEST, json.dumps(man, indent=2, default=str))
        apply_umask(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final_dir.with_name(final_dir.name + ".old")
    if final_dir.exists():
        shutil.rmtree(old, ignore_errors=True)
        final_dir.rename(old)
    publish(tmp, final_dir)
    shutil.rmtree(old, ignore_errors=True)


def apply_umask(folder: str | Path) -> None:
    """Give everything under ``folder`` the permissions the user's umask asks for.

    safetensors and ``tempfile`` create files 0600 whatever the umask, so a stage's outputs
    would otherwise be unreadable to the group a shared project folder is meant for.
    Executable files keep their x bits (filtered by the umask like everything else).
    """
    for p in sorted(Path(folder).rglob("*")):
        if p.is_symlink():
            continue
        if p.is_dir():
            p.chmod(umask_mode(0o777))
        else:
            p.chmod(umask_mode(0o777 if p.stat().st_mode & 0o111 else 0o666))
