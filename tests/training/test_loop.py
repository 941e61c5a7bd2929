"""The loop's execution switches (stack_seeds, capture_step) change how runs step, not what they
compute: the same hash and resume key, the same results as the plain loop (training.loop)."""
import warnings

import numpy as np
import pytest
import torch
from test_stacked import assert_same_weights
from test_training import make_stores

from proloc_lib.data.labels import LABELS
from proloc_lib.training import capture, loop, settings

SMALL = dict(d_model=16, n_heads=2, n_blocks=1)


@pytest.fixture(autouse=True)
def one_intra_op_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _seeds(ds, cfg, seeds=(0, 1), **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return loop.train_fusion_seeds(ds["train"], ds["val"], cfg, LABELS, seeds=list(seeds), progress=False, **kw)


def test_execution_switches_leave_the_hash_and_the_resume_key_alone(tmp_path):
    ds = make_stores(tmp_path)
    plain = settings.make_config("authors", **SMALL)
    fast = settings.make_config("authors", **SMALL, stack_seeds=True, capture_step="cuda")
    assert plain.hash() == fast.hash()
    assert loop.run_key(ds["train"], ds["val"], plain, 0) == loop.run_key(ds["train"], ds["val"], fast, 0)
    assert settings.make_config("authors", **SMALL, dropout=0.4).hash() != plain.hash()   # a result switch does
    assert set(settings.TrainConfig.EXECUTION_ONLY) == {"stack_seeds", "capture_step"}


@pytest.mark.parametrize("stack", [False, True])
def test_captured_steps_through_the_loop_equal_the_plain_loop(tmp_path, monkeypatch, stack):
    monkeypatch.setattr(capture, "BACKEND", "aot_eager")   # the compiled path without code generation
    ds = make_stores(tmp_path)
    over = dict(**SMALL, max_epochs=2, lr=1e-3)
    got = _seeds(ds, settings.make_config("authors", **over, stack_seeds=stack, capture_step="always"))
    expected = _seeds(ds, settings.make_config("authors", **over), workers=1)
    for (m1, h1), (m2, h2) in zip(got, expected, strict=True):
        np.testing.assert_allclose(h1["train_loss"], h2["train_loss"], rtol=1e-5)
        np.testing.assert_allclose(h1["val_loss"], h2["val_loss"], rtol=1e-5)
        assert list(h1["best"]) == list(h2["best"])
        assert_same_weights(m1, m2, SMALL["d_model"], rtol=1e-4, atol=1e-5)


def test_capture_on_cuda_only_leaves_a_cpu_run_as_it_was(tmp_path):
    ds = make_stores(tmp_path)
    over = dict(**SMALL, max_epochs=2, lr=1e-3)
    (m1, h1), = _seeds(ds, settings.make_config("authors", **over, capture_step="cuda"), seeds=[0])
    (m2, h2), = _seeds(ds, settings.make_config("authors", **over), seeds=[0])
    assert list(h1["train_loss"]) == list(h2["train_loss"])
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))


def test_every_finished_epoch_of_every_run_is_reported(tmp_path):
    ds = make_stores(tmp_path)
    ticks = []
    jobs = [loop.TrainJob(train_ds=ds["train"], val_ds=ds["val"], seed=s,
                          cfg=settings.make_config("authors", **SMALL, max_epochs=e, stack_seeds=True))
            for s, e in ((0, 2), (1, 2), (2, 3))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loop.train_jobs(jobs, LABELS, progress=False, on_epoch=ticks.append)
    assert sum(ticks) == 2 + 2 + 3
