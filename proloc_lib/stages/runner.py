"""Notebooks through papermill: each executed copy is written whole, a failed run keeps the last good copy.

``run_stages`` is ``proloc run``'s batch: for each notebook it takes the stage's lock (a second run
of the same stage is refused in one line naming the holder), skips the stage when it is up to date
(``stages.common.stage_status``: inputs, parameters and code unchanged) unless forced, and otherwise
executes the notebook with the lock handed to its kernel (``core.locks``).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import tempfile
import threading
from pathlib import Path

from proloc_lib.core import locks, paths, progress
from proloc_lib.core.errors import RunFailed, UserError
from proloc_lib.core.fileio import publish
from proloc_lib.profiles.loader import Profile, profile_reference
from proloc_lib.stages.assembly import AssemblyStage
from proloc_lib.stages.baselines import BaselinesStage
from proloc_lib.stages.common import stage_status
from proloc_lib.stages.embeddings import EmbeddingsStage
from proloc_lib.stages.figures import FiguresStage
from proloc_lib.stages.training import TrainingStage

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


STAGE_CLASSES = {cls.name: cls for cls in (AssemblyStage, EmbeddingsStage, TrainingStage, BaselinesStage,
                                           FiguresStage)}


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


def _remove_leftovers(dest: Path) -> None:
    """Temporary copies of ``dest`` left by runs that were killed (their pid is gone)."""
    prefix = f".{dest.stem}.running-"
    for path in dest.parent.glob(f"{prefix}*.ipynb"):
        pid = path.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not locks.pid_alive(int(pid)):
            path.unlink(missing_ok=True)
    dest.with_name(f".{dest.stem}.running.ipynb").unlink(missing_ok=True)   # the fixed name of earlier versions


KERNEL_ERR_TAIL = 4000   # characters of a dead kernel's own stderr shown with its error


def _kernel_manager(stderr, env: dict, stopping: list):
    """A kernel manager whose kernel writes its own stderr to ``stderr`` (kept from the terminal: a
    kernel stopped mid-cell prints ZMQ tracebacks there) and gets ``env`` on top of ours; when the
    run is being stopped (``stopping``), the kernel is interrupted before it is shut down, so the
    stage stops and cleans up rather than being killed mid-write."""
    from jupyter_client import AsyncKernelManager

    class StageKernelManager(AsyncKernelManager):
        async def _async_launch_kernel(self, kernel_cmd, **kw):
            kw["stderr"] = stderr
            kw["env"] = {**(kw.get("env") or os.environ), **env}
            return await super()._async_launch_kernel(kernel_cmd, **kw)

        async def _async_shutdown_kernel(self, now: bool = False, restart: bool = False):
            self.interrupt_on_shutdown = bool(stopping)
            return await super()._async_shutdown_kernel(now=now, restart=restart)

        async def _async_interrupt_kernel(self):
            # jupyter_client interrupts every kernel it shuts down; a kernel whose notebook has
            # finished has nothing to stop, and the interrupt can land while it still flushes its
            # output, adding "KeyboardInterrupt caught in kernel" to what the run prints
            if not getattr(self, "interrupt_on_shutdown", True):
                return
            try:
                await super()._async_interrupt_kernel()
            except Exception:  # already gone
                pass

    return StageKernelManager


@contextlib.contextmanager
def _stop_on_signals(stopping: list):
    """Ctrl-C and SIGTERM raise KeyboardInterrupt here and are noted in ``stopping`` (main thread only)."""
    def stop(signum, frame):
        stopping.append(signum)
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def execute_notebook(src: Path, dest: Path, parameters: dict, *, progress: bool = True,
                     env: dict | None = None) -> Path:
    """Run one notebook into ``dest`` without ever leaving a half-written or failed copy there.

    It runs into a temporary file of its own beside ``dest``; on success that replaces ``dest``; on
    failure it is kept as ``<name>.failed.ipynb`` (the error inside) and ``dest``, the last good
    copy, is untouched; when interrupted (Ctrl-C, SIGTERM) it is removed. Kernels get ``KERNEL_ENV``
    (figures and one final line per progress bar stay in the copy) and ``env`` (e.g. the locks
    handed to them).
    """
    import papermill as pm

    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(dest)
    fd, name = tempfile.mkstemp(prefix=f".{dest.stem}.running-{os.getpid()}-", suffix=".ipynb", dir=dest.parent)
    os.close(fd)
    tmp = Path(name)
    failed = dest.with_name(f"{dest.stem}.failed.ipynb")
    kernel_err = tempfile.TemporaryFile(mode="w+b")
    crashed, stopping = False, []
    try:
        with _stop_on_signals(stopping):
            pm.execute_notebook(str(src), str(tmp), parameters=parameters, cwd=str(src.parent),
                                progress_bar=progress, kernel_name="python3",
                                kernel_manager_class=_kernel_manager(kernel_err, {**KERNEL_ENV, **(env or {})},
                                                                     stopping),
                                # the kernel's own start-up warnings (e.g. "running over TCP") are noise here
                                extra_arguments=["--IPKernelApp.log_level=ERROR"])
    except KeyboardInterrupt:
        tmp.unlink(missing_ok=True)
        raise
    except BaseException as exc:
        if tmp.exists():
            publish(tmp, failed)
        if isinstance(exc, pm.PapermillExecutionError):
            kept = f"; the last good copy {dest} is kept" if dest.exists() else ""
            raise StageFailed(f"{src.stem} failed: {_short_error(exc)} (executed copy with the error: "
                              f"{failed}{kept})") from None
        crashed = True
        raise
    finally:
        # What the kernel printed outside its cells says why a kernel died; otherwise it is the noise of
        # its shutdown (ZMQ tracebacks of messages sent after its sockets closed), kept from the terminal.
        if crashed:
            kernel_err.seek(0)
            text = kernel_err.read().decode(errors="replace")
            if text.strip():
                sys.stderr.write(text[-KERNEL_ERR_TAIL:])
        kernel_err.close()
    publish(tmp, dest)   # the user's permissions (a temporary file is made 0600)
    if failed.exists():
        failed.unlink()  # superseded by a good run
    return dest


# -- run: the batch -------------------------------------------------------------------------------
def run_stages(cfg: Profile, books: list[Path], *, seed: int, device: str, data_root=None, out: Path,
               mirror: str | None = None, gpus: int = 1, force: bool = False,
               progress: bool = True) -> list[tuple[str, str]]:
    """``proloc run``: each of ``books`` in order under its stage's lock, skipped when up to date
    (unless ``force``). ``device``: resolved; ``gpus``: notebook 03's training ranks (how it runs,
    not what it computes: an up-to-date stage 03 is not rerun for another number). Returns
    (notebook, "ran" | "skipped") per notebook."""
    label = cfg.name if seed == 0 else f"{cfg.name} (seed {seed})"
    params = {"profile": profile_reference(cfg), "seed": seed, "device": device}
    if data_root is not None:
        params["data_root"] = str(paths.data_root(data_root))
    done = []
    for book in books:
        cls = STAGE_CLASSES.get(book.stem)
        options = {"mirror": mirror} if cls is AssemblyStage else {}
        extra = {"mirror": mirror} if mirror and cls is AssemblyStage else {}
        if cls is TrainingStage and gpus > 1:
            extra["gpus"] = gpus
        if cls is None:   # a notebook without a stage driver: always run
            print(f"== {label}: {book.name}", flush=True)
            execute_notebook(book, out / book.name, {**params, **extra}, progress=progress)
            done.append((book.name, "ran"))
            continue
        with locks.FolderLock(paths.stage_dir(cfg.name, cls.name, data_root, seed=seed)) as lock:
            # stale or missing inputs stop the run here, in one line, before a kernel starts
            why = stage_status(cls, cfg, seed=seed, device=device, data_root=data_root, **options)
            why = "forced" if force else why
            if why is None and (out / book.name).exists():
                print(f"== {label}: {book.name} up to date (inputs, parameters and code unchanged); skipped",
                      flush=True)
                done.append((book.name, "skipped"))
                continue
            print(f"== {label}: {book.name} ({why or 'no executed copy'})", flush=True)
            execute_notebook(book, out / book.name, {**params, **extra}, progress=progress,
                             env=locks.delegation_env(lock))
            done.append((book.name, "ran"))
    return done


# -- nbval: executed copies re-executed against their own saved outputs ---------------------------
# regexes that blank what differs between two correct runs (paths, times, hashes, float noise)
NBVAL_SANITIZE = NOTEBOOK_DIR / "nbval_sanitize.cfg"


def nbval_command(executed: list[Path], *, python: str | None = None, sanitize: Path = NBVAL_SANITIZE) -> list[str]:
    """``pytest --nbval`` (strict: every output compared after sanitising) on executed notebooks, in
    the kernel environment of the runs that wrote them; run it inside :func:`kernel_environment`."""
    return [python or sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval",
            "--nbval-current-env", "--nbval-sanitize-with", str(sanitize), "--nbval-cell-timeout", "900",
            "--rootdir", str(Path(executed[0]).parent), *map(str, executed)]
