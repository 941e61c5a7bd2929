"""Seeds stacked into one model (training.stacked, loop._Stack) equal the same seeds trained alone:
weights, losses, selected epochs; each seed's dropout masks come from its own generator."""
import json
import warnings

import numpy as np
import pytest
import torch

from proloc_lib.data.labels import LABELS
from proloc_lib.training import loop, model, settings, stacked

SMALL = dict(d_model=16, n_heads=2, n_blocks=2)


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def _models(cfg, n, seq_dim=6, img_dim=8):
    out = []
    for s in range(n):
        torch.manual_seed(s)
        out.append(loop.build_model(cfg, seq_dim, img_dim, 5))
    return out


def test_seed_draws_give_each_run_the_masks_of_its_own_generator():
    gens = [torch.Generator().manual_seed(10 + s) for s in range(3)]
    alone = [torch.Generator().manual_seed(10 + s) for s in range(3)]
    draws = stacked.SeedDraws(gens)
    like = torch.empty(3 * 2, 4, 7)
    for _ in range(2):   # two sites in a row: each run's stream goes on as it would alone
        keep = draws.keep(like, 0.5)
        for s in range(3):
            torch.testing.assert_close(keep[2 * s:2 * s + 2], model.dropout_keep(like[:2], 0.5, alone[s]),
                                       rtol=0, atol=0)
    assert all(torch.equal(g.get_state(), a.get_state()) for g, a in zip(gens, alone))
    # and the runs' masks differ from one another
    assert not torch.equal(keep[0:2], keep[2:4])


@pytest.mark.parametrize("name", ["authors", "corrected"])
def test_a_stacked_model_computes_each_model_on_its_own_rows(name):
    cfg = settings.make_config(name, **SMALL, dropout=0.5)
    models = _models(cfg, 3)
    st = stacked.stack_models(models)
    assert [n for n, _ in st.named_parameters()] == [n for n, _ in models[0].named_parameters()]
    assert all(p.shape[0] == 3 for p in st.parameters())
    torch.manual_seed(5)
    img, seq = torch.randn(6, 4, 8), torch.randn(6, 9, 6)
    mask = torch.ones(6, 9, dtype=torch.bool)
    mask[::2, 6:] = False
    # evaluation (no dropout), and training with each model's dropout from its own generator
    expect = torch.cat([m.eval()(img[2 * s:2 * s + 2], seq[2 * s:2 * s + 2], mask[2 * s:2 * s + 2])
                        for s, m in enumerate(models)])
    torch.testing.assert_close(st.eval()(img, seq, mask), expect, rtol=1e-5, atol=1e-6)
    for s, m in enumerate(models):
        m.train().use_generator(torch.Generator().manual_seed(s))
    expect = torch.cat([m(img[2 * s:2 * s + 2], seq[2 * s:2 * s + 2], mask[2 * s:2 * s + 2])
                        for s, m in enumerate(models)])
    st.train().use_generator(stacked.SeedDraws([torch.Generator().manual_seed(s) for s in range(3)]))
    torch.testing.assert_close(st(img, seq, mask), expect, rtol=1e-5, atol=1e-6)
    # weights go back where they came from
    fresh = _models(cfg, 3)
    stacked.unstack_into(st, fresh)
    for a, b in zip(models, fresh):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_gradient_clipping_is_per_seed():
    torch.manual_seed(0)
    scale = torch.tensor([0.01, 1.0, 10.0])
    grads = [torch.randn(3, 4, 5) * scale.view(3, 1, 1), torch.randn(3, 5) * scale.view(3, 1)]
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    norms = stacked.clip_per_seed(params, 1.0, 3)
    for s in range(3):
        alone = [torch.nn.Parameter(torch.zeros_like(g[s])) for g in grads]
        for p, g in zip(alone, grads):
            p.grad = g[s].clone()
        norm = torch.nn.utils.clip_grad_norm_(alone, 1.0)
        torch.testing.assert_close(norms[s], norm)
        for p, q in zip(params, alone):
            torch.testing.assert_close(p.grad[s], q.grad)
    assert norms[0] < 1 < norms[2]   # the small seed untouched, the large one clipped


def test_optimizer_state_stacks_and_unstacks():
    cfg = settings.make_config("authors", **SMALL)
    models = _models(cfg, 2)
    opts = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in models]
    for m, o in zip(models, opts):   # one step each: some state to carry
        m(torch.randn(2, 4, 8), torch.randn(2, 5, 6), torch.ones(2, 5, dtype=torch.bool)).sum().backward()
        o.step()
    st = stacked.stack_models(models)
    big = torch.optim.Adam(st.parameters(), lr=1.0)
    stacked.stack_optimizer_state(big, st, opts, models)
    assert big.param_groups[0]["lr"] == 1e-3
    copies = [torch.optim.Adam(m.parameters(), lr=5.0) for m in models]
    stacked.unstack_optimizer_state(big, st, copies, models)
    for o, c in zip(opts, copies):
        a, b = o.state_dict(), c.state_dict()
        assert a["param_groups"] == b["param_groups"]
        for k in a["state"]:
            for key in a["state"][k]:
                assert torch.equal(a["state"][k][key], b["state"][k][key]), key


def _train(ds, cfg, seeds, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return loop.train_fusion_seeds(ds["train"], ds["val"], cfg, LABELS, seeds=seeds, progress=False, **kw)


def _alone(ds, cfg, seeds, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [loop.train_fusion(ds["train"], ds["val"], cfg, LABELS, seed=s, progress=False, **kw) for s in seeds]


@pytest.fixture
def runs_close(same_weights):
    """Function (got, expected): losses, epochs, selected epochs and weights of each run agree."""
    def check(got, expected):
        for (m1, h1), (m2, h2) in zip(got, expected, strict=True):
            np.testing.assert_allclose(h1["train_loss"], h2["train_loss"], rtol=1e-5)
            np.testing.assert_allclose(h1["val_loss"], h2["val_loss"], rtol=1e-5)
            assert list(h1["epoch"]) == list(h2["epoch"]) and list(h1["best"]) == list(h2["best"])
            same_weights(m1, m2, SMALL["d_model"], rtol=1e-4, atol=1e-5)
    return check


def test_stacked_seeds_equal_seeds_alone_in_the_published_setting(tmp_path, tiny_stores, runs_close):
    """authors: dropout 0.5 on the attention weights and in the feed-forward, Adam, one shared
    block, padding to the split's longest, batch 2, best epoch by training loss."""
    ds = tiny_stores(tmp_path)
    cfg = settings.make_config("authors", **SMALL, max_epochs=3, lr=1e-3)
    assert cfg.dropout == 0.5 and cfg.attn_dropout is None and cfg.share_blocks
    together = _train(ds, settings.make_config("authors", **SMALL, max_epochs=3, lr=1e-3, stack_seeds=True), [0, 1, 2])
    runs_close(together, _alone(ds, cfg, [0, 1, 2]))
    # the stack really differs per seed, and dropout was on (training loss above the eval-mode one)
    assert not torch.equal(together[0][0].head.weight, together[1][0].head.weight)


def test_stacked_seeds_equal_alone_with_clipping_adamw_a_schedule_and_early_stopping(tmp_path, tiny_stores,
                                                                                    runs_close):
    """corrected switches on a fixed-shape loop: per-seed gradient clipping, AdamW, warm-up +
    cosine, and early stopping that takes seeds out of the stack at different epochs."""
    ds = tiny_stores(tmp_path)
    over = dict(**SMALL, max_epochs=8, lr=0.05, batch_size=4, bucket_batches=False, padding="split",
                patience=1, dropout=0.3, grad_clip=0.5)
    together = _train(ds, settings.make_config("corrected", **over, stack_seeds=True), [0, 1, 2])
    alone = _alone(ds, settings.make_config("corrected", **over), [0, 1, 2])
    assert len({len(h) for _, h in alone}) > 1, "the seeds should stop at different epochs"
    runs_close(together, alone)


def test_a_stacked_run_resumes_alone_and_an_alone_run_resumes_stacked(tmp_path, monkeypatch, tiny_stores,
                                                                      runs_close):
    """stack_seeds changes how runs step, not what they compute: same resume key and format."""
    ds = tiny_stores(tmp_path)
    plain = settings.make_config("authors", **SMALL, max_epochs=3, lr=1e-3)
    stack = settings.make_config("authors", **SMALL, max_epochs=3, lr=1e-3, stack_seeds=True)
    assert plain.hash() == stack.hash()
    reference = _alone(ds, plain, [0, 1])
    orig, calls = loop.evaluate_loss, {"n": 0}

    class Stop(Exception):
        pass

    def stop_in_epoch_two(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:   # both seeds have finished (and saved) epoch 1
            raise Stop
        return orig(*a, **k)

    for first, then in ((stack, plain), (plain, stack)):
        resume = tmp_path / f"resume-{first.stack_seeds}"
        calls["n"] = 0
        monkeypatch.setattr(loop, "evaluate_loss", stop_in_epoch_two)
        with pytest.raises(Stop):
            _train(ds, first, [0, 1], resume_dir=resume, workers=1)
        monkeypatch.setattr(loop, "evaluate_loss", orig)
        saved = [json.loads(torch.load(resume / f"seed-{s}" / "last_state.pt", weights_only=True)["state_json"])
                 for s in (0, 1)]
        assert [st["epoch"] for st in saved] == [1, 1]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            resumed = loop.train_fusion_seeds(ds["train"], ds["val"], then, LABELS, seeds=[0, 1], progress=False,
                                              resume_dir=resume)
        assert not [w for w in caught if "set aside" in str(w.message)]
        runs_close(resumed, reference)


def test_stack_seeds_where_shapes_change_warns_and_trains_the_seeds_alone(tmp_path, tiny_stores):
    ds = tiny_stores(tmp_path)
    over = dict(**SMALL, max_epochs=2, batch_size=8, dropout=0.1)   # corrected: length-bucketed batches
    with pytest.warns(UserWarning, match="batches of one shape"):
        got = loop.train_fusion_seeds(ds["train"], ds["val"],
                                      settings.make_config("corrected", **over, stack_seeds=True),
                                      LABELS, seeds=[0, 1], progress=False, workers=1)
    expected = _alone(ds, settings.make_config("corrected", **over), [0, 1])
    for (m1, h1), (m2, h2) in zip(got, expected):   # the plain loop: bit for bit
        assert list(h1["train_loss"]) == list(h2["train_loss"])
        assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
