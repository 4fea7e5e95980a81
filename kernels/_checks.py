"""Argument checks shared by the kernel launchers.

Every check raises ValueError naming the offending argument, so a caller that passes a
wrong tensor learns which one and why before a kernel reads out of bounds. The checks
only look at tensor metadata (shape, dtype, device, strides), never at tensor values, so
they cost no host-device sync and are traced away by torch.compile.
"""
from collections.abc import Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int32, torch.int64)


def check_rank(name: str, tensor: torch.Tensor, rank: int, layout: str) -> None:
    """Require `tensor` to have `rank` dimensions; `layout` (e.g. "[B, H, D]") goes in the message."""
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dim() != rank:
        raise ValueError(f"{name} must be {rank}-D {layout}, got shape {tuple(tensor.shape)}")


def check_dtype(name: str, tensor: torch.Tensor, allowed: Sequence[torch.dtype]) -> None:
    if tensor.dtype not in allowed:
        names = ", ".join(str(dtype) for dtype in allowed)
        raise ValueError(f"{name} must have dtype in ({names}), got {tensor.dtype}")


def check_same_dtype(reference_name: str, reference: torch.Tensor, **others: torch.Tensor) -> None:
    for name, tensor in others.items():
        if tensor.dtype != reference.dtype:
            raise ValueError(
                f"{name} has dtype {tensor.dtype} but {reference_name} has {reference.dtype}; they must match"
            )


def check_same_device(reference_name: str, reference: torch.Tensor, **others: torch.Tensor) -> None:
    for name, tensor in others.items():
        if tensor.device != reference.device:
            raise ValueError(
                f"{name} is on {tensor.device} but {reference_name} is on {reference.device}; "
                "all tensors must be on the same device"
            )


def check_contiguous(**tensors: torch.Tensor) -> None:
    for name, tensor in tensors.items():
        if not tensor.is_contiguous():
            raise ValueError(f"{name} must be contiguous (call .contiguous() first), got strides {tensor.stride()}")


def check_dim(name: str, tensor: torch.Tensor, dim: int, expected: int, what: str) -> None:
    """Require `tensor.shape[dim] == expected`; `what` says what the size must agree with."""
    if tensor.shape[dim] != expected:
        raise ValueError(f"{name}.shape[{dim}] is {tensor.shape[dim]} but must equal {what} ({expected})")


def check_power_of_two(name: str, value: int) -> None:
    # Triton's tl.arange only spans power-of-two lengths, and these sizes index tiles directly.
    if value < 1 or value & (value - 1):
        raise ValueError(f"{name} must be a power of two, got {value}")


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot input precision: exact fp32 products for fp32 inputs (TF32 would lose ~3 digits).

    For 16-bit inputs the setting is ignored: the tensor cores take them as they are.
    """
    return "ieee" if dtype == torch.float32 else "tf32"
