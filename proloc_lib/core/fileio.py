"""Writing files so that nothing half-written is ever seen, with the user's permissions.

Temporary files (``tempfile``, safetensors) are created 0600; ``publish`` gives the final file
the mode the user's umask asks for before renaming it into place.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


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
