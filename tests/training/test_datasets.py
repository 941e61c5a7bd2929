"""The fast training path: device-resident batches equal the store loader's, padding and targets
modes, several seeds at once equal separate runs, resume keyed by the run."""
import json
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from test_training import make_stores

from proloc_lib.data.labels import LABELS
from proloc_lib.training import datasets, loop, model, settings

SMALL = dict(d_model=16, n_heads=2, n_blocks=1)


def _plan_batches(ds, cfg, seed, pad_to=None, shuffle=True):
    feats = datasets.ResidentFeatures(ds, "cpu", targets=cfg.targets)
    return [feats.batch(torch.as_tensor(i), w)
            for i, w in datasets.epoch_batches(ds.seq_lengths, cfg, shuffle=shuffle, seed=seed, pad_to=pad_to)]


@pytest.mark.parametrize("name,over", [("corrected", {"batch_size": 8}), ("corrected", {"batch_tokens": 20}),
                                       ("authors", {}), ("authors", {"padding": "batch"})])
def test_resident_batches_equal_the_store_loader(tmp_path, name, over):
    ds = make_stores(tmp_path)["train"]
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


def test_padding_modes(tmp_path):
    ds = make_stores(tmp_path)
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


def test_image_targets_come_from_the_image_rows(tmp_path):
    ds = make_stores(tmp_path)
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


@pytest.fixture
def one_intra_op_thread():
    """Runs in threads use a share of the cores each: give the runs trained alone the same one
    thread, so that float sums split alike and "equal" can mean bit for bit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def assert_same_runs(got, expected):
    for (m1, h1), (m2, h2) in zip(got, expected, strict=True):
        np.testing.assert_allclose(h1["train_loss"], h2["train_loss"], rtol=1e-6)
        np.testing.assert_allclose(h1["val_loss"], h2["val_loss"], rtol=1e-6)
        assert list(h1["best"]) == list(h2["best"])
        for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
            torch.testing.assert_close(a, b, msg=k)


@pytest.mark.parametrize("workers", [1, 3])   # 1: lockstep, one step each in turn; 3: a thread per run
@pytest.mark.parametrize("name,over", [("authors", {"batch_size": 2, "lr": 1e-3}),
                                       ("corrected", {"batch_size": 8, "lr": 1e-2, "dropout": 0.3, "patience": 1})])
def test_several_seeds_at_once_equal_separate_runs(tmp_path, name, over, workers, one_intra_op_thread):
    ds = make_stores(tmp_path)
    cfg = settings.make_config(name, **SMALL, max_epochs=3, **over)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        together = loop.train_fusion_seeds(ds["train"], ds["val"], cfg, LABELS, seeds=[0, 1, 2], progress=False,
                                               workers=workers)
        separate = [loop.train_fusion(ds["train"], ds["val"], cfg, LABELS, seed=s, progress=False) for s in (0, 1, 2)]
    assert_same_runs(together, separate)
    # the seeds really differ (dropout and initialisation are per seed)
    assert not torch.equal(together[0][0].head.weight, together[1][0].head.weight)
    # dropout masks come from each run's own generator: training leaves the global one where it was
    torch.manual_seed(123)
    state = torch.get_rng_state()
    loop.train_fusion(ds["train"], ds["val"], cfg, LABELS, seed=0, progress=False)
    assert torch.equal(torch.get_rng_state(), state)


def test_runs_of_different_configurations_and_data_train_together(tmp_path, one_intra_op_thread):
    """What notebook 03 does with its ablations and control runs: one call, any mix of runs."""
    ds = make_stores(tmp_path)
    half = ds["train"].subset(ds["train"].samples.index[::2])
    jobs = [loop.TrainJob(train_ds=ds["train"], val_ds=ds["val"], seed=0,
                              cfg=settings.make_config("authors", **SMALL, max_epochs=2)),
            loop.TrainJob(train_ds=half, val_ds=ds["val"], seed=1,
                              cfg=settings.make_config("corrected", **SMALL, max_epochs=3, batch_size=8, patience=1)),
            loop.TrainJob(train_ds=ds["train"], val_ds=ds["val"], seed=2,
                              cfg=settings.make_config("corrected", **SMALL, max_epochs=1, apply_mask=False))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        together = loop.train_jobs(jobs, LABELS, progress=False, workers=2)
        alone = [loop.train_fusion(j.train_ds, j.val_ds, j.cfg, LABELS, seed=j.seed, progress=False) for j in jobs]
    assert [len(h) for _, h in together] == [2, len(alone[1][1]), 1]
    assert_same_runs(together, alone)


def test_resume_is_keyed_by_the_run(tmp_path):
    ds = make_stores(tmp_path)
    cfg = settings.make_config("corrected", **SMALL, max_epochs=3, patience=None, batch_size=8)
    resume = tmp_path / "resume"
    m0, h0 = loop.train_fusion(ds["train"], ds["val"], cfg, LABELS, seed=0, progress=False, resume_dir=resume)
    assert (resume / "last_state.pt").exists()
    # another seed: the state is set aside with a message, never continued
    fresh1, hf1 = loop.train_fusion(ds["train"], ds["val"], cfg, LABELS, seed=1, progress=False)
    with pytest.warns(UserWarning, match="another run.*seed"):
        m1, h1 = loop.train_fusion(ds["train"], ds["val"], cfg, LABELS, seed=1, progress=False, resume_dir=resume)
    assert list(resume.glob("last_state.set-aside-*.pt"))
    assert len(h1) == 3
    for (k, a), b in zip(fresh1.state_dict().items(), m1.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)  # as if trained from scratch
    # other training samples (another split) or labels: set aside too
    other = ds["train"].subset(ds["train"].samples.index[:-2])
    with pytest.warns(UserWarning, match="differs in train"):
        loop.train_fusion(other, ds["val"], cfg, LABELS, seed=1, progress=False, resume_dir=resume)
    relabelled = datasets.FusionDataset(ds["train"].samples.assign(**{LABELS[0]: 1 - ds["train"].samples[LABELS[0]]}),
                                        LABELS, ds["train"].seq_store, ds["train"].img_store)
    with pytest.warns(UserWarning, match="differs in train"):
        loop.train_fusion(relabelled, ds["val"], cfg, LABELS, seed=1, progress=False, resume_dir=resume)
    # an unreadable state is set aside as well
    (resume / "last_state.pt").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="unreadable"):
        loop.train_fusion(ds["train"], ds["val"], cfg, LABELS, seed=0, progress=False, resume_dir=resume)


def test_a_finished_run_is_never_trained_further(tmp_path):
    ds = make_stores(tmp_path)
    # early stopping: patience 1 with a learning rate that makes validation loss rise quickly
    cfg = settings.make_config("corrected", **SMALL, max_epochs=30, patience=1, batch_size=8, lr=0.3,
                               schedule="constant")
    resume = tmp_path / "resume"
    m1, h1 = loop.train_fusion(ds["train"], ds["val"], cfg, LABELS, seed=0, progress=False, resume_dir=resume)
    assert len(h1) < 30  # stopped early
    calls = {"n": 0}
    orig = loop._Run.step

    def count(self, *a):
        calls["n"] += 1
        return orig(self, *a)

    loop._Run.step = count
    try:
        m2, h2 = loop.train_fusion(ds["train"], ds["val"], cfg, LABELS, seed=0, progress=False, resume_dir=resume)
        done = settings.make_config("corrected", **SMALL, max_epochs=2, patience=None, batch_size=8)
        loop.train_fusion(ds["train"], ds["val"], done, LABELS, seed=0, progress=False, resume_dir=tmp_path / "r2")
        n_after_fresh = calls["n"]
        _, h3 = loop.train_fusion(ds["train"], ds["val"], done, LABELS, seed=0, progress=False,
                                      resume_dir=tmp_path / "r2")
    finally:
        loop._Run.step = orig
    assert calls["n"] == n_after_fresh  # neither finished run took a single step when resumed
    pd.testing.assert_frame_equal(h1, h2)
    assert len(h3) == 2
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)


def test_seeds_resume_per_seed(tmp_path):
    ds = make_stores(tmp_path)
    cfg = settings.make_config("corrected", **SMALL, max_epochs=2, patience=None, batch_size=8)
    loop.train_fusion_seeds(ds["train"], ds["val"], cfg, LABELS, seeds=[0, 1], progress=False,
                                resume_dir=tmp_path / "r")
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["seed-0", "seed-1"]
    with pytest.raises(ValueError, match="repeat"):
        loop.train_fusion_seeds(ds["train"], ds["val"], cfg, LABELS, seeds=[0, 0], progress=False)


def test_a_failing_run_stops_the_runs_beside_it(tmp_path, monkeypatch):
    """A NaN in one thread's run ends the call with NaNLossError; the others stop at their next
    step instead of training on, and what they finished is in their resume states."""
    ds = make_stores(tmp_path)
    orig = loop.loss_fn
    poison = lambda cfg, pm: (lambda logits, y: logits.sum() * float("nan")) if cfg.focal_gamma == 3.0 else orig(cfg, pm)
    monkeypatch.setattr(loop, "loss_fn", poison)
    healthy = settings.make_config("corrected", **SMALL, max_epochs=200, patience=None, batch_size=4)
    jobs = [loop.TrainJob(train_ds=ds["train"], val_ds=ds["val"], cfg=healthy, resume_dir=tmp_path / "ok"),
            loop.TrainJob(train_ds=ds["train"], val_ds=ds["val"], cfg=settings.make_config(
                "corrected", **SMALL, max_epochs=2, focal_gamma=3.0))]
    with pytest.raises(loop.NaNLossError, match="non-finite"):
        loop.train_jobs(jobs, LABELS, progress=False, workers=2)
    saved = tmp_path / "ok" / "last_state.pt"
    epochs_done = json.loads(torch.load(saved, weights_only=True)["state_json"])["epoch"] if saved.exists() else 0
    assert epochs_done < 200
