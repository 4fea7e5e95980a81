"""Paged decode attention (one new query per sequence), flash-decoding style.

Layouts:
    query:                   [B, H, D]   the newest token of each sequence
    key_cache, value_cache:  [num_blocks, block_size, H, D]
    block_tables:            [B, max_blocks] int32; entry j is the cache block holding
                             positions j*block_size .. (j+1)*block_size - 1 of the sequence
    context_lens:            [B] int32, tokens in the cache per sequence, including the new
                             query's own K/V; 0 marks a padding row (output zeros)
    output:                  [B, H, D] in the query dtype

Each sequence's context is cut into splits of a fixed `split_size` tokens. Kernel 1 runs
one program per (sequence, head, split) and writes the split's normalised partial output
and log-sum-exp (base 2) to fp32 scratch; kernel 2 merges the splits in order. The grid
is sized from tensor shapes (max_blocks * block_size), so launches are CUDA-graph safe;
splits past a sequence's context exit at once and are never read by the merge. Nothing
in a sequence's reduction order depends on the batch, which makes it batch invariant.
"""
import math

import torch
import triton
import triton.language as tl

from kernels._checks import LOG2_E, check_paged_attention
from kernels._launch import Launch, run_launches
from kernels.errors import KernelError


def kv_tile(head_dim: int, split_size: int) -> int:
    """Tokens scored per loop iteration inside a split, from the head dim and split size
    only (never the batch). A [KV_TILE, head_dim] fp32 tile must stay in registers: 64
    tokens for head_dim >= 64 (no spills, gpt2m), 32 below (64 x 32 in float32 spilled
    8 bytes per thread on sm_86, as `kernels.aot` showed)."""
    return min(64 if head_dim >= 64 else 32, triton.next_power_of_2(split_size))


@triton.jit
def _decode_split_kernel(
    query_ptr,
    key_cache_ptr,
    value_cache_ptr,
    block_tables_ptr,
    context_lens_ptr,
    partial_out_ptr,  # [B, H, num_splits, D] fp32
    partial_lse_ptr,  # [B, H, num_splits] fp32, log2-sum-exp2 of the split's scaled scores
    scale_log2,  # softmax scale * log2(e), so exp2 can replace exp
    stride_query_batch,
    stride_query_head,
    stride_cache_block,
    stride_cache_offset,
    stride_cache_head,
    stride_table_batch,
    num_heads,
    num_splits,
    head_dim,
    BLOCK_SIZE: tl.constexpr,
    SPLIT_SIZE: tl.constexpr,
    KV_TILE: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    batch = tl.program_id(0)
    head = tl.program_id(1)
    split = tl.program_id(2)
    context_len = tl.load(context_lens_ptr + batch)
    split_start = split * SPLIT_SIZE
    if split_start >= context_len:
        return
    split_end = tl.minimum(split_start + SPLIT_SIZE, context_len)

    dims = tl.arange(0, BLOCK_D)
    dim_mask = dims < head_dim
    query = tl.load(query_ptr + batch * stride_query_batch + head * stride_query_head + dims, mask=dim_mask)
    query = query.to(tl.float32) * scale_log2

    running_max = float("-inf")
    running_sum = 0.0
    accumulator = tl.zeros([BLOCK_D], dtype=tl.float32)
    for tile_start in range(split_start, split_end, KV_TILE):
        positions = tile_start + tl.arange(0, KV_TILE)
        valid = positions < split_end
        # Per-token gather through the block table: a tile may span several cache blocks.
        block_ids = tl.load(
            block_tables_ptr + batch * stride_table_batch + positions // BLOCK_SIZE, mask=valid, other=0
        ).to(tl.int64)
        rows = block_ids * stride_cache_block + (positions % BLOCK_SIZE) * stride_cache_offset
        offsets = rows[:, None] + head * stride_cache_head + dims[None, :]
        tile_mask = valid[:, None] & dim_mask[None, :]

        keys = tl.load(key_cache_ptr + offsets, mask=tile_mask, other=0.0).to(tl.float32)
        scores = tl.sum(query[None, :] * keys, axis=1)
        scores = tl.where(valid, scores, float("-inf"))
        # Every tile holds at least one valid position, so new_max is finite.
        new_max = tl.maximum(running_max, tl.max(scores, axis=0))
        rescale = tl.exp2(running_max - new_max)
        probabilities = tl.exp2(scores - new_max)
        values = tl.load(value_cache_ptr + offsets, mask=tile_mask, other=0.0).to(tl.float32)
        running_sum = running_sum * rescale + tl.sum(probabilities, axis=0)
        accumulator = accumulator * rescale + tl.sum(probabilities[:, None] * values, axis=0)
        running_max = new_max

    scratch_row = (batch * num_heads + head) * num_splits + split
    tl.store(partial_out_ptr + scratch_row * head_dim + dims, accumulator / running_sum, mask=dim_mask)
    tl.store(partial_lse_ptr + scratch_row, running_max + tl.log2(running_sum))


@triton.jit
def _decode_merge_kernel(
    partial_out_ptr,
    partial_lse_ptr,
    context_lens_ptr,
    output_ptr,
    stride_output_batch,
    stride_output_head,
    num_heads,
    num_splits,
    head_dim,
    SPLIT_SIZE: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    batch = tl.program_id(0)
    head = tl.program_id(1)
    context_len = tl.load(context_lens_ptr + batch)
    # Only the splits that hold context were written; a padding row (context 0) has none.
    used_splits = (context_len + SPLIT_SIZE - 1) // SPLIT_SIZE
    first_row = (batch * num_heads + head) * num_splits
    dims = tl.arange(0, BLOCK_D)
    dim_mask = dims < head_dim

    max_lse = float("-inf")
    for split in range(0, used_splits):
        max_lse = tl.maximum(max_lse, tl.load(partial_lse_ptr + first_row + split))

    # A sequential loop keeps the summation order fixed (a tree reduction's order would
    # depend on the padded split count, i.e. on the batch's longest table).
    total_weight = 0.0
    accumulator = tl.zeros([BLOCK_D], dtype=tl.float32)
    for split in range(0, used_splits):
        weight = tl.exp2(tl.load(partial_lse_ptr + first_row + split) - max_lse)
        partial = tl.load(partial_out_ptr + (first_row + split) * head_dim + dims, mask=dim_mask, other=0.0)
        total_weight += weight
        accumulator += weight * partial

    output = accumulator / tl.where(total_weight > 0.0, total_weight, 1.0)
    output_offsets = batch * stride_output_batch + head * stride_output_head + dims
    tl.store(output_ptr + output_offsets, output.to(output_ptr.dtype.element_ty), mask=dim_mask)


def plan_paged_decode_attention(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    *,
    scale: float,
    split_size: int = 256,
) -> tuple[torch.Tensor, list[Launch]]:
    """Check the arguments, allocate output and scratch, return the output and the two launches."""
    check_paged_attention(
        query, "[B, H, D]", key_cache, value_cache, block_tables, context_lens=context_lens
    )
    batch, num_heads, head_dim = query.shape
    block_size = key_cache.shape[1]
    if split_size <= 0 or split_size % block_size:
        raise KernelError(f"split_size ({split_size}) must be a positive multiple of the block size ({block_size})")

    output = torch.empty_like(query)
    # Fixed by shapes, not by context_lens values, so the grid never needs a host sync.
    num_splits = max(1, triton.cdiv(block_tables.shape[1] * block_size, split_size))
    if batch == 0:
        return output, []
    partial_out = torch.empty((batch, num_heads, num_splits, head_dim), dtype=torch.float32, device=query.device)
    partial_lse = torch.empty((batch, num_heads, num_splits), dtype=torch.float32, device=query.device)
    block_d = triton.next_power_of_2(head_dim)

    split = Launch(
        _decode_split_kernel,
        (batch, num_heads, num_splits),
        (
            query, key_cache, value_cache, block_tables, context_lens, partial_out, partial_lse,
            scale * LOG2_E,
            query.stride(0), query.stride(1),
            key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
            block_tables.stride(0),
            num_heads, num_splits, head_dim,
        ),
        dict(
            BLOCK_SIZE=block_size,
            SPLIT_SIZE=split_size,
            KV_TILE=kv_tile(head_dim, split_size),
            BLOCK_D=block_d,
        ),
    )
    merge = Launch(
        _decode_merge_kernel,
        (batch, num_heads),
        (
            partial_out, partial_lse, context_lens, output,
            output.stride(0), output.stride(1),
            num_heads, num_splits, head_dim,
        ),
        dict(SPLIT_SIZE=split_size, BLOCK_D=block_d),
    )
    return output, [split, merge]


def paged_decode_attention(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    *,
    scale: float,
    split_size: int = 256,
) -> torch.Tensor:
    """Attention of each sequence's newest query over its cached context. Returns [B, H, D]."""
    output, launches = plan_paged_decode_attention(
        query, key_cache, value_cache, block_tables, context_lens, scale=scale, split_size=split_size
    )
    run_launches(launches)
    return output


def paged_decode_attention_reference(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    *,
    scale: float,
) -> torch.Tensor:
    """Plain-PyTorch equivalent: gather each sequence's K/V through its block table, fp32 softmax."""
    batch, num_heads, head_dim = query.shape
    block_size = key_cache.shape[1]
    output = torch.zeros_like(query)
    for b in range(batch):
        context_len = int(context_lens[b])
        if context_len == 0:
            continue
        blocks = block_tables[b, : math.ceil(context_len / block_size)].long()
        keys = key_cache[blocks].reshape(-1, num_heads, head_dim)[:context_len].float()
        values = value_cache[blocks].reshape(-1, num_heads, head_dim)[:context_len].float()
        scores = torch.einsum("hd,thd->ht", query[b].float(), keys) * scale
        output[b] = torch.einsum("ht,thd->hd", scores.softmax(dim=-1), values).to(query.dtype)
    return output
