"""What the training tests share: tiny embedding stores whose labels the images carry."""
import numpy as np
import pandas as pd
import pytest
import torch

from proloc_lib.data.labels import LABELS
from proloc_lib.features.store import END_ROWS, EmbeddingStore
from proloc_lib.training import datasets


def _tiny_stores(tmp_path, n=40, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 5)) < 0.4).astype(int)
    seq = EmbeddingStore.open(tmp_path / "seq", {"m": "s"}, 6, "sequence", extraction={END_ROWS: True})
    img = EmbeddingStore.open(tmp_path / "img", {"m": "i"}, 8, "image")
    end_rng = np.random.default_rng(seed + 1)   # the </s> rows: a stream of their own
    seq.commit({f"h{i}": torch.tensor(rng.normal(size=(int(rng.integers(3, 9)), 6)), dtype=torch.float32)
                for i in range(n)}, end_rows={f"h{i}": torch.tensor(end_rng.normal(size=6)) for i in range(n)})
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


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module, d_model: int, **tol) -> None:
    """Every weight of ``a`` close to ``b``'s, except the key projection's bias inside an
    attention's ``in_proj_bias`` (rows d..2d): it adds the same amount to every score of a query,
    so softmax cancels it; its true gradient is 0 and its computed one rounding noise, which Adam
    scales to steps of size lr. Two float orders of the same run leave it different, with no effect."""
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        if name.endswith("in_proj_bias"):
            x, y = torch.cat([x[:d_model], x[2 * d_model:]]), torch.cat([y[:d_model], y[2 * d_model:]])
        torch.testing.assert_close(x, y, msg=name, **tol)


@pytest.fixture
def same_weights():
    """Function (a, b, d_model, **tolerances): asserts two models' weights agree (see _assert_same_weights)."""
    return _assert_same_weights


@pytest.fixture
def one_intra_op_thread():
    """One intra-op thread for the test: runs trained alone, side by side, stacked or on ranks then
    split their float sums alike, so that "equal" can mean bit for bit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
