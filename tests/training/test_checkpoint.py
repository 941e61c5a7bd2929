"""Untrusted checkpoints: sizes in range, the declared model compared with the safetensors header
before anything is built, non-finite weights refused by name; each one line, no traceback."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from proloc_lib.core.errors import UserError
from proloc_lib.training import checkpoint
from proloc_lib.training.checkpoint import Checkpoint, CheckpointError
from proloc_lib.training.model import FusionConfig, FusionModel

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy" / "checkpoint"
LABELS = ["cytoplasm", "endoplasmic reticulum", "mitochondria", "nucleus", "plasma membrane"]


def _save(out: Path) -> Path:
    torch.manual_seed(0)
    model = FusionModel(FusionConfig(seq_dim=6, img_dim=8, d_model=8, n_heads=2, n_blocks=1)).eval()
    meta = json.loads((LEGACY / "config.json").read_text())
    enc = meta["encoders"]
    return Checkpoint(model=model, run_id="fusion.corrected", labels=LABELS, label_map="x", thresholds=[0.5] * 5,
                      training={}, config_hash="t", encoders=enc, sequence_encoder={"model_id": "s"},
                      image_encoder={"model_id": "i"}).save(out)


def _edit_config(ckpt: Path, **model_changes) -> None:
    meta = json.loads((ckpt / "config.json").read_text())
    meta["model"].update(model_changes)
    (ckpt / "config.json").write_text(json.dumps(meta))


def _error(ckpt: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        Checkpoint.load(ckpt, labels=LABELS)
    msg = str(info.value)
    assert "\n" not in msg and isinstance(info.value, UserError)
    return msg


@pytest.fixture
def ckpt(tmp_path):
    return _save(tmp_path / "ck")


def test_a_good_checkpoint_loads_and_its_header_matches_the_model(ckpt):
    model = Checkpoint.load(ckpt, labels=LABELS).model
    header = checkpoint.weights_header(ckpt / "model.safetensors")
    assert {k: shape for k, (_, shape) in header.items()} == {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert checkpoint.expected_shapes(model.cfg) == {k: shape for k, (_, shape) in header.items()}


def test_absurd_sizes_are_refused_before_anything_is_allocated(ckpt, monkeypatch):
    built = []
    monkeypatch.setattr(checkpoint, "FusionModel", lambda cfg: built.append(cfg) or FusionModel(cfg))
    _edit_config(ckpt, n_blocks=100_000_000)
    msg = _error(ckpt)
    assert "n_blocks=100000000" in msg and "<= 64" in msg and built == []


def test_sizes_in_range_that_the_weights_do_not_hold_are_refused_from_the_header(ckpt, monkeypatch):
    # in range, but ~35 GB of parameters if it were built: only the header is compared
    built = []
    real = checkpoint.FusionModel

    def spy(cfg):
        built.append(torch.get_default_device().type)
        return real(cfg)

    monkeypatch.setattr(checkpoint, "FusionModel", spy)
    _edit_config(ckpt, d_model=8192, n_heads=8, ff_mult=64)
    msg = _error(ckpt)
    assert f"{ckpt / 'model.safetensors'}: tensor " in msg and "needs [8192," in msg
    assert set(built) <= {"meta"}          # nothing built on a real device


def test_missing_and_unexpected_tensors_are_named(ckpt):
    _edit_config(ckpt, n_blocks=3)
    msg = _error(ckpt)
    assert "does not fit the model in config.json: missing 'blocks.1." in msg


def test_non_finite_weights_are_refused_naming_the_tensor(ckpt):
    path = ckpt / "model.safetensors"
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    state = load_file(str(path))
    state["head.weight"][0, 0] = float("nan")
    save_file(state, str(path), metadata=meta)
    msg = _error(ckpt)
    assert msg == f"{path}: tensor 'head.weight' holds NaN or infinite values; these weights cannot predict " \
                  "anything (did training diverge?)"
    state["head.weight"][0, 0] = float("inf")
    save_file(state, str(path), metadata=meta)
    assert "tensor 'head.weight' holds NaN or infinite" in _error(ckpt)


def test_integer_weights_and_damaged_headers_are_named(ckpt):
    path = ckpt / "model.safetensors"
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    state = load_file(str(path))
    state["head.bias"] = state["head.bias"].to(torch.int32)
    save_file(state, str(path), metadata=meta)
    assert "tensor 'head.bias' is I32, not a floating-point weight" in _error(ckpt)
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    assert "is truncated or padded" in _error(ckpt)
    path.write_bytes((10**12).to_bytes(8, "little") + data[8:])
    assert "truncated or garbage header" in _error(ckpt)


def test_the_older_checkpoint_still_loads(tmp_path):
    shutil.copytree(LEGACY, tmp_path / "legacy")
    model = Checkpoint.load(tmp_path / "legacy", labels=LABELS).model
    assert model.cfg.d_model == 8 and model.cfg.n_blocks == 1
