"""Writing files so that nothing half-written is ever seen, with the user's permissions; reading a
safetensors header without trusting it.

Temporary files (``tempfile``, safetensors) are created 0600; ``publish`` gives the final file
the mode the user's umask asks for before renaming it into place.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
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


class SafetensorsHeaderError(ValueError):
    """What is wrong with a safetensors file's header, as a phrase its reader puts after the file's
    name; ``kind``: "short" (too short for the header it announces), "header" (not a JSON object of
    tensor entries), "length" (the file is shorter or longer than its header says)."""

    def __init__(self, kind: str, problem: str):
        super().__init__(problem)
        self.kind = kind


def read_safetensors_header(path: str | Path, *, max_header: int) -> tuple[dict, dict]:
    """(tensor entries, metadata) of a safetensors file, read from its header alone (no tensor),
    after checking that the file is exactly as long as the header says. ``OSError`` passes through;
    a header that is not safetensors raises ``SafetensorsHeaderError``."""
    size = Path(path).stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise SafetensorsHeaderError("short", f"{size} bytes: not a safetensors file")
        n = int.from_bytes(head, "little")
        if n > min(size - 8, max_header):
            raise SafetensorsHeaderError("short", f"header of {n} bytes in a {size}-byte file")
        raw = fh.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise SafetensorsHeaderError("header", "its header is not JSON") from None
    if not isinstance(header, dict):
        raise SafetensorsHeaderError("header", "its header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    try:
        end = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
    except (TypeError, KeyError, IndexError, ValueError):
        raise SafetensorsHeaderError("header", "malformed tensor entries in its header") from None
    if 8 + n + end != size:
        raise SafetensorsHeaderError("length", f"{size} bytes on disk, its header says {8 + n + end}")
    return header, meta
