"""Stage manifests: what each stage read (with checksums), its parameters, code version and outputs.

A stage writes its outputs into a temporary folder of its own (``.<stage>.partial-<pid>-*``) and
swaps it into place only once the manifest is written (``stage_output``), so an interrupted run
never leaves a half-written stage that a later notebook would take for complete, and two runs
never write into the same folder. The swap itself is serialised by a small lock beside the stage
folder and not interrupted by Ctrl-C or SIGTERM; a swap cut short by a crash is completed (the
previous output restored) by the next publish.

A manifest records ``outputs`` (file -> sha256), ``upstream`` (for each stage it read: the
checksums of the files it read), ``code_version`` (``code_version``: the library modules the stage
runs and its notebook) and ``stage_key`` (``stage_key``: all of these with the parameters), which
is what a rerun compares to decide whether the stage is up to date.
"""

from __future__ import annotations

import ast
import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import tempfile
import threading
from importlib import metadata
from pathlib import Path

from proloc_lib.core.errors import UserError
from proloc_lib.core.fileio import file_sha256 as sha256
from proloc_lib.core.fileio import publish, umask_mode, write_text
from proloc_lib.core.locks import FolderLock, pid_alive
from proloc_lib.core.paths import PROJECT_ROOT

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


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


def output_checksums(folder: str | Path) -> dict:
    """Every file under ``folder`` but the manifest -> its sha256 (keys relative, with '/')."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): sha256(p) for p in _files([folder]) if p.name != MANIFEST}


def build_manifest(stage: str, params: dict, inputs=(), outputs_dir: Path | None = None,
                   provenance: dict | None = None, extra: dict | None = None, *,
                   outputs: dict | None = None) -> dict:
    """Inputs are hashed file by file (folders recursively); outputs listed with their hashes
    (``outputs``: checksums the stage computed itself, e.g. of content-named store shards)."""
    man = {
        "stage": stage,
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "parameters": params,
        "provenance": provenance or {},
        "inputs": {str(p): sha256(p) for p in _files(inputs)},
        "packages": package_versions(),
    }
    if outputs is not None:
        man["outputs"] = dict(outputs)
    elif outputs_dir is not None:
        man["outputs"] = output_checksums(outputs_dir)
    if extra:
        man.update(extra)
    return man


def read_manifest(stage_path: str | Path, *, rebuild: str | None = None) -> dict:
    """The stage's manifest; ``rebuild``: the command that makes it (named when it is missing)."""
    path = Path(stage_path) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: the stage that writes {Path(stage_path).name} has not completed; "
            + (f"run `{rebuild}`" if rebuild else "run the earlier notebooks first (`proloc run --profile <name>` "
                                                  "runs them in order)"))
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path} is not a valid manifest ({exc}); rerun the stage that writes "
                            f"{Path(stage_path).name}") from None


@contextlib.contextmanager
def stage_output(final_dir: str | Path, stage: str, params: dict, inputs=(), provenance=None, *,
                 owner: FolderLock | None = None):
    """Yield a temporary folder of this run's own; on success write its manifest and swap it into place.

    The previous complete output (if any) stays readable until the new one is whole.
    ``yield``s a dict the caller may fill with extra manifest fields (``outputs`` among them: the
    checksums, when the caller computed them). ``owner``: the lock this run holds on the folder;
    it must still be this run's when the output is published.
    """
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.partial-{os.getpid()}-", dir=final_dir.parent))
    extra: dict = {}
    try:
        yield tmp, extra
        outputs = extra.pop("outputs", None)
        man = build_manifest(stage, params, inputs, tmp, provenance, extra, outputs=outputs)
        write_text(tmp / MANIFEST, json.dumps(man, indent=2, default=str))
        apply_umask(tmp)
        if owner is not None:
            owner.check_owned()
        swap_into_place(tmp, final_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _leftover_pid(path: Path, final_dir: Path, kind: str) -> int | None:
    """The pid in ``.<final>.<kind>-<pid>-<random>`` (None if the name is not of that form)."""
    prefix = f".{final_dir.name}.{kind}-"
    pid = path.name[len(prefix):].split("-", 1)[0] if path.name.startswith(prefix) else ""
    return int(pid) if pid.isdigit() else None


@contextlib.contextmanager
def _publishing(final_dir: Path):
    """Serialise swaps into ``final_dir`` and keep Ctrl-C / SIGTERM out of them: in the main thread
    (where Python runs signal handlers) they are held and delivered once the swap is done."""
    guard = final_dir.parent / f".{final_dir.name}.publish"
    fh = open(guard, "a+") if fcntl is not None else None
    held: list[int] = []
    main = threading.current_thread() is threading.main_thread()
    try:
        if fh is not None:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX)
            except OSError:
                pass   # no locks on this file system: the stage lock is all there is
        previous = {sig: signal.signal(sig, lambda signum, frame: held.append(signum))
                    for sig in (signal.SIGINT, signal.SIGTERM)} if main else {}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
            if held:
                signal.raise_signal(held[0])
    finally:
        if fh is not None:
            fh.close()


def recover(final_dir: str | Path) -> None:
    """Finish what a crashed run left beside ``final_dir``: restore the previous output if a swap was
    cut between its two renames, remove temporary folders of runs that are no longer running."""
    final_dir = Path(final_dir)
    if not final_dir.parent.is_dir():
        return
    with _publishing(final_dir):
        _recover(final_dir)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:   # removed meanwhile by the run that made it
        return 0.0


def _recover(final_dir: Path) -> None:
    olds = sorted(final_dir.parent.glob(f".{final_dir.name}.old-*"), key=_mtime)
    if olds and not final_dir.exists() and (olds[-1] / MANIFEST).is_file():
        os.replace(olds.pop(), final_dir)
    leftovers = olds + list(final_dir.parent.glob(f".{final_dir.name}.partial-*"))
    for path in leftovers:
        pid = _leftover_pid(path, final_dir, "old" if path in olds else "partial")
        if pid is not None and not pid_alive(pid):
            shutil.rmtree(path, ignore_errors=True)
    legacy = final_dir.with_name(final_dir.name + ".partial")   # the fixed name of earlier versions
    if legacy.is_dir():
        shutil.rmtree(legacy, ignore_errors=True)


def swap_into_place(tmp: Path, final_dir: Path) -> None:
    """Replace ``final_dir`` by the finished folder ``tmp`` (readers see the old or the new, whole)."""
    with _publishing(final_dir):
        _recover(final_dir)
        old = None
        if final_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.old-{os.getpid()}-", dir=final_dir.parent))
            os.replace(final_dir, old)
        publish(tmp, final_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# -- what a rerun compares --------------------------------------------------------------------------
def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))


def stage_key(*, parameters: dict, provenance: dict, code_version: str, upstream: dict) -> str:
    """One checksum of what a stage's outputs depend on: its parameters, the profile's provenance,
    its code and the checksums of the files it read."""
    body = _canonical({"parameters": parameters, "provenance": provenance, "code_version": code_version,
                       "upstream": upstream})
    return hashlib.sha256(body.encode()).hexdigest()


def _module_file(module: str) -> Path | None:
    base = PROJECT_ROOT / Path(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


_PARSE_LOCK = threading.Lock()   # ast.parse from two threads at once can fail on Python 3.11 (a CPython bug)


def _library_imports(path: Path) -> set[str]:
    out = set()
    source = path.read_text(encoding="utf-8")
    with _PARSE_LOCK:
        tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("proloc_lib"):
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("proloc_lib"))
    return out


def library_modules(module: str) -> dict[str, Path]:
    """``module`` and every ``proloc_lib`` module it imports, transitively (with the packages on the
    way, whose ``__init__`` runs too): name -> source file."""
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        parts = todo.pop().split(".")
        for i in range(1, len(parts) + 1):
            sub = ".".join(parts[:i])
            path = _module_file(sub)
            if path is not None and sub not in seen:
                seen[sub] = path
                todo.extend(_library_imports(path))
    return seen


def code_version(module: str, notebook: str | Path | None = None) -> str:
    """A checksum of the library code ``module`` runs (``library_modules``: their sources) and of
    ``notebook``'s cells (type and source; not outputs, ids or metadata). Uncommitted edits count,
    comments too (a checksum cannot tell them apart)."""
    h = hashlib.sha256()
    for name, path in sorted(library_modules(module).items()):
        h.update(f"{name}\0".encode() + path.read_bytes() + b"\0")
    if notebook is not None:
        nb = json.loads(Path(notebook).read_text(encoding="utf-8"))
        cells = [(c.get("cell_type"), "".join(c.get("source", ""))) for c in nb.get("cells", [])]
        h.update(_canonical(cells).encode())
    return h.hexdigest()[:32]


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
