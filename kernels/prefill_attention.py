"""Paged causal attention for a chunk of new queries per sequence (chunked prefill).

Layouts:
    query, output:           [B, C, H, D]   C padded query slots per sequence; only the first
                             query_lens[b] are real, the rest produce zeros
    key_cache, value_cache:  [num_blocks, block_size, H, D]; the chunk's own K/V is already there
    block_tables:            [B, max_blocks] int32
    prefix_lens:             [B] int32, tokens cached before the chunk
    query_lens:              [B] int32, real queries in the chunk (<= C)

Query i of sequence b sits at absolute position prefix_lens[b] + i and attends to cache
positions 0 .. prefix_lens[b] + i. One program handles a tile of BLOCK_Q queries of one
(sequence, head) and walks the cache in BLOCK_KV-token tiles with an online softmax, so
no [C, context] score matrix is ever materialised. The grid depends only on shapes.
"""
import math

import torch
import triton
import triton.language as tl

from kernels._checks import LOG2_E, check_paged_attention, dot_precision
from kernels._launch import Launch, run_launches

# (BLOCK_Q, BLOCK_KV) per dtype; None: every other dtype. float32 tiles run on the FMA
# units (exact "ieee" dots) and hold fp32 operands: at 64 x 64 and head_dim 64 they took
# 255 registers and spilled 1.3 KB per thread on sm_90 and sm_86 (ptxas); 16 x 64 uses 94
# and 80 registers, no spills (32 x 32 still spilled 4 bytes on sm_90). 16-bit tiles keep
# 64 x 64 (136 / 186 registers, no spills). The tiles depend on the dtype alone, never on
# the batch, so a row's result stays the same in any batch.
TILES: dict[torch.dtype | None, tuple[int, int]] = {torch.float32: (16, 64), None: (64, 64)}


@triton.jit
def _prefill_attention_kernel(
    query_ptr,
    key_cache_ptr,
    value_cache_ptr,
    block_tables_ptr,
    prefix_lens_ptr,
    query_lens_ptr,
    output_ptr,
    scale_log2,  # softmax scale * log2(e), so exp2 can replace exp
    stride_query_batch,  # shared by output, which has the query's shape and layout
    stride_query_token,
    stride_query_head,
    stride_cache_block,
    stride_cache_offset,
    stride_cache_head,
    stride_table_batch,
    chunk_len,
    head_dim,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_KV: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    batch = tl.program_id(0)
    head = tl.program_id(1)
    query_tile = tl.program_id(2)
    prefix_len = tl.load(prefix_lens_ptr + batch)
    query_len = tl.load(query_lens_ptr + batch)

    query_rows = query_tile * BLOCK_Q + tl.arange(0, BLOCK_Q)
    row_in_chunk = query_rows < chunk_len
    row_real = row_in_chunk & (query_rows < query_len)
    query_positions = prefix_len + query_rows
    dims = tl.arange(0, BLOCK_D)
    dim_mask = dims < head_dim
    row_offsets = batch * stride_query_batch + query_rows[:, None] * stride_query_token + head * stride_query_head
    query = tl.load(query_ptr + row_offsets + dims[None, :], mask=row_real[:, None] & dim_mask[None, :], other=0.0)

    # Causality bounds the walk at the last real query of this tile; tiles with no real
    # query skip it entirely.
    first_row = query_tile * BLOCK_Q
    kv_end = tl.where(first_row < query_len, prefix_len + tl.minimum(first_row + BLOCK_Q, query_len), 0)

    running_max = tl.zeros([BLOCK_Q], dtype=tl.float32) - float("inf")
    running_sum = tl.zeros([BLOCK_Q], dtype=tl.float32)
    accumulator = tl.zeros([BLOCK_Q, BLOCK_D], dtype=tl.float32)
    for kv_start in range(0, kv_end, BLOCK_KV):
        positions = kv_start + tl.arange(0, BLOCK_KV)
        kv_valid = positions < kv_end
        block_ids = tl.load(
            block_tables_ptr + batch * stride_table_batch + positions // BLOCK_SIZE, mask=kv_valid, other=0
        ).to(tl.int64)
        cache_rows = block_ids * stride_cache_block + (positions % BLOCK_SIZE) * stride_cache_offset
        cache_rows += head * stride_cache_head

        # Keys are loaded transposed, [BLOCK_D, BLOCK_KV], to feed the dot directly.
        keys_t = tl.load(
            key_cache_ptr + cache_rows[None, :] + dims[:, None],
            mask=dim_mask[:, None] & kv_valid[None, :],
            other=0.0,
        )
        scores = tl.dot(query, keys_t, input_precision=DOT_PRECISION) * scale_log2
        attend = (positions[None, :] <= query_positions[:, None]) & row_real[:, None] & kv_valid[None, :]
        scores = tl.where(attend, scores, float("-inf"))

        new_max = tl.maximum(running_max, tl.max(scores, axis=1))
        # Rows with nothing to attend to yet (padding rows) keep a -inf max; shifting by 0
        # instead avoids -inf - -inf = NaN and still gives them zero probabilities.
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        rescale = tl.exp2(running_max - shift)
        probabilities = tl.exp2(scores - shift[:, None])
        values = tl.load(
            value_cache_ptr + cache_rows[:, None] + dims[None, :],
            mask=kv_valid[:, None] & dim_mask[None, :],
            other=0.0,
        )
        running_sum = running_sum * rescale + tl.sum(probabilities, axis=1)
        accumulator = accumulator * rescale[:, None] + tl.dot(
            probabilities.to(values.dtype), values, input_precision=DOT_PRECISION
        )
        running_max = new_max

    output = accumulator / tl.where(running_sum > 0.0, running_sum, 1.0)[:, None]
    tl.store(
        output_ptr + row_offsets + dims[None, :],
        output.to(output_ptr.dtype.element_ty),
        mask=row_in_chunk[:, None] & dim_mask[None, :],
    )


def prefill_tiles(dtype: torch.dtype) -> tuple[int, int]:
    """(BLOCK_Q, BLOCK_KV) for a dtype; chosen from the dtype alone, never from the batch."""
    return TILES.get(dtype, TILES[None])


def plan_paged_prefill_attention(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    prefix_lens: torch.Tensor,
    query_lens: torch.Tensor,
    *,
    scale: float,
) -> tuple[torch.Tensor, list[Launch]]:
    """Check the arguments, allocate the output and return it with the launch that fills it."""
    check_paged_attention(
        query, "[B, C, H, D]", key_cache, value_cache, block_tables, prefix_lens=prefix_lens, query_lens=query_lens
    )
    batch, chunk_len, num_heads, head_dim = query.shape

    output = torch.empty_like(query)
    if query.numel() == 0:
        return output, []
    block_q, block_kv = prefill_tiles(query.dtype)
    args = (
        query, key_cache, value_cache, block_tables, prefix_lens, query_lens, output,
        scale * LOG2_E,
        query.stride(0), query.stride(1), query.stride(2),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
        block_tables.stride(0),
        chunk_len, head_dim,
    )
    constexprs = dict(
        BLOCK_SIZE=key_cache.shape[1],
        BLOCK_Q=block_q,
        BLOCK_KV=block_kv,
        # tl.dot needs every tile side >= 16.
        BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
        DOT_PRECISION=dot_precision(query.dtype),
    )
    grid = (batch, num_heads, triton.cdiv(chunk_len, block_q))
    return output, [Launch(_prefill_attention_kernel, grid, args, constexprs)]


def paged_prefill_attention(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    prefix_lens: torch.Tensor,
    query_lens: torch.Tensor,
    *,
    scale: float,
) -> torch.Tensor:
    """Causal attention of a chunk of queries over the paged cache. Returns [B, C, H, D]."""
    output, launches = plan_paged_prefill_attention(
        query, key_cache, value_cache, block_tables, prefix_lens, query_lens, scale=scale
    )
    run_launches(launches)
    return output


def paged_prefill_attention_reference(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    prefix_lens: torch.Tensor,
    query_lens: torch.Tensor,
    *,
    scale: float,
) -> torch.Tensor:
    """Plain-PyTorch equivalent: gather K/V through the block table, causal fp32 softmax."""
    batch, _, num_heads, head_dim = query.shape
    block_size = key_cache.shape[1]
    output = torch.zeros_like(query)
    for b in range(batch):
        prefix_len, query_len = int(prefix_lens[b]), int(query_lens[b])
        if query_len == 0:
            continue
        context_len = prefix_len + query_len
        blocks = block_tables[b, : math.ceil(context_len / block_size)].long()
        keys = key_cache[blocks].reshape(-1, num_heads, head_dim)[:context_len].float()
        values = value_cache[blocks].reshape(-1, num_heads, head_dim)[:context_len].float()
        queries = query[b, :query_len].float()
        scores = torch.einsum("qhd,khd->hqk", queries, keys) * scale
        query_positions = prefix_len + torch.arange(query_len, device=query.device)
        future = torch.arange(context_len, device=query.device)[None, :] > query_positions[:, None]
        scores = scores.masked_fill(future, float("-inf"))
        output[b, :query_len] = torch.einsum("hqk,khd->qhd", scores.softmax(dim=-1), values).to(query.dtype)
    return output
