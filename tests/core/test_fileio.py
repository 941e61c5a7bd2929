"""A full disk (or quota) while writing: one line naming what was written, not a traceback."""
from __future__ import annotations

import errno

import pytest

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
