"""Folder locks: one run writes a stage folder at a time; runs that only read it share it.

A stage run takes its folder's lock exclusively for the whole run (``FolderLock(folder)``) and
the folders it reads shared (``shared=True``); a second run that wants the folder otherwise is
refused at once with one line naming the holder (pid, host, command, start time). Locks are
``flock`` locks on ``.<folder>.lock`` beside the folder, so the system drops the lock of a run
that died; the holder record it left is reported once as taken over.

``proloc run`` holds the lock of the stage it runs and hands it to the notebook's kernel through
``$PROLOC_STAGE_LOCKS`` (lock path -> token): the kernel's stage finds the lock held by its parent
and goes on. Within one process, a newer lock on the same folder from the same thread takes over
(a notebook cell run twice); the older holder can then no longer publish.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import socket
import sys
import threading
import time
import uuid
import weakref
from pathlib import Path

from proloc_lib.core.errors import RunFailed

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock
    fcntl = None

LOCKS_ENV = "PROLOC_STAGE_LOCKS"
_HELD: weakref.WeakValueDictionary = weakref.WeakValueDictionary()   # lock path -> exclusive FolderLock
_HELD_GUARD = threading.Lock()
_WARNED: set = set()


class StageBusy(RunFailed):
    """Another run holds the folder (the message names it), or this holder was superseded."""


def lock_path(folder: str | os.PathLike) -> Path:
    folder = Path(folder)
    return folder.parent / f".{folder.name}.lock"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (one we may not signal counts as alive)."""
    if int(pid) <= 0:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OverflowError):
        return True
    return True


def command_line(argv: list[str] | None = None) -> str:
    """This process's command as a user would recognise it (``proloc run --profile demo``)."""
    argv = list(sys.argv if argv is None else argv) or ["python"]
    head = Path(argv[0])
    if "ipykernel" in head.name:
        text = "a Jupyter kernel"
    elif head.name == "proloc" or (head.name == "__main__.py" and head.parent.name == "proloc_lib"):
        text = " ".join(["proloc", *argv[1:]])
    else:
        text = " ".join([head.name, *argv[1:]])
    return text if len(text) <= 200 else text[:197] + "..."


def _record(token: str, *, mode: str) -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "command": command_line(), "mode": mode,
            "started": dt.datetime.now().astimezone().isoformat(timespec="seconds"), "token": token}


def _read(path: Path) -> dict | None:
    try:
        rec = json.loads(path.read_text(encoding="utf-8") or "null")
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and "pid" in rec else None


def _describe(rec: dict) -> str:
    return (f"pid {rec.get('pid')} on {rec.get('host', '?')} (`{rec.get('command', '?')}`, "
            f"started {rec.get('started', '?')})")


def _delegated_token(path: Path) -> str | None:
    try:
        return json.loads(os.environ.get(LOCKS_ENV) or "{}").get(str(path))
    except (ValueError, AttributeError):
        return None


def delegation_env(*locks: "FolderLock") -> dict:
    """``{PROLOC_STAGE_LOCKS: ...}`` for a child process that works under these held locks."""
    return {LOCKS_ENV: json.dumps({str(lk.path): lk.token for lk in locks if lk.token})}


class FolderLock:
    """The lock of one folder: ``acquire()`` (non-blocking; ``StageBusy`` when held), ``release()``,
    ``check_owned()`` before publishing. Released when the object is dropped or the process ends."""

    def __init__(self, folder: str | os.PathLike, *, shared: bool = False):
        self.folder, self.shared = Path(folder), shared
        self.path = lock_path(self.folder)
        self.token = uuid.uuid4().hex
        self._fh = None
        self._reader_file: Path | None = None
        self._owner_thread = threading.get_ident()
        self.state = "free"   # free, held, delegated (a parent holds it), joined (this thread holds it), unlocked

    # -- acquiring ------------------------------------------------------------------------------
    def acquire(self) -> "FolderLock":
        if self.state != "free":
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if fcntl is None:
            return self._unlocked("this system has no file locks")
        fh = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(fh, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            return self._held_elsewhere()
        except OSError as exc:
            fh.close()
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                return self._unlocked(f"file locks are not supported there ({exc.strerror})")
            raise
        self._fh = fh
        if self.shared:
            self._reader_file = self.path.with_name(f"{self.path.name}.{os.getpid()}-{self.token[:8]}.reader")
            self._reader_file.write_text(json.dumps(_record(self.token, mode="read")), encoding="utf-8")
        else:
            left = _read(self.path)
            if left and left.get("token") != self.token:
                print(f"note: {self.folder}: taking over the lock left by {_describe(left)}, which ended "
                      "without releasing it", file=sys.stderr)
            self._write_record()
            with _HELD_GUARD:
                _HELD[str(self.path)] = self
        self.state = "held"
        return self

    def _write_record(self) -> None:
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(json.dumps(_record(self.token, mode="write")))
        self._fh.flush()

    def _held_elsewhere(self) -> "FolderLock":
        holder = _read(self.path)
        for _ in range(20):   # the holder writes its record just after taking the lock: give it a moment
            if holder:
                break
            time.sleep(0.05)
            holder = _read(self.path)
        if holder and holder.get("token") and holder.get("token") == _delegated_token(self.path):
            self.state, self.token = "delegated", holder["token"]
            return self
        with _HELD_GUARD:
            mine = _HELD.get(str(self.path))
        if (mine is not None and mine._owner_thread == threading.get_ident()
                and holder and holder.get("pid") == os.getpid()):
            if self.shared:          # reading what this thread itself is writing
                self.state = "joined"
                return self
            self._fh, mine._fh, mine.state = mine._fh, None, "superseded"
            self._write_record()
            with _HELD_GUARD:
                _HELD[str(self.path)] = self
            self.state = "held"
            return self
        if holder is None:
            readers = [r for r in map(_read, sorted(self.path.parent.glob(self.path.name + ".*.reader")))
                       if r and pid_alive(r["pid"])]
            holder = readers[0] if readers else {}
        what = "read" if holder.get("mode") == "read" else "written"
        who = _describe(holder) if holder else "another run"
        raise StageBusy(f"{self.folder} is being {what} by {who}; run again when that run has finished, "
                        "or stop it")

    def _unlocked(self, why: str) -> "FolderLock":
        if str(self.path.parent) not in _WARNED:
            _WARNED.add(str(self.path.parent))
            print(f"note: {self.path.parent}: {why}; concurrent runs there are not kept apart", file=sys.stderr)
        self.state = "unlocked"
        return self

    # -- holding and releasing ------------------------------------------------------------------
    def check_owned(self) -> None:
        """Raise ``StageBusy`` unless this object may still publish into the folder."""
        if self.state == "superseded":
            raise StageBusy(f"{self.folder}: a newer run of this stage in this process took it over; "
                            "publish from that one")
        if self.state == "free":
            raise StageBusy(f"{self.folder}: not locked by this run (acquire its lock first)")

    def release(self) -> None:
        if self._reader_file is not None:
            self._reader_file.unlink(missing_ok=True)
            self._reader_file = None
        if self._fh is not None:
            try:
                if not self.shared:
                    self._fh.seek(0)
                    self._fh.truncate()
                fcntl.flock(self._fh, fcntl.LOCK_UN)
            finally:
                self._fh.close()
                self._fh = None
        if self.state != "superseded":
            self.state = "free"

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self):
        try:
            self.release()
        except Exception:  # interpreter shutdown: the system drops the flock anyway
            pass
