"""Device resolution and what a GPU encoder sets up (checkable without a GPU)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch

from models.embedders import forward_guard, resolve_device


@pytest.fixture
def cudnn_attention() -> Iterator[None]:
    before = torch.backends.cuda.cudnn_sdp_enabled()
    yield
    torch.backends.cuda.enable_cudnn_sdp(before)


@pytest.mark.usefixtures("cudnn_attention")
def test_a_gpu_encoder_turns_cudnn_attention_off() -> None:
    torch.backends.cuda.enable_cudnn_sdp(True)
    assert isinstance(forward_guard("cpu"), contextlib.nullcontext)
    assert torch.backends.cuda.cudnn_sdp_enabled()  # a CPU encoder leaves it alone
    guard = forward_guard("cuda")
    assert not torch.backends.cuda.cudnn_sdp_enabled()  # it plans every new shape
    with guard:  # a lock: one batch on the GPU at a time
        assert not guard.acquire(blocking=False)  # type: ignore[attr-defined]


def test_resolve_device_takes_the_dtype_setting() -> None:
    assert resolve_device("cpu") == ("cpu", "float32")
    assert resolve_device("cpu", "bfloat16") == ("cpu", "bfloat16")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            resolve_device("cuda")
        assert resolve_device("auto") == ("cpu", "float32")
    else:
        assert resolve_device("auto") == ("cuda", "float16")
