"""Argument checks (and two small facts) shared by the kernel launchers.

Every check raises KernelError (a ValueError) naming the offending argument, so a caller
that passes a wrong tensor learns which one and why before a kernel reads out of bounds. The checks
only look at tensor metadata (shape, dtype, device, strides), never at tensor values, so
they cost no host-device sync and are traced away by torch.compile.
"""
from collections.abc import Sequence

import torch

from kernels.errors import KernelError

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Both attention kernels take the softmax scale times log2(e), so exp2 can replace exp.
LOG2_E = 1.4426950408889634
INDEX_DTYPES = (torch.int32, torch.int64)


def check_rank(name: str, tensor: torch.Tensor, rank: int, layout: str) -> None:
    """Require `tensor` to have `rank` dimensions; `layout` (e.g. "[B, H, D]") goes in the message."""
    if not isinstance(tensor, torch.Tensor):
        raise KernelError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dim() != rank:
        raise KernelError(f"{name} must be {rank}-D {layout}, got shape {tuple(tensor.shape)}")


def check_dtype(name: str, tensor: torch.Tensor, allowed: Sequence[torch.dtype]) -> None:
    if tensor.dtype not in allowed:
        names = ", ".join(str(dtype) for dtype in allowed)
        raise KernelError(f"{name} must have dtype in ({names}), got {tensor.dtype}")


def check_same_dtype(reference_name: str, reference: torch.Tensor, **others: torch.Tensor) -> None:
    for name, tensor in others.items():
        if tensor.dtype != reference.dtype:
            raise KernelError(
                f"{name} has dtype {tensor.dtype} but {reference_name} has {reference.dtype}; they must match"
            )


def check_same_device(reference_name: str, reference: torch.Tensor, **others: torch.Tensor) -> None:
    for name, tensor in others.items():
        if tensor.device != reference.device:
            raise KernelError(
                f"{name} is on {tensor.device} but {reference_name} is on {reference.device}; "
                "all tensors must be on the same device"
            )


def check_contiguous(**tensors: torch.Tensor) -> None:
    for name, tensor in tensors.items():
        if not tensor.is_contiguous():
            raise KernelError(f"{name} must be contiguous (call .contiguous() first), got strides {tensor.stride()}")


def check_dim(name: str, tensor: torch.Tensor, dim: int, expected: int, what: str) -> None:
    """Require `tensor.shape[dim] == expected`; `what` says what the size must agree with."""
    if tensor.shape[dim] != expected:
        raise KernelError(f"{name}.shape[{dim}] is {tensor.shape[dim]} but must equal {what} ({expected})")


def check_power_of_two(name: str, value: int) -> None:
    # Triton's tl.arange only spans power-of-two lengths, and these sizes index tiles directly.
    if value < 1 or value & (value - 1):
        raise KernelError(f"{name} must be a power of two, got {value}")


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot input precision: exact fp32 products for fp32 inputs (TF32 would lose ~3 digits).

    For 16-bit inputs the setting is ignored: the tensor cores take them as they are.
    """
    return "ieee" if dtype == torch.float32 else "tf32"


def check_paged_attention(
    query: torch.Tensor,
    query_layout: str,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    **per_sequence: torch.Tensor,
) -> None:
    """The checks both paged attention launchers share: `query` ([B, ..., H, D]) against a
    `[num_blocks, block_size, H, D]` cache, and `block_tables` plus every `per_sequence`
    tensor (context or prefix/query lengths) as int32 with one row per sequence."""
    check_rank("query", query, query_layout.count(",") + 1, query_layout)
    check_rank("key_cache", key_cache, 4, "[num_blocks, block_size, H, D]")
    check_rank("value_cache", value_cache, 4, "[num_blocks, block_size, H, D]")
    check_rank("block_tables", block_tables, 2, "[B, max_blocks]")
    for name, tensor in per_sequence.items():
        check_rank(name, tensor, 1, "[B]")
    if value_cache.shape != key_cache.shape:
        raise KernelError(
            f"value_cache shape {tuple(value_cache.shape)} must equal key_cache shape {tuple(key_cache.shape)}"
        )
    heads_dim = query.dim() - 2
    check_dim("key_cache", key_cache, 2, query.shape[heads_dim], f"query.shape[{heads_dim}], the number of heads")
    check_dim("key_cache", key_cache, 3, query.shape[-1], f"query.shape[{heads_dim + 1}], the head dim")
    for name, tensor in {"block_tables": block_tables, **per_sequence}.items():
        check_dim(name, tensor, 0, query.shape[0], "query.shape[0], the batch size")
        check_dtype(name, tensor, (torch.int32,))
    check_dtype("query", query, FLOAT_DTYPES)
    check_same_dtype("query", query, key_cache=key_cache, value_cache=value_cache)
    tensors = {"key_cache": key_cache, "value_cache": value_cache, "block_tables": block_tables, **per_sequence}
    check_same_device("query", query, **tensors)
    check_contiguous(query=query, **tensors)
