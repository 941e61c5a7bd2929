"""The training loop: it learns, resumes to the same weights, selects as each configuration says,
stops on a NaN loss; several seeds and runs train together exactly as alone; resume is keyed by
the run and a finished run is never trained further. Its execution switches (stack_seeds,
capture_step) change how runs step, not what they compute: the same hash and resume key, the
same results as the plain loop. A full disk while saving the resume state is one line."""
import errno
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from proloc_lib.core.errors import EXIT_FAILED, DiskFull
from proloc_lib.data.labels import LABELS
from proloc_lib.training import capture, datasets, loop, settings

SMALL = dict(d_model=16, n_heads=2, n_blocks=1)


def test_training_learns_and_resumes_identically(tmp_path, tiny_stores):
    ds = tiny_stores(tmp_path)
    cfg = settings.make_config("corrected", d_model=16, n_heads=2, n_blocks=1, max_epochs=12, patience=None,
                               lr=1e-2, batch_size=8, dropout=0.1)
    model, hist = loop.train_fusion(ds["train"], ds["val"], cfg, LABELS, seed=0, progress=False)
    assert hist["train_loss"].iloc[-1] < 0.5 * hist["train_loss"].iloc[0]
    assert hist["best"].sum() == 1 and hist.loc[hist["best"], "val_loss"].iloc[0] == hist["val_loss"].min()
    # interrupted after 3 epochs, resumed: same final weights as the uninterrupted run
    short = cfg
    resume = tmp_path / "resume"

    class Stop(Exception):
        pass

    calls = {"n": 0}
    orig = loop.evaluate_loss

    def interrupt(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise Stop
        return orig(*a, **k)

    loop.evaluate_loss = interrupt
    try:
        with pytest.raises(Stop):
            loop.train_fusion(ds["train"], ds["val"], short, LABELS, seed=0, progress=False, resume_dir=resume)
    finally:
        loop.evaluate_loss = orig
    resumed, hist2 = loop.train_fusion(ds["train"], ds["val"], short, LABELS, seed=0, progress=False,
                                           resume_dir=resume)
    assert len(hist2) == 12
    for (k, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)


def test_authors_selection_uses_training_loss(tmp_path, tiny_stores):
    ds = tiny_stores(tmp_path, seed=1)
    cfg = settings.make_config("authors", d_model=16, n_heads=2, n_blocks=2, max_epochs=3, batch_size=4, lr=1e-3)
    model, hist = loop.train_fusion(ds["train"], ds["val"], cfg, LABELS, seed=0, progress=False)
    assert hist.loc[hist["best"], "train_loss"].iloc[0] == hist["train_loss"].min()
    assert len(model.blocks) == 1 and model.cfg.apply_mask is False


def test_nan_loss_stops_with_a_message_and_keeps_the_best_model(tmp_path, tiny_stores):
    ds = tiny_stores(tmp_path)
    cfg = settings.make_config("corrected", d_model=16, n_heads=2, n_blocks=1, max_epochs=4, patience=None,
                               batch_size=8)
    orig = loop.loss_fn
    state = {"epochs": 0}

    def poisoned(cfg, pm):
        f = orig(cfg, pm)

        def g(logits, y):
            out = f(logits, y)
            return out * float("nan") if state["epochs"] >= 2 * len(ds["train"]) // 8 + 2 else out
        return g

    def counting(*a, **k):
        f = poisoned(*a, **k)

        def h(logits, y):
            state["epochs"] += 1
            return f(logits, y)
        return h

    loop.loss_fn = counting
    try:
        with pytest.raises(loop.NaNLossError, match="non-finite") as err:
            loop.train_fusion(ds["train"], ds["val"], cfg, LABELS, seed=0, progress=False)
    finally:
        loop.loss_fn = orig
    assert len(err.value.history) >= 1
    assert all(torch.isfinite(p).all() for p in err.value.model.parameters())


def test_images_per_protein_ablation_trains_on_fewer_images(tmp_path, tiny_stores):
    ds = tiny_stores(tmp_path)
    one = ds["train"].samples                        # one image per protein in these stores
    doubled = datasets.FusionDataset(pd.concat([one, one], ignore_index=True), LABELS, ds["train"].seq_store,
                                     ds["train"].img_store)
    sub = doubled.subset(doubled.samples.groupby("protein_id").head(1).index)
    assert len(sub) == len(one) and sub.samples["protein_id"].is_unique
    seen = {}
    orig = loop.epoch_batches

    def spy(lengths, cfg_, **kw):
        if kw["shuffle"]:
            seen[cfg_.images_per_protein] = len(lengths)
        return orig(lengths, cfg_, **kw)

    loop.epoch_batches = spy
    try:
        for k in (1, None):
            cfg = settings.make_config("corrected", d_model=16, n_heads=2, n_blocks=1, max_epochs=1,
                                       images_per_protein=k)
            loop.train_fusion(doubled, ds["val"], cfg, LABELS, seed=0, progress=False)
    finally:
        loop.epoch_batches = orig
    assert seen == {1: len(one), None: 2 * len(one)}



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
def test_several_seeds_at_once_equal_separate_runs(tmp_path, name, over, workers, one_intra_op_thread, tiny_stores):
    ds = tiny_stores(tmp_path)
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


def test_runs_of_different_configurations_and_data_train_together(tmp_path, one_intra_op_thread, tiny_stores):
    """What notebook 03 does with its ablations and control runs: one call, any mix of runs."""
    ds = tiny_stores(tmp_path)
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


def test_resume_is_keyed_by_the_run(tmp_path, tiny_stores):
    ds = tiny_stores(tmp_path)
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


def test_a_finished_run_is_never_trained_further(tmp_path, tiny_stores):
    ds = tiny_stores(tmp_path)
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


def test_seeds_resume_per_seed(tmp_path, tiny_stores):
    ds = tiny_stores(tmp_path)
    cfg = settings.make_config("corrected", **SMALL, max_epochs=2, patience=None, batch_size=8)
    loop.train_fusion_seeds(ds["train"], ds["val"], cfg, LABELS, seeds=[0, 1], progress=False,
                                resume_dir=tmp_path / "r")
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["seed-0", "seed-1"]
    with pytest.raises(ValueError, match="repeat"):
        loop.train_fusion_seeds(ds["train"], ds["val"], cfg, LABELS, seeds=[0, 0], progress=False)


def test_a_failing_run_stops_the_runs_beside_it(tmp_path, monkeypatch, tiny_stores):
    """A NaN in one thread's run ends the call with NaNLossError; the others stop at their next
    step instead of training on, and what they finished is in their resume states."""
    ds = tiny_stores(tmp_path)
    orig = loop.loss_fn

    def poison(cfg, pm):
        return (lambda logits, y: logits.sum() * float("nan")) if cfg.focal_gamma == 3.0 else orig(cfg, pm)
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


# -- execution switches: stack_seeds, capture_step ------------------------------------------------
def _seeds(ds, cfg, seeds=(0, 1), **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return loop.train_fusion_seeds(ds["train"], ds["val"], cfg, LABELS, seeds=list(seeds), progress=False, **kw)


def test_execution_switches_leave_the_hash_and_the_resume_key_alone(tmp_path, tiny_stores):
    ds = tiny_stores(tmp_path)
    plain = settings.make_config("authors", **SMALL)
    fast = settings.make_config("authors", **SMALL, stack_seeds=True, capture_step="cuda")
    assert plain.hash() == fast.hash()
    assert loop.run_key(ds["train"], ds["val"], plain, 0) == loop.run_key(ds["train"], ds["val"], fast, 0)
    assert settings.make_config("authors", **SMALL, dropout=0.4).hash() != plain.hash()   # a result switch does
    assert set(settings.TrainConfig.EXECUTION_ONLY) == {"stack_seeds", "capture_step"}


@pytest.mark.parametrize("stack", [False, True])
def test_captured_steps_through_the_loop_equal_the_plain_loop(tmp_path, monkeypatch, stack, tiny_stores,
                                                              same_weights, one_intra_op_thread):
    monkeypatch.setattr(capture, "BACKEND", "aot_eager")   # the compiled path without code generation
    ds = tiny_stores(tmp_path)
    over = dict(**SMALL, max_epochs=2, lr=1e-3)
    got = _seeds(ds, settings.make_config("authors", **over, stack_seeds=stack, capture_step="always"))
    expected = _seeds(ds, settings.make_config("authors", **over), workers=1)
    for (m1, h1), (m2, h2) in zip(got, expected, strict=True):
        np.testing.assert_allclose(h1["train_loss"], h2["train_loss"], rtol=1e-5)
        np.testing.assert_allclose(h1["val_loss"], h2["val_loss"], rtol=1e-5)
        assert list(h1["best"]) == list(h2["best"])
        same_weights(m1, m2, SMALL["d_model"], rtol=1e-4, atol=1e-5)


def test_capture_on_cuda_only_leaves_a_cpu_run_as_it_was(tmp_path, tiny_stores, one_intra_op_thread):
    ds = tiny_stores(tmp_path)
    over = dict(**SMALL, max_epochs=2, lr=1e-3)
    (m1, h1), = _seeds(ds, settings.make_config("authors", **over, capture_step="cuda"), seeds=[0])
    (m2, h2), = _seeds(ds, settings.make_config("authors", **over), seeds=[0])
    assert list(h1["train_loss"]) == list(h2["train_loss"])
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))


def test_every_finished_epoch_of_every_run_is_reported(tmp_path, tiny_stores):
    ds = tiny_stores(tmp_path)
    ticks = []
    jobs = [loop.TrainJob(train_ds=ds["train"], val_ds=ds["val"], seed=s,
                          cfg=settings.make_config("authors", **SMALL, max_epochs=e, stack_seeds=True))
            for s, e in ((0, 2), (1, 2), (2, 3))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loop.train_jobs(jobs, LABELS, progress=False, on_epoch=ticks.append)
    assert sum(ticks) == 2 + 2 + 3


# -- a full disk while saving the resume state -----------------------------------------------------
def test_a_full_disk_while_saving_the_resume_state_is_one_line_and_keeps_the_last_state(tmp_path, monkeypatch,
                                                                                        tiny_stores):
    ds = tiny_stores(tmp_path)
    cfg = settings.make_config("corrected", d_model=16, n_heads=2, n_blocks=1, max_epochs=3, patience=None,
                               batch_size=8)
    resume = tmp_path / "resume"
    real_save, saves = torch.save, []

    def save(obj, f, *args, **kwargs):
        saves.append(Path(f))
        if len(saves) == 2:                        # epoch 2: the disk is full half-way through the write
            Path(f).write_bytes(b"half a state")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(loop.torch, "save", save)
    with pytest.raises(DiskFull) as info:
        loop.train_fusion(ds["train"], ds["val"], cfg, LABELS, seed=0, progress=False, resume_dir=resume)
    msg = str(info.value)
    assert msg.startswith(f"no space left on the device writing the resume state {resume / 'last_state.pt'} (")
    assert "\n" not in msg and info.value.exit_code == EXIT_FAILED
    assert sorted(p.name for p in resume.iterdir()) == ["last_state.pt"]   # no half-written .tmp beside it
    kept = loop.torch.load(resume / "last_state.pt", weights_only=True)
    assert json.loads(kept["state_json"])["epoch"] == 1                      # the last good state, epoch 1

    monkeypatch.setattr(loop.torch, "save", real_save)
    _, hist = loop.train_fusion(ds["train"], ds["val"], cfg, LABELS, seed=0, progress=False, resume_dir=resume)
    _, fresh = loop.train_fusion(ds["train"], ds["val"], cfg, LABELS, seed=0, progress=False)
    assert list(hist["epoch"]) == [1, 2, 3]
    assert hist["train_loss"].round(6).tolist() == fresh["train_loss"].round(6).tolist()   # continued exactly
