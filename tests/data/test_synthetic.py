"""Synthetic images are written with the user's umask (they were 0600 whatever it was)."""
from __future__ import annotations

import os
import stat

import pytest

from proloc_lib.data.synthetic import write_protein_images


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_synthetic_images_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        paths = write_protein_images("P1", [1, 0, 0, 1, 0], tmp_path, 2, 0, size=64)
    finally:
        os.umask(old)
    assert [stat.S_IMODE(p.stat().st_mode) for p in paths] == [mode, mode]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["P1_0.jpg", "P1_1.jpg"]   # no temporary file left
