"""Training batches: device-resident batches equal the store loader's, the padding and targets
modes, length buckets within the token budget."""
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from proloc_lib.data.labels import LABELS
from proloc_lib.features.store import END_ROWS, EmbeddingStore, StoreError
from proloc_lib.training import datasets, loop, model, settings

SMALL = dict(d_model=16, n_heads=2, n_blocks=1)


def _plan_batches(ds, cfg, seed, pad_to=None, shuffle=True):
    feats = datasets.ResidentFeatures(ds, "cpu", targets=cfg.targets)
    return [feats.batch(torch.as_tensor(i), w)
            for i, w in datasets.epoch_batches(ds.seq_lengths, cfg, shuffle=shuffle, seed=seed, pad_to=pad_to)]


@pytest.mark.parametrize("name,over", [("corrected", {"batch_size": 8}), ("corrected", {"batch_tokens": 20}),
                                       ("authors", {}), ("authors", {"padding": "batch"})])
def test_resident_batches_equal_the_store_loader(tmp_path, name, over, tiny_stores):
    cfg = settings.make_config(name, **SMALL, **over)
    ds = tiny_stores(tmp_path)["train"].for_config(cfg)   # authors: with the </s> rows
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


# -- the sequence rows of each configuration (end_token) and the shared sequence copy ----------
END_LENGTHS = [3, 5, 4]


def _end_row_stores(tmp_path, *, end_rows=True):
    """Three proteins of 3, 5, 4 residues (residue j of protein i: i + j / 10 in every column), each
    </s> row 100 + i; one image each. -> (dataset over them, sequence store)."""
    seq = EmbeddingStore.open(tmp_path / "seq", {"m": "s"}, 6, "sequence",
                              extraction={END_ROWS: True} if end_rows else None)
    seq.commit({f"h{i}": (i + torch.arange(L, dtype=torch.float32) / 10)[:, None].repeat(1, 6)
                for i, L in enumerate(END_LENGTHS)},
               end_rows={f"h{i}": torch.full((6,), 100.0 + i) for i in range(3)} if end_rows else None)
    img = EmbeddingStore.open(tmp_path / "img", {"m": "i"}, 8, "image")
    img.commit({f"img{i}": torch.full((4, 8), float(i)) for i in range(3)})
    proteins = pd.DataFrame(np.eye(3, 5, dtype=int), columns=LABELS).assign(
        protein_id=["P0", "P1", "P2"], seq_hash=["h0", "h1", "h2"], split="train")
    images = pd.DataFrame({"image_id": ["img0", "img1", "img2"], "protein_id": ["P0", "P1", "P2"]})
    reader = EmbeddingStore(tmp_path / "seq")
    return datasets.FusionDataset(datasets.image_samples(images, proteins, LABELS), LABELS, reader,
                                  EmbeddingStore(tmp_path / "img")), reader


def test_authors_sees_each_sequence_with_its_end_row_and_pads_to_the_longest_plus_one(tmp_path):
    ds, store = _end_row_stores(tmp_path)
    authors = settings.make_config("authors", **SMALL)               # end_token keep, padding split
    corrected_split = settings.make_config("corrected", **SMALL, padding="split", bucket_batches=False)
    assert datasets.pad_length(authors, ds) == max(END_LENGTHS) + 1 == 6   # the published file's width
    assert datasets.pad_length(corrected_split, ds) == max(END_LENGTHS) == 5
    kept = ds.for_config(authors)
    assert kept.end_token == "keep" and ds.for_config(authors) is kept and kept.for_config(corrected_split) is ds
    assert kept.seq_lengths.tolist() == [L + 1 for L in END_LENGTHS] and ds.seq_lengths.tolist() == END_LENGTHS
    rows = torch.arange(3)
    width = datasets.pad_length(authors, ds)
    for feats in (datasets.ResidentFeatures(kept), datasets._StoreBatches(kept, "cpu")):
        _, seq, mask, _ = feats.batch(rows, width)
        assert seq.shape == (3, 6, 6)
        for i, L in enumerate(END_LENGTHS):
            assert mask[i].sum() == L + 1
            assert torch.equal(seq[i, L], torch.full((6,), 100.0 + i))            # the stored </s> row, last
            assert torch.equal(seq[i, :L], store.get(f"h{i}").float())            # then the residues
            assert not seq[i, L + 1:].any()
    _, seq, mask, _ = next(iter(datasets.make_loader(ds, authors, False, 0)))     # the loader: the same rows
    assert seq.shape == (2, 6, 6) and torch.equal(seq[0, 3], torch.full((6,), 100.0))
    # corrected: exactly the residue rows (today's input), whatever the store holds
    _, seq, mask, _ = datasets.ResidentFeatures(ds.for_config(corrected_split)).batch(rows, 5)
    for i, L in enumerate(END_LENGTHS):
        assert mask[i].sum() == L and torch.equal(seq[i, :L], store.get(f"h{i}").float()) and not seq[i, L:].any()
    # a training job takes the configuration's rows whatever dataset it is given
    job = loop.TrainJob(train_ds=ds, val_ds=ds, cfg=authors)
    assert job.train_ds is kept and job.val_ds is kept


def test_keep_needs_a_store_with_end_rows(tmp_path):
    ds, _ = _end_row_stores(tmp_path, end_rows=False)
    assert ds.seq_lengths.tolist() == END_LENGTHS                                 # residues: as before
    with pytest.raises(StoreError, match=r"no end-token .*proloc extract"):
        ds.for_config(settings.make_config("authors"))


def test_datasets_over_one_store_hold_one_copy_of_each_sequence(tmp_path):
    """train and train+val (authors) over the same store share the decoded sequences: the same
    tensor objects, and the residue rows are a view of the rows with </s>."""
    ds, store = _end_row_stores(tmp_path)
    other = ds.subset([0, 2])                                                     # e.g. another split
    fresh = datasets.FusionDataset(ds.samples, LABELS, store, ds.img_store)
    for h in ("h0", "h2"):
        assert other._seq(h) is ds._seq(h) is fresh._seq(h)
    kept = ds.for_config(settings.make_config("authors"))
    full = kept._seq("h1")
    assert full.shape == (6, 6) and ds._seq("h1").data_ptr() == full.data_ptr()   # one storage for both
    assert len(store._rows) == 3
    store.close()
    assert not store._rows
