"""Checkpoints: the label names and order they were trained with, configs that may not name files,
malformed configs named with their file. The checkpoint is the tiny one of the shared predict run
(the `predict_inputs` fixture, conftest.py)."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import proloc_lib.predict as predict_mod
from proloc_lib.core.errors import UserError
from proloc_lib.data.labels import LABELS
from proloc_lib.training import checkpoint
from proloc_lib.training.checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointMismatchError,
    read_config,
)
from proloc_lib.training.model import FusionConfig, FusionModel


@pytest.fixture
def env(predict_inputs):
    """This module's name for the shared predict run."""
    return predict_inputs


def _edit(env, name, fn, src=None):
    dst = env["root"] / name
    shutil.copytree(src or env["ckpt"], dst)
    meta = json.loads((dst / "config.json").read_text())
    fn(meta)
    (dst / "config.json").write_text(json.dumps(meta))
    return dst


def test_labels_must_match_names_and_order(env):
    swapped = LABELS[1:] + LABELS[:1]
    reordered = _edit(env, "ck_reorder", lambda m: m.update(labels=swapped))
    # the weights record the label order they were trained with: an edited config.json is caught
    with pytest.raises(CheckpointMismatchError, match="trained with"):
        Checkpoint.load(reordered)
    # and a caller that expects the project's labels is told the order differs
    with pytest.raises(CheckpointMismatchError, match="another order"):
        predict_mod.predict(reordered, env["fasta"], env["images"], device="cpu", progress=False)
    renamed = _edit(env, "ck_rename", lambda m: m.update(labels=["cytosol", *LABELS[1:]]))
    with pytest.raises(CheckpointMismatchError, match=r"missing \['cytoplasm'\], unexpected \['cytosol'\]"):
        read_config(renamed, labels=LABELS)
    with pytest.raises(CheckpointMismatchError, match="trained with"):
        Checkpoint.load(renamed)
    # older checkpoints (no label record in the weights) are still checked against the caller
    model = Checkpoint.load(env["ckpt"]).model
    legacy = _legacy_checkpoint(model, env["root"] / "ck_legacy", json.loads((env["ckpt"] / "config.json").read_text()))
    legacy_swapped = _edit(env, "ck_legacy_swapped", lambda m: m.update(labels=swapped), src=legacy)
    with pytest.raises(CheckpointMismatchError, match="another order"):
        Checkpoint.load(legacy_swapped, labels=LABELS)
    # n_labels in the model config must agree with the labels
    short = _edit(env, "ck_short", lambda m: m.update(labels=LABELS[:4]))
    with pytest.raises(CheckpointMismatchError, match="5 distinct names"):
        Checkpoint.load(short)
    assert Checkpoint.load(env["ckpt"], labels=LABELS).labels == LABELS


def _legacy_checkpoint(model, out, meta):
    """A checkpoint as the first releases wrote it: weights without a label record + config.json."""
    from safetensors.torch import save_file
    out.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps({**meta, "model": model.cfg.to_dict()}))
    return out


@pytest.mark.parametrize("edit,match", [
    (lambda m: m["encoders"]["image"]["overrides"].update(checkpoint_path="/tmp/evil.pth"),
     r"\['checkpoint_path'\] not allowed in 'encoders.image.overrides'"),
    (lambda m: m["encoders"]["image"]["overrides"].update(pretrained_cfg_overlay={"file": "/tmp/x"}),
     "not allowed in 'encoders.image.overrides'"),
    (lambda m: m["encoders"]["image"].update(model="local-dir:/tmp/evil"), "is not a model id"),
    (lambda m: m["encoders"]["image"].update(model="hf-hub:someone/evil"), "is not a model id"),
    (lambda m: m["encoders"]["sequence"].update(model="../evil", pretrained=True), "is not a model id"),
    (lambda m: m["encoders"]["sequence"].update(model="/abs/model", pretrained=True), "is not a model id"),
    (lambda m: m["encoders"]["sequence"]["config"].update(feed_forward_proj="/tmp/x"), "may not name files"),
    (lambda m: m["encoders"]["image"].update(cache_dir="/tmp"), r"\['cache_dir'\] not allowed"),
    (lambda m: m["encoders"].update(weights_file="/tmp/x"), r"\['weights_file'\] not allowed in 'encoders'"),
])
def test_checkpoint_config_may_not_name_files(env, tmp_path, monkeypatch, edit, match):
    import timm
    import transformers

    def refuse(*a, **k):
        raise AssertionError("a model was created from a refused checkpoint config")

    monkeypatch.setattr(timm, "create_model", refuse)
    monkeypatch.setattr(transformers.T5EncoderModel, "from_pretrained", refuse)
    bad = _edit(env, tmp_path / "ck", edit)
    with pytest.raises(CheckpointError, match=match):
        predict_mod.predict(bad, env["fasta"], env["images"], device="cpu", progress=False)
    with pytest.raises(CheckpointError, match=match):
        Checkpoint.load(bad)
    assert issubclass(CheckpointError, UserError)


@pytest.mark.parametrize("edit,match", [
    (lambda m: m["model"].update(d_model=-16), r"d_model=-16.*positive integers"),
    (lambda m: m["model"].update(n_heads="2"), "bad 'model' config"),
    (lambda m: m["model"].update(n_blocks=3), "does not fit the model in config.json"),
    (lambda m: m.update(thresholds=[0.5, 0.5, "x", 0.5, 0.5]), "'thresholds' must be 5 numbers in"),
    (lambda m: m["encoders"].update(long_policy="chop"), "long_policy must be 'truncate' or 'windows'"),
])
def test_malformed_checkpoint_config_is_named(env, tmp_path, edit, match):
    bad = _edit(env, tmp_path / "ck", edit)
    with pytest.raises(CheckpointError, match=match) as info:
        Checkpoint.load(bad)
    assert str(bad / "config.json") in str(info.value) or str(bad / "model.safetensors") in str(info.value)
    (bad / "config.json").write_bytes(b"\xff\xfe{\x00")
    with pytest.raises(CheckpointError, match="config.json is not UTF-8 text"):
        Checkpoint.load(bad)


def test_encoder_option_values_are_plain(tmp_path):
    from proloc_lib.training.checkpoint import check_encoder_config

    ok = {"model": "vit_base_patch16_224.orig_in21k", "pretrained": True}
    check_encoder_config("image", ok, tmp_path / "config.json")
    for bad, match in (({**ok, "model": "vit_base_patch16_224/../../x"}, "is not a model id"),
                       ({**ok, "pretrained": "/tmp/weights.pth"}, "may not name files")):
        with pytest.raises(CheckpointError, match=match):
            check_encoder_config("image", bad, tmp_path / "config.json")


THREE = ["cytoplasm", "endoplasmic reticulum", "nucleus"]


def _checkpoint(**kw):
    torch.manual_seed(0)
    model = FusionModel(FusionConfig(seq_dim=8, img_dim=8, n_labels=3, d_model=8, n_heads=2, n_blocks=1))
    return Checkpoint(model=model.eval(), run_id="fusion.corrected", labels=THREE, label_map="m@1",
                      thresholds=[0.35, 0.5, 0.6], training={}, config_hash="",
                      encoders={"sequence": {"model": "Rostlab/x", "pretrained": False},
                                "image": {"model": "vit_base_patch16_224", "pretrained": False},
                                "max_residues": 100, "long_policy": "truncate"},
                      sequence_encoder={}, image_encoder={}, **kw)


def test_fallback_thresholds_round_trip_and_older_checkpoints_have_none(tmp_path):
    out = _checkpoint(threshold_fallback=["endoplasmic reticulum"]).save(tmp_path / "ck")
    meta = json.loads((out / "config.json").read_text())
    assert meta["threshold_fallback"] == ["endoplasmic reticulum"] and meta["thresholds"][1] == 0.5
    assert Checkpoint.load(out, labels=THREE).threshold_fallback == ["endoplasmic reticulum"]
    del meta["threshold_fallback"]                                 # written before fallbacks were recorded
    (out / "config.json").write_text(json.dumps(meta))
    assert Checkpoint.load(out, labels=THREE).threshold_fallback == []


def test_a_fallback_naming_an_unknown_label_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="'threshold_fallback' must list label names"):
        _checkpoint(threshold_fallback=["golgi"]).save(tmp_path / "ck")


# -- untrusted checkpoints: sizes, the header before anything is built, non-finite weights ---------
LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy" / "checkpoint"


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
