"""Training batches: device-resident batches equal the store loader's, the padding and targets
modes, length buckets within the token budget."""
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from proloc_lib.data.labels import LABELS
from proloc_lib.training import datasets, loop, model, settings

SMALL = dict(d_model=16, n_heads=2, n_blocks=1)


def _plan_batches(ds, cfg, seed, pad_to=None, shuffle=True):
    feats = datasets.ResidentFeatures(ds, "cpu", targets=cfg.targets)
    return [feats.batch(torch.as_tensor(i), w)
            for i, w in datasets.epoch_batches(ds.seq_lengths, cfg, shuffle=shuffle, seed=seed, pad_to=pad_to)]


@pytest.mark.parametrize("name,over", [("corrected", {"batch_size": 8}), ("corrected", {"batch_tokens": 20}),
                                       ("authors", {}), ("authors", {"padding": "batch"})])
def test_resident_batches_equal_the_store_loader(tmp_path, name, over, tiny_stores):
    ds = tiny_stores(tmp_path)["train"]
    cfg = settings.make_config(name, **SMALL, **over)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        new = _plan_batches(ds, cfg, seed=3, pad_to=datasets.pad_length(cfg, ds))
    old = list(datasets.make_loader(ds, cfg, True, 3))
    assert len(new) == len(old) > 1
    for (i1, s1, m1, y1), (i2, s2, m2, y2) in zip(new, old):
        for a, b in ((i1, i2), (s1, s2), (m1, m2), (y1, y2)):
            assert a.dtype == b.dtype and a.shape == b.shape
            assert torch.equal(a, b)  # bit for bit: same rows, order, padding and mask


def test_padding_modes(tmp_path, tiny_stores):
    ds = tiny_stores(tmp_path)
    longest = {s: int(d.seq_lengths.max()) for s, d in ds.items()}
    assert len(set(longest.values())) > 1 or True
    every = tuple(ds.values())
    cb = settings.make_config("corrected", **SMALL, padding="batch", bucket_batches=False, batch_size=4)
    cs = settings.make_config("corrected", **SMALL, padding="split", bucket_batches=False, batch_size=4)
    cg = settings.make_config("corrected", **SMALL, padding="global", bucket_batches=False, batch_size=4)
    assert datasets.pad_length(cb, ds["val"], all_splits=every) is None
    assert datasets.pad_length(cs, ds["val"], all_splits=every) == longest["val"]
    assert datasets.pad_length(cg, ds["val"], all_splits=every) == max(longest.values())
    for split, d in ds.items():
        widths = {w for _, w in datasets.epoch_batches(d.seq_lengths, cs, shuffle=False, seed=0,
                                                       pad_to=datasets.pad_length(cs, d))}
        assert widths == {longest[split]}  # the published code: each file padded to its own longest
        widths = {w for _, w in datasets.epoch_batches(d.seq_lengths, cb, shuffle=False, seed=0)}
        assert max(widths) == longest[split] and (len(widths) > 1 or len(d) <= 4)
    # pad_multiple rounds every width up; masked content is unchanged
    c64 = settings.make_config("corrected", **SMALL, pad_multiple=16)
    assert {w % 16 for _, w in datasets.epoch_batches(ds["train"].seq_lengths, c64, shuffle=True, seed=0)} == {0}
    # train_fusion pads train and val as the mode says: spy on the widths the model sees
    seen = []
    orig = model.FusionModel.forward

    def spy(self, img, seq, mask, *a, **k):
        seen.append(seq.shape[1])
        return orig(self, img, seq, mask, *a, **k)

    model.FusionModel.forward = spy
    try:
        for cfg, expect in ((cs, {longest["train"], longest["val"]}), (cg, {max(longest.values())})):
            seen.clear()
            loop.train_fusion(ds["train"], ds["val"], cfg.__class__(**{**cfg.__dict__, "max_epochs": 1}),
                                  LABELS, seed=0, progress=False, global_pad_to=max(longest.values()))
            assert set(seen) == expect
    finally:
        model.FusionModel.forward = orig


def test_image_targets_come_from_the_image_rows(tmp_path, tiny_stores):
    ds = tiny_stores(tmp_path)
    prot = pd.concat([d.samples for d in ds.values()])[["protein_id", "seq_hash", "split", *LABELS]]
    images = ds["train"].samples[["image_id", "protein_id"]].copy()
    own = np.zeros((len(images), len(LABELS)), dtype=int)
    own[:, 2] = 1  # each image's own row says: mitochondria only
    images[LABELS] = own
    samples = datasets.image_samples(images, prot, LABELS, "train")
    assert {f"image_label:{lab}" for lab in LABELS} <= set(samples.columns)
    d = datasets.FusionDataset(samples, LABELS, ds["train"].seq_store, ds["train"].img_store)
    assert torch.equal(d.targets("protein"), torch.tensor(samples[LABELS].to_numpy(np.float32)))
    assert torch.equal(d.targets("image"), torch.tensor(own, dtype=torch.float32))
    assert not torch.equal(d.targets("image"), d.targets("protein"))
    cfg = settings.make_config("corrected", **SMALL, targets="image")
    _, _, _, y = _plan_batches(d, cfg, seed=0)[0]
    assert (y[:, 2] == 1).all() and y.sum() == len(y)
    # without image-level columns, image targets fall back to the protein's labels with a warning
    with pytest.warns(UserWarning, match="no image-level label columns"):
        assert torch.equal(ds["train"].targets("image"), ds["train"].y)


def test_bucketed_batches_cover_everyone_and_respect_the_token_budget():
    rng = np.random.default_rng(0)
    lengths = np.array([50] * 40 + [4000] * 3 + [300] * 20)
    batches = datasets.bucketed_batches(lengths, 16, rng, batch_tokens=8000)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 16 and (len(b) == 1 or lengths[b].max() * len(b) <= 8000)
    assert max(len(b) for b in batches if lengths[b].max() == 4000) <= 2
