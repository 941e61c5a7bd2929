"""What the stage-driver tests share: a tiny stage 01 + 02 written here, one torch thread."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from proloc_lib.core import manifest
from proloc_lib.data.labels import LABELS
from proloc_lib.features.store import END_ROWS, EmbeddingStore, store_checksums

AA = list("ACDEFGHIKLMNPQRSTVWY")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models: one intra-op thread is faster, and far faster on a shared, loaded machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _write_tiny_stage(root, n=60, seed=0, variant=None):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 5)) < 0.4).astype(int)
    y[np.arange(n), rng.integers(0, 5, n)] = 1                    # every protein has a label
    d01, d02 = root / "tiny" / "01_data_assembly", root / "tiny" / "02_embeddings"
    d01.mkdir(parents=True)
    split = np.array(["train"] * (n // 2) + ["val"] * (n // 4) + ["test"] * (n - n // 2 - n // 4))
    proteins = pd.DataFrame(y, columns=LABELS).assign(
        protein_id=[f"P{i}" for i in range(n)], seq_hash=[f"h{i}" for i in range(n)], split=split,
        sequence=["".join(rng.choice(AA, int(rng.integers(20, 60)))) for _ in range(n)], fold=np.arange(n) % 3)
    img_rows, img_tokens = [], {}
    for i in range(n):
        for k in range(2):
            t = torch.tensor(rng.normal(size=(4, 8)) * 0.1, dtype=torch.float32)
            t[:, :5] += torch.tensor(y[i] * 3.0, dtype=torch.float32)
            img_tokens[f"img{i}_{k}"] = t
            img_rows.append({"image_id": f"img{i}_{k}", "protein_id": f"P{i}", "split": split[i],
                             "path": f"images/{i}_{k}.png", **dict(zip(LABELS, y[i]))})
    images = pd.DataFrame(img_rows)
    proteins.to_parquet(d01 / "proteins.parquet")
    images.to_parquet(d01 / "images.parquet")
    _seal(d01, "01_data_assembly", {}, labels=LABELS, label_map="test-map v1")
    seq = EmbeddingStore.open(d02 / "sequences", {"m": "s"}, 6, "sequence", extraction={END_ROWS: True})
    end_rng = np.random.default_rng(seed + 1)   # the </s> rows: a stream of their own
    seq.commit({f"h{i}": torch.tensor(rng.normal(size=(int(rng.integers(3, 9)), 6)), dtype=torch.float32)
                for i in range(n)}, end_rows={f"h{i}": torch.tensor(end_rng.normal(size=6)) for i in range(n)})
    EmbeddingStore.open(d02 / "images", {"m": "i"}, 8, "image").commit(img_tokens)
    if variant:   # an image feature variant: the same signal, other noise, 12-wide
        EmbeddingStore.open(d02 / f"images-{variant}", {"m": "i2"}, 12, "image").commit(
            {k: torch.cat([t, torch.randn(4, 4) * 0.1], 1) for k, t in img_tokens.items()})
    tables = {f: c for f, c in json.loads((d01 / "manifest.json").read_text())["outputs"].items()
              if f.endswith(".parquet")}
    _seal(d02, "02_embeddings", {"01_data_assembly": tables}, outputs=store_checksums(d02),
          sequence_store={"fingerprint": {"m": "s"}}, image_store={"fingerprint": {"m": "i"}})
    return proteins, images


def _seal(folder, stage, upstream, outputs=None, **fields):
    """The manifest a stage writes last: its outputs' checksums and what it read (``Stage`` checks them)."""
    man = manifest.build_manifest(stage, {"profile": "tiny", "seed": 0}, outputs_dir=folder, outputs=outputs,
                                  extra={"upstream": upstream, **fields})
    (folder / "manifest.json").write_text(json.dumps(man))


@pytest.fixture(scope="session")
def write_tiny_stage():
    """Function (root, n=60, seed=0, variant=None) -> (proteins, images): writes
    <root>/tiny/01_data_assembly (tables + manifest) and 02_embeddings (stores + manifest). Every
    protein has two images and at least one label; label j is on iff its image tokens carry signal
    j. With `variant`, an images-<variant> store holds the same signal, 12 wide."""
    return _write_tiny_stage
