"""The paged KV cache: one block pool per layer, block tables, slot mappings.

Pool layout (the kernels' layout): one `[num_blocks + 1, block_size, heads, head_dim]`
tensor per layer for keys and one for values. Separate tensors per layer, written in place
with `index_put_`, let torch.compile update the cache in place; writes through a view of
one big pool made it copy the whole pool every step. Token position `p` of stream `r` lives at slot
`block_tables[r, p // block_size] * block_size + p % block_size`. The extra last block is
scratch: the torch backend sends padding rows' writes there (the Triton kernel skips
negative slots instead), so no real block is ever touched by a padding row.

Every stream of `max_batch` owns `blocks_per_stream` blocks for the life of the engine,
enough for a whole window: positions are absolute, so a window never outgrows
`n_positions` and no allocation happens while decoding. Streams own *consecutive* blocks
in order, which lets the torch backend read a stream's cache as one contiguous view; the
Triton kernels only ever go through the block tables (and are tested with shuffled ones).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CacheShape:
    num_layers: int
    max_batch: int
    max_positions: int
    heads: int
    head_dim: int
    block_size: int = 16

    @property
    def blocks_per_stream(self) -> int:
        return -(-self.max_positions // self.block_size)

    @property
    def num_blocks(self) -> int:
        return self.max_batch * self.blocks_per_stream

    @property
    def scratch_slot(self) -> int:
        return self.num_blocks * self.block_size


class PagedKVCache:
    def __init__(self, shape: CacheShape, *, dtype: torch.dtype, device: torch.device) -> None:
        self.shape = shape
        pool = (shape.num_blocks + 1, shape.block_size, shape.heads, shape.head_dim)
        self.keys = [torch.zeros(pool, dtype=dtype, device=device) for _ in range(shape.num_layers)]
        self.values = [torch.zeros(pool, dtype=dtype, device=device) for _ in range(shape.num_layers)]
        blocks = torch.arange(shape.num_blocks, dtype=torch.int32, device=device)
        self.block_tables = blocks.view(shape.max_batch, shape.blocks_per_stream)

    def slots(self, positions: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Slot of each `positions[r, i]` of stream r, or -1 where `valid` is False."""
        size = self.shape.block_size
        blocks = torch.gather(self.block_tables, 1, (positions // size).clamp_(max=self.shape.blocks_per_stream - 1))
        return torch.where(valid, blocks * size + positions % size, -1)

    def contiguous_view(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of one layer as `[max_batch, blocks_per_stream * block_size, H, D]`."""
        s = self.shape
        view = (s.max_batch, s.blocks_per_stream * s.block_size, s.heads, s.head_dim)
        return self.keys[layer][: s.num_blocks].view(view), self.values[layer][: s.num_blocks].view(view)
