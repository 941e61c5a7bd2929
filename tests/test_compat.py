"""Files written by proloc_lib 0.1.0 (the flat-module layout) still load: a checkpoint, feature
stores, a resume state and a profile (tests/fixtures/legacy, see its README)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from proloc_lib.data.labels import LABELS
from proloc_lib.features.store import EmbeddingStore
from proloc_lib.profiles.loader import load_profile
from proloc_lib.training.checkpoint import Checkpoint
from proloc_lib.training.datasets import FusionDataset, image_samples
from proloc_lib.training.loop import predict_proba, train_fusion
from proloc_lib.training.settings import TrainConfig

LEGACY = Path(__file__).parent / "fixtures" / "legacy"


def _datasets(root: Path) -> dict:
    proteins, images = pd.read_csv(root / "proteins.csv"), pd.read_csv(root / "images.csv")
    seq, img = EmbeddingStore(root / "store" / "sequences"), EmbeddingStore(root / "store" / "images")
    return {s: FusionDataset(image_samples(images, proteins, LABELS, s), LABELS, seq, img) for s in ("train", "val")}


def test_old_stores_open_and_read(tmp_path):
    root = shutil.copytree(LEGACY, tmp_path / "legacy")
    seq = EmbeddingStore(root / "store" / "sequences")
    assert len(seq) == 12 and seq.get("h5").shape == (3 + 5 % 4, 6) and seq.get("h5").dtype == torch.float16
    assert len(EmbeddingStore(root / "store" / "images")) == 12


def test_old_checkpoint_loads_and_predicts_as_it_did(tmp_path):
    root = shutil.copytree(LEGACY, tmp_path / "legacy")
    ck = Checkpoint.load(root / "checkpoint", labels=LABELS)
    assert ck.run_id == "fusion.authors" and ck.thresholds == [0.5] * 5
    probs = predict_proba(ck.model, _datasets(root)["val"])
    np.testing.assert_allclose(probs, np.load(root / "val_probs.npy"), atol=1e-6)


def test_old_resume_state_is_continued_not_set_aside(tmp_path, recwarn):
    root = shutil.copytree(LEGACY, tmp_path / "legacy")
    ds = _datasets(root)
    cfg = TrainConfig(**json.loads((root / "train_config.json").read_text()))
    model, hist = train_fusion(ds["train"], ds["val"], cfg, LABELS, seed=0, progress=False, resume_dir=root / "resume")
    assert not [w for w in recwarn if "set aside" in str(w.message)]
    assert list(hist["epoch"]) == [1, 2, 3]       # the finished run, returned as it was: not trained again
    ck = Checkpoint.load(root / "checkpoint", labels=LABELS)
    for (name, a), b in zip(ck.model.state_dict().items(), model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


def test_old_profile_still_loads(tmp_path):
    path = tmp_path / "my-demo.yaml"
    shutil.copy(LEGACY / "profile-demo.yaml", path)
    cfg = load_profile(path)
    assert cfg["data"]["n_proteins"] == 150 and cfg["training"]["seeds"] == [0, 1, 2]
