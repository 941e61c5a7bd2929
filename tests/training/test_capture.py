"""The compiled fixed-shape step (training.capture) equals the eager step: dropout masks drawn
ahead in the eager order, a plain fallback when the compiler fails.

Most tests compile with the "aot_eager" backend (dynamo + AOT autograd: the graphs, the lifted
parameters and the replayed masks of the real path, without code generation, in seconds); one,
marked slow, uses the default inductor backend on the CPU (minutes: C++ code generation)."""
import pytest
import torch

from proloc_lib.training import capture, loop, settings, stacked

SMALL = dict(d_model=16, n_heads=2, n_blocks=1)


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def _setup(n_seeds=2, **over):
    """A stack of ``n_seeds`` authors models (dropout 0.5), its Adam and its per-seed losses."""
    cfg = settings.make_config("authors", **SMALL, lr=1e-3, **over)
    models = []
    for s in range(n_seeds):
        torch.manual_seed(s)
        models.append(loop.build_model(cfg, 6, 8, 5))
    draws = capture.DrawAhead(stacked.SeedDraws([torch.Generator().manual_seed(100 + s) for s in range(n_seeds)]))
    st = stacked.stack_models(models, draws).train()
    opt = torch.optim.Adam(st.parameters(), lr=cfg.lr)
    seed_losses = torch.func.vmap(loop.loss_fn(cfg, 4))

    def forward(img, seq, mask, y):
        logits = st(img, seq, mask)
        return seed_losses(logits.view(n_seeds, -1, 5), y.view(n_seeds, -1, 5))

    return st, opt, forward, draws


def _batches(n_seeds=2, steps=4, batch=2):
    g = torch.Generator().manual_seed(7)
    rows = n_seeds * batch
    out = [(torch.randn(rows, 4, 8, generator=g), torch.randn(rows, 9, 6, generator=g),
            torch.ones(rows, 9, dtype=torch.bool), (torch.rand(rows, 5, generator=g) < 0.5).float())
           for _ in range(steps)]
    # the published loop's last batch can be smaller: another shape, recorded and compiled apart
    small = n_seeds * (batch - 1)
    return out + [tuple(t[:small] for t in out[0])]


def _eager(batches):
    st, opt, forward, _ = _setup()
    losses = []
    for b in batches:
        opt.zero_grad(set_to_none=True)
        loss = forward(*b)
        loss.sum().backward()
        opt.step()
        losses.append(loss.detach())
    return st, losses


def test_masks_drawn_ahead_are_the_masks_drawn_in_the_forward():
    inner = [torch.Generator().manual_seed(s) for s in range(2)]
    live = [torch.Generator().manual_seed(s) for s in range(2)]
    ahead = capture.DrawAhead(stacked.SeedDraws(inner))
    like = [torch.empty(4, 3, 5), torch.empty(4, 7)]
    with ahead.recording("k"):
        recorded = [ahead.keep(t, 0.5) for t in like]
    assert [site[0] for site in ahead.sites["k"]] == [(4, 3, 5), (4, 7)]
    drawn = ahead.draw("k")   # the next step's masks, ahead of it
    expected = [stacked.SeedDraws(live).keep(t, 0.5) for t in like * 2]
    for got, exp in zip(recorded + list(drawn), expected, strict=True):
        assert torch.equal(got, exp)
    ahead.replaying(drawn)
    assert [torch.equal(ahead.keep(t, 0.5), d) for t, d in zip(like, drawn)] == [True, True]
    ahead.replaying(None)


def test_the_compiled_step_equals_the_eager_step():
    batches = _batches()
    eager_model, eager_losses = _eager(batches)
    st, opt, forward, draws = _setup()
    step = capture.CompiledStep(forward, opt.step, draws, params=st.parameters(), device="cpu", backend="aot_eager")
    losses = [step(*b) for b in batches]
    assert step.eager_reason is None
    assert step.compiled_steps == len(batches) - 2   # the first step of each of the two shapes runs eagerly
    for a, b in zip(losses, eager_losses):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for (name, a), b in zip(st.state_dict().items(), eager_model.state_dict().values()):
        if not name.endswith("in_proj_bias"):   # its key part has a zero gradient made of rounding noise
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_a_failing_compiler_falls_back_to_the_eager_step_on_the_same_masks():
    def broken(gm, example_inputs):
        raise RuntimeError("no compiler here")

    batches = _batches()
    eager_model, eager_losses = _eager(batches)
    st, opt, forward, draws = _setup()
    step = capture.CompiledStep(forward, opt.step, draws, params=st.parameters(), device="cpu", backend=broken)
    with pytest.warns(UserWarning, match="capture_step: the compiled step failed.*no compiler here"):
        losses = [step(*b) for b in batches]
    assert step.compiled_steps == 0 and "no compiler here" in step.eager_reason
    for a, b in zip(losses, eager_losses):   # the eager step itself: bit for bit, no mask drawn twice
        assert torch.equal(a, b)
    assert all(torch.equal(a, b) for a, b in zip(st.state_dict().values(), eager_model.state_dict().values()))


def test_capture_is_active_where_the_switch_says():
    off, cuda, always = (settings.make_config("authors", capture_step=v) for v in ("off", "cuda", "always"))
    assert not capture.capture_active(off, "cpu") and not capture.capture_active(cuda, "cpu")
    assert capture.capture_active(always, "cpu") and capture.capture_active(cuda, "cuda:0")
    with pytest.raises(ValueError, match="capture_step"):
        settings.make_config("authors", capture_step="yes")


@pytest.mark.slow
def test_the_inductor_compiled_step_equals_the_eager_step_on_the_cpu():
    """The default backend: C++ kernels generated and compiled here (gcc); on CUDA the same path
    adds CUDA graphs ("reduce-overhead")."""
    batches = _batches(steps=3)[:3]
    eager_model, eager_losses = _eager(batches)
    st, opt, forward, draws = _setup()
    step = capture.CompiledStep(forward, opt.step, draws, params=st.parameters(), device="cpu")
    losses = [step(*b) for b in batches]
    assert step.eager_reason is None and step.compiled_steps == 2
    for a, b in zip(losses, eager_losses):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for (name, a), b in zip(st.state_dict().items(), eager_model.state_dict().values()):
        if not name.endswith("in_proj_bias"):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
