"""Devices: auto picks CUDA where present, unknown names are refused."""
import pytest
import torch

from proloc_lib.core import runtime


def test_resolve_device():
    assert runtime.resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert runtime.resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="tpu"):
        runtime.resolve_device("tpu")
