"""Builder of shuffled paged KV caches for the kernel tests (and any test of the engine).

A real engine hands out cache blocks from a free list, so a sequence's blocks are
scattered and in no particular order. `build_paged_kv_cache` reproduces that: blocks come
from a shuffled pool, slots no sequence owns hold NaN (so any read past a context shows
up as NaN in the result), and block-table entries past a sequence's length point at
random blocks (so any read through them gives wrong numbers).
"""
from dataclasses import dataclass

import torch

from kernels.errors import KernelError


@dataclass
class ShuffledKVCache:
    """A test cache of one layer (not the engine's `engine.kv_cache.PagedKVCache` pool)."""

    key_cache: torch.Tensor  # [num_blocks, block_size, H, D]
    value_cache: torch.Tensor  # [num_blocks, block_size, H, D]
    block_tables: torch.Tensor  # [B, max_blocks] int32


def build_paged_kv_cache(
    keys: list[torch.Tensor],
    values: list[torch.Tensor],
    *,
    block_size: int,
    max_blocks: int,
    spare_blocks: int = 2,
    generator: torch.Generator | None = None,
) -> ShuffledKVCache:
    """Scatter per-sequence keys/values ([L_b, H, D] each) into a shuffled paged cache.

    The cache has room for every sequence plus `spare_blocks` blocks nobody owns;
    `max_blocks` is the block-table width and must cover the longest sequence.
    """
    if len(keys) != len(values):
        raise KernelError(f"got {len(keys)} key tensors but {len(values)} value tensors")
    needed = [-(-key.shape[0] // block_size) for key in keys]
    if max(needed, default=0) > max_blocks:
        raise KernelError(f"max_blocks={max_blocks} cannot hold a sequence needing {max(needed)} blocks")
    template = keys[0]
    _, num_heads, head_dim = template.shape
    num_blocks = sum(needed) + spare_blocks
    cache_shape = (num_blocks, block_size, num_heads, head_dim)
    key_cache = torch.full(cache_shape, float("nan"), dtype=template.dtype, device=template.device)
    value_cache = torch.full(cache_shape, float("nan"), dtype=template.dtype, device=template.device)

    pool = torch.randperm(num_blocks, generator=generator).tolist()
    garbage = torch.randint(0, num_blocks, (len(keys), max_blocks), generator=generator, dtype=torch.int32)
    block_tables = garbage.to(template.device)
    for sequence, (key, value) in enumerate(zip(keys, values)):
        owned, pool = pool[: needed[sequence]], pool[needed[sequence] :]
        block_tables[sequence, : len(owned)] = torch.tensor(owned, dtype=torch.int32)
        for position in range(key.shape[0]):
            block, offset = owned[position // block_size], position % block_size
            key_cache[block, offset] = key[position]
            value_cache[block, offset] = value[position]
    return ShuffledKVCache(key_cache, value_cache, block_tables.contiguous())
