"""One forward pass of the world model over a chunk of new tokens, against the paged cache.

This is the hot path, kept readable in one screen (gpt-fast style). A chunk is `[B, C]`
tokens, stream r's starting at absolute position `start[r]`; only the first
`query_lens[r]` tokens of a row are real. C == 1 is a decode step. The same function
serves prefill chunks and decode steps, for imagine and for coding.
"""
from __future__ import annotations

from typing import Callable

import torch

from models import GPT

from .backends import ChunkMetadata, Ops
from .kv_cache import PagedKVCache

# `ModelRunner.forward` (or `ExactRunner.forward`), compiled or captured: tokens [B, C],
# start [B], query_lens [B], fresh=False, kv_len=None -> float32 logits [B, vocab].
ChunkFn = Callable[..., torch.Tensor]


class ModelRunner:
    def __init__(self, model: GPT, cache: PagedKVCache, ops: Ops) -> None:
        self.model = model
        self.cache = cache
        self.ops = ops
        config = model.config
        self.heads, self.head_dim, self.eps = config.n_head, config.head_dim, config.layer_norm_epsilon

    @torch.no_grad()
    def forward(
        self,
        tokens: torch.Tensor,
        start: torch.Tensor,
        query_lens: torch.Tensor,
        fresh: bool = False,
        kv_len: int | None = None,
    ) -> torch.Tensor:
        """tokens [B, C] int64, start [B] int32, query_lens [B] int32 -> float32 logits
        [B, vocab] of each row's last real token (row 0's first token for padding rows).
        `fresh`: every stream starts at position 0, so the chunk attends only to itself.
        `kv_len`: no stream's keys reach past it (a host int from a few buckets: each value
        is one compiled graph); None reads the whole cache."""
        rows, chunk = tokens.shape
        offsets = torch.arange(chunk, device=tokens.device)
        positions = start[:, None].long() + offsets
        valid = offsets[None, :] < query_lens[:, None]
        meta = ChunkMetadata(
            slots=self.cache.slots(positions, valid).view(-1), prefix_lens=start, query_lens=query_lens
        )
        ops, model = self.ops, self.model.transformer
        # Padding positions may run past the table of positions; any valid index will do.
        positions = positions.clamp_(max=model.wpe.num_embeddings - 1)
        x = (model.wte(tokens) + model.wpe(positions)).view(rows * chunk, -1)
        for layer, block in enumerate(model.h):
            h = ops.layer_norm(x, block.ln_1.weight, block.ln_1.bias, self.eps)
            qkv = ops.linear(h, block.attn.c_attn.weight, block.attn.c_attn.bias)
            q, k, v = (t.reshape(rows * chunk, self.heads, self.head_dim) for t in qkv.chunk(3, dim=-1))
            ops.write_kv(layer, k, v, meta)  # before attention: a query sees its own key
            shape = (rows, chunk, self.heads, self.head_dim)
            y = ops.attention(layer, q.view(shape), k.view(shape), v.view(shape), meta, fresh, kv_len)
            x = ops.linear(y.reshape(rows * chunk, -1), block.attn.c_proj.weight, block.attn.c_proj.bias, residual=x)
            h = ops.layer_norm(x, block.ln_2.weight, block.ln_2.bias, self.eps)
            h = ops.linear(h, block.mlp.c_fc.weight, block.mlp.c_fc.bias, activation="gelu_tanh")
            x = ops.linear(h, block.mlp.c_proj.weight, block.mlp.c_proj.bias, residual=x)
        last = (query_lens.long() - 1).clamp_(min=0)
        x = x.view(rows, chunk, -1)[torch.arange(rows, device=x.device), last]
        x = ops.layer_norm(x, model.ln_f.weight, model.ln_f.bias, self.eps)
        return ops.linear(x, self.model.lm_head.weight).float()
