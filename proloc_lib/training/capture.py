"""A training step of fixed shapes compiled once: ``torch.compile``, with CUDA graphs on a GPU.

The published loop pads every batch of a split to one width, so its step (forward, loss,
backward, optimiser) has the same shapes every time: compiled once (``mode="reduce-overhead"``
on CUDA: the kernels replay as a CUDA graph, one launch instead of hundreds), it leaves the
host out of the way of a batch-2 step. Two things keep a compiled run equal to the eager one:

* dropout masks are drawn eagerly, from each run's own generator, in the order and shapes the
  eager model draws them (:class:`DrawAhead`), and handed to the compiled forward as inputs:
  the compiler's own random numbers would differ from torch's, and a generator cannot enter a
  CUDA graph. The first step of each input shape runs eagerly and records the dropout sites;
* anything the compiler cannot do falls back to the eager step (one warning), on the same
  masks, so no random draw is repeated or lost.

Only execution changes: the result equals the eager step's within float tolerance
(``tests/training/test_capture.py``, inductor on the CPU).
"""

from __future__ import annotations

import contextlib
import warnings

import torch

from proloc_lib.core.errors import one_line
from proloc_lib.training.model import MaskSource


class DrawAhead(MaskSource):
    """Dropout masks drawn before a compiled step, in the model's call order.

    While ``recording(key)`` the model draws from ``inner`` as usual and each call's shape, dtype
    and rate are noted under ``key`` (the step's input shapes); ``draw(key)`` then draws the same
    sequence from ``inner`` ahead of the next step with those shapes, and ``replaying(masks)``
    hands them out in order. ``inner`` sees the same draws in the same order either way.
    """

    def __init__(self, inner: MaskSource):
        self.inner = inner
        self.sites: dict[tuple, list[tuple]] = {}
        self._record: list | None = None
        self._queue: list | None = None

    def keep(self, like: torch.Tensor, p: float) -> torch.Tensor:
        if self._queue is not None:
            return self._queue.pop(0)
        if self._record is not None:
            self._record.append((tuple(like.shape), like.dtype, like.device, p))
        return self.inner.keep(like, p)

    @contextlib.contextmanager
    def recording(self, key: tuple):
        self._record = []
        try:
            yield
            self.sites[key] = self._record
        finally:
            self._record = None

    def draw(self, key: tuple) -> tuple[torch.Tensor, ...]:
        return tuple(self.inner.keep(torch.empty(shape, dtype=dtype, device=device), p)
                     for shape, dtype, device, p in self.sites[key])

    def replaying(self, masks) -> None:
        """Hand out ``masks`` in order (None: draw again). Called inside the compiled forward."""
        self._queue = None if masks is None else list(masks)


# the torch.compile backend: "inductor" generates kernels (CUDA graphs on a GPU); tests on the CPU
# may use "aot_eager" (the same graphs and replayed masks, no code generation)
BACKEND = "inductor"


def capture_active(cfg, device: str) -> bool:
    """Whether ``cfg.capture_step`` asks for a compiled step on ``device`` ("cuda": on CUDA only)."""
    return cfg.capture_step == "always" or (cfg.capture_step == "cuda" and torch.device(device).type == "cuda")


class CompiledStep:
    """``forward(img, seq, mask, y) -> per-run losses`` and ``update()`` (clipping, optimiser
    step) of a model whose dropout comes from ``draws``, compiled once per input shape.

    Call it as the step: gradients are zeroed first, the losses come back detached. The first
    step of each shape, and every step after a compiler failure, runs eagerly.
    """

    def __init__(self, forward, update, draws: DrawAhead, *, params, device: str, backend: str | None = None):
        self.forward, self.update, self.draws, self.params = forward, update, draws, list(params)
        self.cuda = torch.device(device).type == "cuda"
        backend = backend or BACKEND
        # CUDA graphs where there are any: inductor's "reduce-overhead"
        opts = {"mode": "reduce-overhead"} if self.cuda and backend == "inductor" else {}
        self._forward = torch.compile(self._replayed, backend=backend, dynamic=False, **opts)
        self._update = torch.compile(update, backend=backend, dynamic=False, **opts)
        self.eager_reason: str | None = None
        self.compiled_steps = 0

    def _replayed(self, img, seq, mask, y, masks):
        self.draws.replaying(masks)
        losses = self.forward(img, seq, mask, y)
        self.draws.replaying(None)
        return losses

    def _zero_grad(self):
        for p in self.params:
            p.grad = None

    def _fall_back(self, exc: BaseException) -> None:
        self.draws.replaying(None)
        if self.eager_reason is None:
            self.eager_reason = f"{type(exc).__name__}: {one_line(exc)[:300]}"
            warnings.warn(f"capture_step: the compiled step failed ({self.eager_reason}); this run steps "
                          "eagerly from here on, with the same dropout masks and the same result", stacklevel=3)

    def __call__(self, img, seq, mask, y) -> torch.Tensor:
        key = (tuple(img.shape), tuple(seq.shape), img.dtype)
        self._zero_grad()
        if self.eager_reason is not None or key not in self.draws.sites:
            with self.draws.recording(key) if self.eager_reason is None else contextlib.nullcontext():
                losses = self.forward(img, seq, mask, y)
            losses.sum().backward()
            self.update()
            return losses.detach()
        masks = self.draws.draw(key)
        if self.cuda:
            torch.compiler.cudagraph_mark_step_begin()
        try:
            losses = self._forward(img, seq, mask, y, masks)
            losses.sum().backward()
        except Exception as exc:  # noqa: BLE001 - any compiler failure: the eager step on the same masks
            self._fall_back(exc)
            self._zero_grad()
            self.draws.replaying(masks)
            losses = self.forward(img, seq, mask, y)
            self.draws.replaying(None)
            losses.sum().backward()
            self.update()
            return losses.detach()
        try:
            self._update()
        except Exception as exc:  # noqa: BLE001 - the optimiser has not stepped: step it eagerly
            self._fall_back(exc)
            self.update()
        self.compiled_steps += 1
        return losses.detach().clone()   # a CUDA graph's output is overwritten by its next replay
