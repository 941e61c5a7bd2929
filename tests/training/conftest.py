"""What the training tests share: tiny embedding stores whose labels the images carry."""
import numpy as np
import pandas as pd
import pytest
import torch

from proloc_lib.data.labels import LABELS
from proloc_lib.features.store import EmbeddingStore
from proloc_lib.training import datasets


def _tiny_stores(tmp_path, n=40, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 5)) < 0.4).astype(int)
    seq = EmbeddingStore.open(tmp_path / "seq", {"m": "s"}, 6, "sequence")
    img = EmbeddingStore.open(tmp_path / "img", {"m": "i"}, 8, "image")
    seq.commit({f"h{i}": torch.tensor(rng.normal(size=(int(rng.integers(3, 9)), 6)), dtype=torch.float32)
                for i in range(n)})
    imgs = {}
    for i in range(n):
        t = torch.tensor(rng.normal(size=(4, 8)) * 0.1, dtype=torch.float32)
        t[0, :5] += torch.tensor(y[i] * 2.0, dtype=torch.float32)
        imgs[f"img{i}"] = t
    img.commit(imgs)
    proteins = pd.DataFrame(y, columns=LABELS).assign(
        protein_id=[f"P{i}" for i in range(n)], seq_hash=[f"h{i}" for i in range(n)],
        split=["train"] * (n // 2) + ["val"] * (n // 4) + ["test"] * (n - n // 2 - n // 4))
    images = pd.DataFrame({"image_id": [f"img{i}" for i in range(n)], "protein_id": [f"P{i}" for i in range(n)]})
    ds = {s: datasets.FusionDataset(datasets.image_samples(images, proteins, LABELS, s), LABELS,
                                    EmbeddingStore(tmp_path / "seq"), EmbeddingStore(tmp_path / "img"))
          for s in ("train", "val", "test")}
    return ds


@pytest.fixture
def tiny_stores():
    """Factory (tmp_path, n=40, seed=0) -> {"train", "val", "test": FusionDataset}: stores where
    label j is on iff image token 0 carries signal j (one image per protein, half of them train)."""
    return _tiny_stores
