"""A full disk (or quota) while writing: one line naming what was written, not a traceback; a
safetensors header read without trusting it."""
from __future__ import annotations

import errno

import pytest
import safetensors.torch
import torch

from proloc_lib.core import fileio
from proloc_lib.core.errors import EXIT_FAILED, DiskFull, UserError
from proloc_lib.core.fileio import full_disk_as_error


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_no_space_becomes_one_line_naming_what_was_written(tmp_path, code):
    with pytest.raises(DiskFull) as info:
        with full_disk_as_error(tmp_path / "out.csv"):
            raise OSError(code, "No space left on device")
    msg = str(info.value)
    assert msg.startswith(f"no space left on the device writing {tmp_path / 'out.csv'} (") and " free)" in msg
    assert "\n" not in msg and isinstance(info.value, UserError) and info.value.exit_code == EXIT_FAILED


def test_other_write_errors_pass_through(tmp_path):
    with pytest.raises(PermissionError):
        with full_disk_as_error(tmp_path / "out.csv"):
            raise PermissionError(errno.EACCES, "Permission denied")


def test_a_safetensors_header_is_read_alone_and_checked_against_the_file(tmp_path):
    good = tmp_path / "good.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(2, 3)}, str(good), metadata={"k": "v"})
    header, meta = fileio.read_safetensors_header(good, max_header=1 << 20)
    assert header["w"]["shape"] == [2, 3] and meta == {"k": "v"}
    body = good.read_bytes()
    cases = {"short": body[:5], "length": body + b"\0", "header": (2).to_bytes(8, "little") + b"[]"}
    for kind, data in cases.items():
        bad = tmp_path / f"{kind}.safetensors"
        bad.write_bytes(data)
        with pytest.raises(fileio.SafetensorsHeaderError) as info:
            fileio.read_safetensors_header(bad, max_header=1 << 20)
        assert info.value.kind == kind, (kind, str(info.value))
    with pytest.raises(fileio.SafetensorsHeaderError, match="header of"):     # larger than allowed
        fileio.read_safetensors_header(good, max_header=8)
