"""The checkpoint records which thresholds are fallbacks (not tuned)."""
import json

import pytest
import torch

from proloc_lib.training.checkpoint import Checkpoint, CheckpointError
from proloc_lib.training.model import FusionConfig, FusionModel

LABELS = ["cytoplasm", "endoplasmic reticulum", "nucleus"]


def _checkpoint(**kw):
    torch.manual_seed(0)
    model = FusionModel(FusionConfig(seq_dim=8, img_dim=8, n_labels=3, d_model=8, n_heads=2, n_blocks=1))
    return Checkpoint(model=model.eval(), run_id="fusion.corrected", labels=LABELS, label_map="m@1",
                      thresholds=[0.35, 0.5, 0.6], training={}, config_hash="",
                      encoders={"sequence": {"model": "Rostlab/x", "pretrained": False},
                                "image": {"model": "vit_base_patch16_224", "pretrained": False},
                                "max_residues": 100, "long_policy": "truncate"},
                      sequence_encoder={}, image_encoder={}, **kw)


def test_fallback_thresholds_round_trip_and_older_checkpoints_have_none(tmp_path):
    out = _checkpoint(threshold_fallback=["endoplasmic reticulum"]).save(tmp_path / "ck")
    meta = json.loads((out / "config.json").read_text())
    assert meta["threshold_fallback"] == ["endoplasmic reticulum"] and meta["thresholds"][1] == 0.5
    assert Checkpoint.load(out, labels=LABELS).threshold_fallback == ["endoplasmic reticulum"]
    del meta["threshold_fallback"]                                 # written before fallbacks were recorded
    (out / "config.json").write_text(json.dumps(meta))
    assert Checkpoint.load(out, labels=LABELS).threshold_fallback == []


def test_a_fallback_naming_an_unknown_label_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="'threshold_fallback' must list label names"):
        _checkpoint(threshold_fallback=["golgi"]).save(tmp_path / "ck")
