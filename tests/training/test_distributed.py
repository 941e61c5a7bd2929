"""Runs spread over training ranks (training.distributed), tested with 2 gloo ranks on the CPU:
the same models and histories as one process, bit for bit at one thread per process; a failing
rank stops the other with one line; runs resume run by run. (The stage's metrics, predictions and
checkpoints on two ranks: tests/stages/test_training.py.)"""
import json
import os
import time
import warnings

import pandas as pd
import pytest
import torch

from proloc_lib.data.labels import LABELS
from proloc_lib.features.store import EmbeddingStore
from proloc_lib.training import datasets, distributed, loop, settings

SMALL = dict(d_model=16, n_heads=2, n_blocks=1)
TIMING = ["seconds", "samples_per_s"]   # wall-clock columns: never equal between two runs


# one thread here; each rank then gets max(1, 1 // 2) = 1 too: float sums split alike
pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def assert_identical(got, expected):
    for (m1, h1), (m2, h2) in zip(got, expected, strict=True):
        pd.testing.assert_frame_equal(h1.drop(columns=TIMING), h2.drop(columns=TIMING))
        assert m1.training == m2.training
        for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values(), strict=True):
            assert torch.equal(a, b), k


def test_runs_are_dealt_by_cost_to_the_least_loaded_rank():
    assert distributed.shares([5, 1, 4, 3, 3], 2) == [0, 1, 1, 1, 0]   # 5, then 4, 3, 3, 1: 5+3 | 4+3+1
    assert distributed.shares([1, 1, 1], 2) == [0, 1, 0]                # ties: the earlier run, the lower rank
    assert distributed.shares([2.0], 3) == [0]


def _jobs(ds, resume=None):
    cfgs = [settings.make_config("authors", **SMALL, max_epochs=3, lr=1e-3),
            settings.make_config("authors", **SMALL, max_epochs=3, lr=1e-3),
            settings.make_config("corrected", **SMALL, max_epochs=4, batch_size=8, patience=None, dropout=0.2)]
    return [loop.TrainJob(train_ds=ds["train"], val_ds=ds["val"], cfg=c, seed=s,
                          resume_dir=resume / f"run-{i}" if resume else None)
            for i, (c, s) in enumerate(zip(cfgs, (0, 1, 5)))]


def test_two_ranks_continue_interrupted_runs_and_equal_one_process(tmp_path, monkeypatch, tiny_stores):
    ds = tiny_stores(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = loop.train_jobs(_jobs(ds), LABELS, progress=False, workers=1)
    # interrupted after an epoch: what a killed run leaves behind is its last per-epoch state
    orig, calls = loop.evaluate_loss, {"n": 0}

    class Killed(Exception):
        pass

    def killed_in_epoch_two(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:   # every run has saved epoch 1; the first dies before saving epoch 2
            raise Killed
        return orig(*a, **k)

    monkeypatch.setattr(loop, "evaluate_loss", killed_in_epoch_two)
    with pytest.raises(Killed), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loop.train_jobs(_jobs(ds, tmp_path / "resume"), LABELS, progress=False, workers=1)
    monkeypatch.setattr(loop, "evaluate_loss", orig)
    saved = [json.loads(torch.load(tmp_path / "resume" / f"run-{i}" / "last_state.pt", weights_only=True)["state_json"])
             for i in range(3)]
    assert [s["epoch"] for s in saved] == [1, 1, 1]
    # rerun on two ranks: each run continues where it stopped, whichever rank it lands on
    assert sorted(set(distributed.shares([distributed.job_cost(j) for j in _jobs(ds)], 2))) == [0, 1]
    got = distributed.train_jobs(_jobs(ds, tmp_path / "resume"), LABELS, progress=False, ranks=2, workers=1,
                                 workdir=tmp_path)
    assert_identical(got, expected)
    assert not list(tmp_path.glob("proloc-ranks-*"))   # the exchange folder is gone


def _poisoned(tmp_path, tiny_stores):
    """The tiny stores, and a train set whose image tokens are all NaN (refused when read, on its rank)."""
    ds = tiny_stores(tmp_path)
    img = EmbeddingStore.open(tmp_path / "img-nan", {"m": "nan"}, 8, "image")
    img.commit({k: torch.full((4, 8), float("nan")) for k in ds["train"].img_store.keys()})
    return datasets.FusionDataset(ds["train"].samples, LABELS, ds["train"].seq_store,
                                  EmbeddingStore(tmp_path / "img-nan")), ds


def test_a_failing_rank_stops_the_other_with_one_line(tmp_path, tiny_stores):
    bad, ds = _poisoned(tmp_path, tiny_stores)
    healthy = settings.make_config("corrected", **SMALL, max_epochs=10_000, patience=None, batch_size=8)
    jobs = [loop.TrainJob(train_ds=ds["train"], val_ds=ds["val"], cfg=healthy, resume_dir=tmp_path / "ok"),
            loop.TrainJob(train_ds=bad, val_ds=ds["val"], cfg=settings.make_config("corrected", **SMALL, max_epochs=2))]
    assert distributed.shares([distributed.job_cost(j) for j in jobs], 2) == [0, 1]
    with pytest.raises(distributed.RankFailed) as err:
        distributed.train_jobs(jobs, LABELS, progress=False, ranks=2)
    message = str(err.value)
    assert "\n" not in message and message.startswith("training rank 1 of 2 failed: NonFiniteFeatureError: item")
    state = tmp_path / "ok" / "last_state.pt"   # the healthy rank was stopped, far from its last epoch
    done = json.loads(torch.load(state, weights_only=True)["state_json"])["epoch"] if state.exists() else 0
    assert done < 10_000


def test_too_many_ranks_for_the_gpus_is_one_line(tmp_path, monkeypatch, tiny_stores):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    ds = tiny_stores(tmp_path)
    with pytest.raises(Exception, match=r"^2 training ranks need 2 CUDA devices, one each; this machine has 1"):
        distributed.train_jobs(_jobs(ds), LABELS, device="cuda", progress=False, ranks=2)


def test_a_rank_stopped_by_a_non_finite_loss_is_reported_as_one(tmp_path):
    (tmp_path / "error-1").write_text("NaNLossError: non-finite training loss at epoch 3; "
                                      "the best model so far is kept")
    (tmp_path / "error-0").write_text("RankFailed: stopped because rank 1 failed")
    os.utime(tmp_path / "error-0", (time.time() + 5, time.time() + 5))     # the rank that stopped first speaks
    err = distributed._failure(tmp_path, 2, RuntimeError("a child process failed"))
    assert isinstance(err, loop.NaNLossError)
    assert str(err) == ("training rank 1 of 2: non-finite training loss at epoch 3; the best model so far is kept")
