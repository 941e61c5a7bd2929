"""Devices, seeds and torch threads."""

from __future__ import annotations

import contextlib
import random

import numpy as np

from proloc_lib.core.errors import UserError


class DeviceError(UserError, ValueError):
    pass


class DeviceUnavailable(UserError, RuntimeError):
    pass


def resolve_device(device: str = "auto") -> str:
    """'auto' -> 'cuda' when available, else 'cpu'; other names are validated."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    kind, _, index = str(device).partition(":")
    if kind not in ("cpu", "cuda", "mps") or (index and not (kind == "cuda" and index.isdigit())):
        raise DeviceError(f"unknown device '{device}' (use auto, cpu, cuda, cuda:N, mps)")
    if kind == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable(f"device '{device}' requested but CUDA is not available")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise DeviceUnavailable(f"device '{device}' requested but MPS is not available")
    return device


def check_ranks(device: str, ranks: int) -> None:
    """``ranks`` training processes on ``device`` (``training.distributed``): on CUDA one device
    each, so at least that many; a one-line error otherwise. Any number on the CPU."""
    import torch

    if ranks < 1:
        raise DeviceError(f"training ranks must be 1 or more, got {ranks}")
    if ranks > 1 and str(device).startswith("cuda") and torch.cuda.device_count() < ranks:
        raise DeviceUnavailable(f"{ranks} training ranks need {ranks} CUDA devices, one each; this machine has "
                                f"{torch.cuda.device_count()} (lower --gpus)")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover - torch is a declared dependency
        pass


@contextlib.contextmanager
def torch_threads(n: int):
    """torch on ``n`` intra-op threads inside the block (this thread's setting, restored after);
    also a decorator. For loops of tiny ops (a bag of two images, a 64-wide head) and memory-bound
    gathers: more threads cannot split them, and waking idle ones for every op cost 10-30x the op
    itself on a busy 2-core CPU (measured)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
