"""Notebooks through papermill: each executed copy is written whole, a failed run keeps the last good copy."""

from __future__ import annotations

import contextlib
import os
import re
import sys
from pathlib import Path

from proloc_lib.core import paths, progress
from proloc_lib.core.errors import RunFailed, UserError

# the inline backend: executed notebooks keep their figures as outputs (Agg would drop them)
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"
# what every kernel whose outputs are saved gets: inline figures, and progress bars that leave one
# final text line each (core.progress) instead of redrawn stderr lines or widgets stuck at 0%
KERNEL_ENV = {"MPLBACKEND": INLINE_BACKEND, progress.ENV: "final"}


@contextlib.contextmanager
def kernel_environment():
    """``KERNEL_ENV`` in this process's environment (inherited by the kernels started inside), restored after."""
    previous = {k: os.environ.get(k) for k in KERNEL_ENV}
    os.environ.update(KERNEL_ENV)
    try:
        yield dict(os.environ)
    finally:
        for k, v in previous.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# -- run: the notebooks ---------------------------------------------------------------------------
NOTEBOOK_DIR = paths.PROJECT_ROOT / "notebooks"


class StageFailed(RunFailed):
    pass


def notebooks(only: str | None = None) -> list[Path]:
    books = sorted(NOTEBOOK_DIR.glob("0[1-9]_*.ipynb"))
    if not only:
        return books
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    picked = [b for b in books if b.name[:2] in wanted]
    missing = sorted(set(wanted) - {b.name[:2] for b in picked})
    if missing:
        raise UserError(f"no notebook numbered {', '.join(missing)} (have {', '.join(b.name[:2] for b in books)})")
    return picked


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _short_error(exc) -> str:
    """The notebook's own error in one line (``OfflineError: cannot reach ...``), no traceback."""
    ename = getattr(exc, "ename", None) or type(exc).__name__
    evalue = _ANSI.sub("", str(getattr(exc, "evalue", "") or "")).strip()
    lines = [ln.strip() for ln in evalue.splitlines() if ln.strip()]
    text = lines[-1] if lines else ""
    if len(text) > 400:
        text = text[:397] + "..."
    return f"{ename}: {text}" if text else ename


def execute_notebook(src: Path, dest: Path, parameters: dict, *, progress: bool = True) -> Path:
    """Run one notebook into ``dest`` without ever leaving a half-written or failed copy there.

    It runs into a temporary file beside ``dest``; on success that replaces ``dest``; on failure
    it is kept as ``<name>.failed.ipynb`` (the error inside) and ``dest``, the last good copy, is
    untouched. Kernels get ``KERNEL_ENV``: figures and one final line per progress bar stay in the copy.
    """
    import papermill as pm

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.stem}.running.ipynb")
    failed = dest.with_name(f"{dest.stem}.failed.ipynb")
    try:
        with kernel_environment():
            pm.execute_notebook(str(src), str(tmp), parameters=parameters, cwd=str(src.parent),
                                progress_bar=progress, kernel_name="python3",
                                # the kernel's own start-up warnings (e.g. "running over TCP") are noise here
                                extra_arguments=["--IPKernelApp.log_level=ERROR"])
    except BaseException as exc:
        if tmp.exists():
            os.replace(tmp, failed)
        if isinstance(exc, pm.PapermillExecutionError):
            kept = f"; the last good copy {dest} is kept" if dest.exists() else ""
            raise StageFailed(f"{src.stem} failed: {_short_error(exc)} (executed copy with the error: "
                              f"{failed}{kept})") from None
        raise
    os.replace(tmp, dest)
    if failed.exists():
        failed.unlink()  # superseded by a good run
    return dest


# -- nbval: executed copies re-executed against their own saved outputs ---------------------------
# regexes that blank what differs between two correct runs (paths, times, hashes, float noise)
NBVAL_SANITIZE = NOTEBOOK_DIR / "nbval_sanitize.cfg"


def nbval_command(executed: list[Path], *, python: str | None = None, sanitize: Path = NBVAL_SANITIZE) -> list[str]:
    """``pytest --nbval`` (strict: every output compared after sanitising) on executed notebooks, in
    the kernel environment of the runs that wrote them; run it inside :func:`kernel_environment`."""
    return [python or sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval",
            "--nbval-current-env", "--nbval-sanitize-with", str(sanitize), "--nbval-cell-timeout", "900",
            "--rootdir", str(Path(executed[0]).parent), *map(str, executed)]
