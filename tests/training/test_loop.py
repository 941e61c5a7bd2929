"""A full disk while training saves its per-epoch resume state: one line naming the file, the last
good state kept (a rerun continues from it), no half-written file left."""
from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch

from proloc_lib.core.errors import EXIT_FAILED, DiskFull
from proloc_lib.data.labels import LABELS
from proloc_lib.training import loop
from proloc_lib.training.settings import make_config
from test_training import make_stores   # tiny stores with a known signal


def test_a_full_disk_while_saving_the_resume_state_is_one_line_and_keeps_the_last_state(tmp_path, monkeypatch):
    ds = make_stores(tmp_path)
    cfg = make_config("corrected", d_model=16, n_heads=2, n_blocks=1, max_epochs=3, patience=None, batch_size=8)
    resume = tmp_path / "resume"
    real_save, saves = torch.save, []

    def save(obj, f, *args, **kwargs):
        saves.append(Path(f))
        if len(saves) == 2:                        # epoch 2: the disk is full half-way through the write
            Path(f).write_bytes(b"half a state")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(loop.torch, "save", save)
    with pytest.raises(DiskFull) as info:
        loop.train_fusion(ds["train"], ds["val"], cfg, LABELS, seed=0, progress=False, resume_dir=resume)
    msg = str(info.value)
    assert msg.startswith(f"no space left on the device writing the resume state {resume / 'last_state.pt'} (")
    assert "\n" not in msg and info.value.exit_code == EXIT_FAILED
    assert sorted(p.name for p in resume.iterdir()) == ["last_state.pt"]   # no half-written .tmp beside it
    kept = loop.torch.load(resume / "last_state.pt", weights_only=True)
    assert json.loads(kept["state_json"])["epoch"] == 1                      # the last good state, epoch 1

    monkeypatch.setattr(loop.torch, "save", real_save)
    _, hist = loop.train_fusion(ds["train"], ds["val"], cfg, LABELS, seed=0, progress=False, resume_dir=resume)
    _, fresh = loop.train_fusion(ds["train"], ds["val"], cfg, LABELS, seed=0, progress=False)
    assert list(hist["epoch"]) == [1, 2, 3]
    assert hist["train_loss"].round(6).tolist() == fresh["train_loss"].round(6).tolist()   # continued exactly
