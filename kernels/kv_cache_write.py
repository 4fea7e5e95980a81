"""Scatter new keys/values into the paged KV cache.

Layouts:
    key, value:               [N, H, D]   one row per new token (tokens of all sequences, flattened)
    key_cache, value_cache:   [num_blocks, block_size, H, D]   pages of `block_size` tokens
    slot_mapping:             [N] int32/int64, slot = block_id * block_size + offset_in_block;
                              a negative slot marks a padding row, which is not written.
"""
import torch
import triton
import triton.language as tl

from kernels._checks import (
    FLOAT_DTYPES,
    INDEX_DTYPES,
    check_contiguous,
    check_dim,
    check_dtype,
    check_rank,
    check_same_device,
    check_same_dtype,
)
from kernels._launch import Launch, run_launches
from kernels.errors import KernelError


@triton.jit
def _write_kv_cache_kernel(
    key_ptr,
    value_ptr,
    key_cache_ptr,
    value_cache_ptr,
    slot_mapping_ptr,
    stride_token,
    stride_token_head,
    stride_cache_block,
    stride_cache_offset,
    stride_cache_head,
    num_heads,
    head_dim,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # One program copies all heads of one token.
    token = tl.program_id(0)
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    if slot < 0:
        return
    block_id = slot // BLOCK_SIZE
    offset_in_block = slot % BLOCK_SIZE

    heads = tl.arange(0, BLOCK_H)
    dims = tl.arange(0, BLOCK_D)
    mask = (heads[:, None] < num_heads) & (dims[None, :] < head_dim)
    source = token.to(tl.int64) * stride_token + heads[:, None] * stride_token_head + dims[None, :]
    destination = (
        block_id * stride_cache_block
        + offset_in_block * stride_cache_offset
        + heads[:, None] * stride_cache_head
        + dims[None, :]
    )
    key = tl.load(key_ptr + source, mask=mask)
    value = tl.load(value_ptr + source, mask=mask)
    tl.store(key_cache_ptr + destination, key.to(key_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(value_cache_ptr + destination, value.to(value_cache_ptr.dtype.element_ty), mask=mask)


def plan_write_kv_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> list[Launch]:
    """Check the arguments and return the launch that writes the rows."""
    check_rank("key", key, 3, "[N, H, D]")
    check_rank("value", value, 3, "[N, H, D]")
    check_rank("key_cache", key_cache, 4, "[num_blocks, block_size, H, D]")
    check_rank("value_cache", value_cache, 4, "[num_blocks, block_size, H, D]")
    check_rank("slot_mapping", slot_mapping, 1, "[N]")
    if value.shape != key.shape:
        raise KernelError(f"value shape {tuple(value.shape)} must equal key shape {tuple(key.shape)}")
    if value_cache.shape != key_cache.shape:
        raise KernelError(
            f"value_cache shape {tuple(value_cache.shape)} must equal key_cache shape {tuple(key_cache.shape)}"
        )
    num_tokens, num_heads, head_dim = key.shape
    check_dim("key_cache", key_cache, 2, num_heads, "key.shape[1], the number of heads")
    check_dim("key_cache", key_cache, 3, head_dim, "key.shape[2], the head dim")
    check_dim("slot_mapping", slot_mapping, 0, num_tokens, "key.shape[0], the number of tokens")
    check_dtype("key", key, FLOAT_DTYPES)
    check_same_dtype("key", key, value=value, key_cache=key_cache, value_cache=value_cache)
    check_dtype("slot_mapping", slot_mapping, INDEX_DTYPES)
    check_same_device(
        "key", key, value=value, key_cache=key_cache, value_cache=value_cache, slot_mapping=slot_mapping
    )
    check_contiguous(
        key=key, value=value, key_cache=key_cache, value_cache=value_cache, slot_mapping=slot_mapping
    )
    if num_tokens == 0:
        return []
    args = (
        key,
        value,
        key_cache,
        value_cache,
        slot_mapping,
        key.stride(0),
        key.stride(1),
        key_cache.stride(0),
        key_cache.stride(1),
        key_cache.stride(2),
        num_heads,
        head_dim,
    )
    constexprs = dict(
        BLOCK_SIZE=key_cache.shape[1],
        BLOCK_H=triton.next_power_of_2(num_heads),
        BLOCK_D=triton.next_power_of_2(head_dim),
    )
    return [Launch(_write_kv_cache_kernel, (num_tokens,), args, constexprs)]


def write_kv_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Write key[n], value[n] into cache slot slot_mapping[n] (in place); negative slots are skipped."""
    run_launches(plan_write_kv_cache(key, value, key_cache, value_cache, slot_mapping))


def write_kv_cache_reference(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Plain-PyTorch equivalent of `write_kv_cache` (in place)."""
    block_size = key_cache.shape[1]
    real = slot_mapping >= 0
    slots = slot_mapping[real].long()
    key_cache[slots // block_size, slots % block_size] = key[real].to(key_cache.dtype)
    value_cache[slots // block_size, slots % block_size] = value[real].to(value_cache.dtype)
