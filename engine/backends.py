"""The ops a forward pass needs, in two interchangeable sets with the same cache semantics.

- `TritonOps`: the kernels of `kernels/` (paged attention through block tables, fused
  linear epilogues, LayerNorm). Batch invariant: a row's result is bit-identical whatever
  the batch size or the other rows. Default on CUDA; on the CPU only under
  `TRITON_INTERPRET=1` (tests).
- `TorchOps`: plain torch ops, default on the CPU. Same pool, same slots; attention reads
  a stream's blocks as one contiguous view (see `kv_cache.py`) and masks by position.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
import torch.nn.functional as F

from .kv_cache import PagedKVCache


@dataclass
class ChunkMetadata:
    """Where a chunk of queries sits: the nano-vllm "context" for one forward call.

    slots:        [B * C] cache slot of every query row, -1 for padding
    prefix_lens:  [B] int32 tokens already cached before this chunk
    query_lens:   [B] int32 real queries in this chunk (0 marks a padding stream)
    """

    slots: torch.Tensor
    prefix_lens: torch.Tensor
    query_lens: torch.Tensor


class Ops(Protocol):
    """What `ModelRunner.forward` calls; both op sets share the cache's semantics."""

    name: ClassVar[str]
    # True when a row's results are bit-identical for any batch size and any other rows;
    # callers that promise batch independence run a non-invariant set at a fixed shape.
    batch_invariant: ClassVar[bool]

    def layer_norm(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor: ...

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
               activation: str | None = None, residual: torch.Tensor | None = None) -> torch.Tensor: ...

    def write_kv(self, layer: int, keys: torch.Tensor, values: torch.Tensor, meta: ChunkMetadata) -> None: ...

    def attention(self, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  meta: ChunkMetadata, fresh: bool, kv_len: int | None = None) -> torch.Tensor: ...


def packs_weights(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether `TorchOps` keeps bfloat16 weights in oneDNN's packed layout: on the CPU,
    `F.linear` on bfloat16 reorders the weight for oneDNN on every call, and the packed
    product is the same bits (tested) for 1.15x (2,452 rows) to 2.2x (1 row) less time."""
    mkldnn = torch.ops.mkldnn
    return (device.type == "cpu" and dtype == torch.bfloat16 and torch.backends.mkldnn.is_available()
            and hasattr(mkldnn, "_reorder_linear_weight") and hasattr(mkldnn, "_linear_pointwise"))


class TorchOps:
    name = "torch"
    batch_invariant = False  # library GEMMs choose their algorithm by shape

    def __init__(self, cache: PagedKVCache, scale: float) -> None:
        self.cache = cache
        self.scale = scale
        self._packed: dict[int, torch.Tensor] = {}  # id(weight) -> its oneDNN packing

    def pack_weights(self, weights: list[torch.Tensor]) -> None:
        """Pack these [out, in] weights once (see `packs_weights`); `linear` then uses them.
        Eager mode only: the packed tensors are opaque to torch.compile."""
        self._packed = {id(w): torch.ops.mkldnn._reorder_linear_weight(w.detach(), 1) for w in weights}

    @staticmethod
    def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
        return F.layer_norm(x, weight.shape, weight, bias, eps)

    def linear(
        self,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        *,
        activation: str | None = None,
        residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        packed = self._packed.get(id(weight))
        if packed is None:
            y = F.linear(x, weight, bias)
        else:  # GELU stays a separate op: oneDNN's fused GELU rounds differently
            y = torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
        if activation == "gelu_tanh":
            y = F.gelu(y, approximate="tanh")
        return y if residual is None else y + residual

    def write_kv(self, layer: int, keys: torch.Tensor, values: torch.Tensor, meta: ChunkMetadata) -> None:
        # Padding rows write to the scratch slot rather than being skipped: a static shape.
        slots = torch.where(meta.slots < 0, self.cache.shape.scratch_slot, meta.slots)
        index = (slots // self.cache.shape.block_size, slots % self.cache.shape.block_size)
        cache_dtype = self.cache.keys[layer].dtype
        self.cache.keys[layer].index_put_(index, keys.to(cache_dtype))
        self.cache.values[layer].index_put_(index, values.to(cache_dtype))

    def attention(
        self,
        layer: int,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        meta: ChunkMetadata,
        fresh: bool,
        kv_len: int | None = None,
    ) -> torch.Tensor:
        """query, key, value [B, C, H, D] (the chunk's own) -> [B, C, H, D]; query i attends
        to positions <= prefix + i. `kv_len`: a host-side bound on every stream's filled
        length, so only that much of the cache is read (None: all of it)."""
        dtype = query.dtype
        query, key, value = (t.to(self.cache.keys[layer].dtype) for t in (query, key, value))
        if fresh:  # nothing cached before the chunk: causal attention within it, no mask
            out = F.scaled_dot_product_attention(
                query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), is_causal=True, scale=self.scale
            )
            return out.transpose(1, 2).to(dtype)
        keys, values = self.cache.contiguous_view(layer)
        rows, chunk = query.shape[:2]
        keys, values = keys[:rows, :kv_len], values[:rows, :kv_len]
        key_positions = torch.arange(keys.shape[1], device=query.device)
        query_positions = meta.prefix_lens[:, None] + torch.arange(chunk, device=query.device)
        visible = key_positions[None, None, :] <= query_positions[:, :, None]
        out = F.scaled_dot_product_attention(
            query.transpose(1, 2),
            keys.transpose(1, 2),
            values.transpose(1, 2),
            attn_mask=visible[:, None],
            scale=self.scale,
        )
        return out.transpose(1, 2).to(dtype)


class TritonOps:
    name = "triton"
    batch_invariant = True

    def __init__(self, cache: PagedKVCache, scale: float) -> None:
        import kernels  # imported here so that CPU-only torch users never need Triton

        self.kernels = kernels
        self.cache = cache
        self.scale = scale
        self.layer_norm = kernels.layer_norm
        self.linear = kernels.fused_linear

    def write_kv(self, layer: int, keys: torch.Tensor, values: torch.Tensor, meta: ChunkMetadata) -> None:
        self.kernels.write_kv_cache(
            keys.contiguous(), values.contiguous(), self.cache.keys[layer], self.cache.values[layer], meta.slots
        )

    def attention(
        self,
        layer: int,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        meta: ChunkMetadata,
        fresh: bool,
        kv_len: int | None = None,
    ) -> torch.Tensor:
        """Reads keys and values from the paged cache, where `write_kv` has put the chunk's
        own: the kernels bound each query's keys by `prefix_lens`, so neither `fresh` nor
        `kv_len` needs a path."""
        rows, chunk = query.shape[:2]
        block_tables = self.cache.block_tables[:rows]
        key_cache, value_cache = self.cache.keys[layer], self.cache.values[layer]
        if chunk == 1:
            context_lens = torch.where(meta.query_lens > 0, meta.prefix_lens + 1, 0).to(torch.int32)
            out = self.kernels.paged_decode_attention(
                query[:, 0].contiguous(), key_cache, value_cache, block_tables, context_lens, scale=self.scale
            )
            return out[:, None]
        return self.kernels.paged_prefill_attention(
            query.contiguous(), key_cache, value_cache, block_tables, meta.prefix_lens, meta.query_lens, scale=self.scale
        )


BACKENDS: dict[str, type[Ops]] = {"torch": TorchOps, "triton": TritonOps}
