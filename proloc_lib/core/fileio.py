"""Writing files so that nothing half-written is ever seen, with the user's permissions.

Temporary files (``tempfile``, safetensors) are created 0600; ``publish`` gives the final file
the mode the user's umask asks for before renaming it into place.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
from pathlib import Path

from proloc_lib.core.errors import DiskFull

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def umask_mode(base: int = 0o666) -> int:
    """``base`` filtered by the process umask (read without changing it for long)."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


def publish(tmp: str | os.PathLike, final: str | os.PathLike) -> Path:
    """Atomically move a finished temporary file into place with umask permissions."""
    tmp, final = Path(tmp), Path(final)
    os.chmod(tmp, umask_mode(0o777 if tmp.is_dir() else 0o666))
    os.replace(tmp, final)
    return final


@contextlib.contextmanager
def full_disk_as_error(what: str | os.PathLike):
    """Turn "no space left on device" (or an exceeded quota) while writing ``what`` into
    ``DiskFull``: one line naming it and the space left, instead of a traceback."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in NO_SPACE:
            raise
        raise DiskFull(f"no space left on the device writing {what} ({_free_space(what)} free); "
                       "free some space or write elsewhere, then run again") from None


def _free_space(path: str | os.PathLike) -> str:
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return "unknown"
    for unit in ("B", "kB", "MB", "GB"):
        if free < 1000:
            return f"{free:.0f} {unit}" if unit == "B" else f"{free:.1f} {unit}"
        free /= 1000
    return f"{free:.1f} TB"


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file whole or not at all."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    return publish(tmp, path)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
