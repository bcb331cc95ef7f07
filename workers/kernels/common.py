"""Helpers the kernel launchers share: interpreter detection, tile padding, argument checks."""

from __future__ import annotations

import torch
import triton

MIN_DOT = 16  # tl.dot needs every dimension ≥ 16 on NVIDIA GPUs


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1 at import)."""
    return bool(triton.knobs.runtime.interpret)


def dot_tile(n: int) -> int:
    """A power-of-two tile dimension ≥ n usable by tl.dot."""
    return max(MIN_DOT, triton.next_power_of_2(n))


def upcast_dot(dtype: torch.dtype) -> bool:
    """Whether to cast tl.dot operands to fp32 in the kernel: the interpreter computes bf16 dots wrongly."""
    return interpreting() and dtype == torch.bfloat16


def check_runnable(*tensors: torch.Tensor) -> None:
    """Kernels run on CUDA tensors, or on CPU tensors under the interpreter; say so instead of crashing."""
    on_cpu = any(t.device.type == "cpu" for t in tensors)
    if on_cpu and not interpreting():
        raise RuntimeError("Triton kernels need CUDA tensors, or TRITON_INTERPRET=1 set before importing them")


def check_last_dim_contiguous(**tensors: torch.Tensor) -> None:
    for name, t in tensors.items():
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must have a contiguous last dimension (stride {t.stride(-1)})")
