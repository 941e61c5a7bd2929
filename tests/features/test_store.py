"""The feature store: temporary files of writers killed mid-write are removed by the next writer
(never a live writer's), and an item holding NaN or infinity is refused on read, named."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

from proloc_lib.core.errors import UserError
from proloc_lib.features import store as store_mod
from proloc_lib.features.store import EmbeddingStore, NonFiniteFeatureError
from proloc_lib.training.datasets import FusionDataset, ResidentFeatures, image_samples

ROOT = Path(__file__).resolve().parents[2]
LABELS = ["a", "b"]


def _open(path: Path) -> EmbeddingStore:
    return EmbeddingStore.open(path, {"m": "x"}, 4, "sequence")


def test_a_writer_killed_mid_shard_leaves_a_temp_file_the_next_writer_removes(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        import torch
        from proloc_lib.features import store
        def killed(tensors, path, metadata=None):
            open(path, "wb").write(b"half a shard")
            os.kill(os.getpid(), signal.SIGKILL)          # killed while writing
        store.save_file = killed
        s = store.EmbeddingStore.open({str(tmp_path / 'st')!r}, {{"m": "x"}}, 4, "sequence")
        s.commit({{"k": torch.zeros(2, 4)}})
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    left = [p for p in (tmp_path / "st").iterdir() if p.name.endswith(".tmp")]
    assert len(left) == 1 and left[0].name.startswith(f".shard-{store_mod._host()}-")   # host and pid of the writer
    store = _open(tmp_path / "st")
    assert store.removed_temp_files == left and not left[0].exists()
    assert store.commit({"k": torch.ones(2, 4)}) is not None and len(store) == 1


def test_temp_files_of_live_writers_other_hosts_and_unknown_names_are_kept(tmp_path):
    path = tmp_path / "st"
    _open(path)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        host = store_mod._host()
        files = {"live": path / f".shard-{host}-{live.pid}-abc.tmp", "mine": path / f".shard-{host}-{os.getpid()}-x.tmp",
                 "other_host": path / f".shard-elsewhere-{dead.pid}-abc.tmp", "unknown": path / ".shard-abc.tmp",
                 "dead": path / f".merge-{host}-{dead.pid}-abc.tmp"}
        for f in files.values():
            f.write_bytes(b"partial")
        store = _open(path)
        assert store.removed_temp_files == [files["dead"]]
        assert {k for k, f in files.items() if f.exists()} == {"live", "mine", "other_host", "unknown"}
        live.kill()
        live.wait()
        assert _open(path).removed_temp_files == [files["live"]]
    finally:
        live.kill()


def test_a_nan_feature_is_refused_naming_the_item_and_the_store(tmp_path):
    seq = EmbeddingStore.open(tmp_path / "seq", {"m": "s"}, 4, "sequence")
    img = EmbeddingStore.open(tmp_path / "img", {"m": "i"}, 4, "image")
    bad = torch.zeros(3, 4)
    bad[1, 2] = float("nan")
    seq.commit({"good": torch.zeros(3, 4), "bad": bad})
    img.commit({"i1": torch.zeros(2, 4), "i2": torch.full((2, 4), float("inf"))})
    with pytest.raises(NonFiniteFeatureError) as info:
        EmbeddingStore(tmp_path / "seq").get("bad")
    msg = str(info.value)
    assert msg.startswith(f"item 'bad' in embedding store {tmp_path / 'seq'} (shard shard-") and "\n" not in msg
    assert isinstance(info.value, UserError)
    assert EmbeddingStore(tmp_path / "seq").get("good").shape == (3, 4)

    proteins = pd.DataFrame({"protein_id": ["P1", "P2"], "seq_hash": ["good", "bad"], "split": "train",
                             "a": [1, 0], "b": [0, 1]})
    images = pd.DataFrame({"image_id": ["i1", "i2"], "protein_id": ["P1", "P2"]})
    samples = image_samples(images, proteins, LABELS)
    with pytest.raises(NonFiniteFeatureError, match=f"item 'bad' in embedding store {tmp_path / 'seq'}"):
        FusionDataset(samples, LABELS, EmbeddingStore(tmp_path / "seq"), EmbeddingStore(tmp_path / "img"))
    ok = proteins.assign(seq_hash=["good", "good"])
    ds = FusionDataset(image_samples(images, ok, LABELS), LABELS, EmbeddingStore(tmp_path / "seq"),
                       EmbeddingStore(tmp_path / "img"))
    with pytest.raises(NonFiniteFeatureError, match=f"item 'i2' in embedding store {tmp_path / 'img'}"):
        ResidentFeatures(ds, "cpu")
