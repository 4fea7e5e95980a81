"""The world model's forward pass in exact numerics (`exact_ops`), with its own KV cache.

Every operation is row-local (one token's row, or one query's attention row) and exact or
correctly rounded, so a token's logits depend only on its own sequence: not on the batch,
the chunking, prefill versus decode, the thread count, the ISA or the device. Keys and
values are cached as they are used, int8 per (token, head) with a float32 scale, so a
decode step reads exactly what a prefill computed. Padding keys (beyond a query's causal
range) get weight exactly 0, so the cache length a call reads changes nothing.

Eager only. Inductor's CPU C++ (fp-contract off by default) reproduced eager bits in a test
(EXACT_COMPILE=1), but its flags are environment-controlled and Triton on CUDA contracts
FMAs and approximates division, so an exact-mode engine should refuse `compile`.
"""
from __future__ import annotations

from typing import Callable

import torch

from models import GPT

from . import exact_ops as ops
from .errors import EngineError
from .quantize import QuantizedGPT, quantize_model, quantized_fingerprint

# Rows of a `score` call go in chunks of about this many tokens (memory: gpt2m's MLP
# activations are 16 KiB per token); every op is row-local, so chunking changes no bit.
SCORE_CHUNK_TOKENS = 2**15
Pair = tuple[torch.Tensor, torch.Tensor]  # int8 values and their float32 scales


class ExactRunner:
    """`forward` has ModelRunner.forward's contract; `score` is teacher forcing."""

    def __init__(
        self, model: GPT, *, max_batch: int, device: torch.device | str = "cpu", matmul_path: str | None = None
    ) -> None:
        if max_batch < 1:
            raise EngineError(f"max_batch must be positive, got {max_batch}")
        self.device = torch.device(device)
        self.config = config = model.config
        self.weights: QuantizedGPT = quantize_model(model, self.device)
        self.matmul_path = matmul_path
        self.gelu_table = ops.gelu_table().to(self.device)
        self.exp_table = ops.exp_table().to(self.device)
        self.pv_max = ops.prob_max(config.n_positions)
        tables = self.gelu_table.cpu().numpy().tobytes() + self.exp_table.cpu().numpy().tobytes()
        tables += repr(self.pv_max).encode()
        self.fingerprint: str = quantized_fingerprint(self.weights, tables)
        self.max_batch, self.heads, self.head_dim = max_batch, config.n_head, config.head_dim
        shape = (config.n_layer, max_batch, config.n_positions, config.n_head, config.head_dim)
        self.k = torch.zeros(shape, dtype=torch.int8, device=self.device)
        self.v = torch.zeros(shape, dtype=torch.int8, device=self.device)
        self.k_scale = torch.zeros(shape[:-1], dtype=torch.float32, device=self.device)
        self.v_scale = torch.zeros(shape[:-1], dtype=torch.float32, device=self.device)

    def _blocks(self, x: torch.Tensor, rows: int, chunk: int, attend: Callable[..., torch.Tensor]) -> torch.Tensor:
        """x float32 [rows * chunk, n_embd] through every block; `attend(layer, q, k, v)`
        gets quantized (int8 [rows, heads, chunk, d], scale [rows, heads, chunk]) pairs."""
        w, path = self.weights, self.matmul_path
        for layer, block in enumerate(w.blocks):
            h = ops.layer_norm(x, *block.ln_1, w.eps)
            qkv = ops.linear(h, block.attn, path).view(rows, chunk, 3, self.heads, self.head_dim)
            ints, scales = ops.quantize_rows(qkv)  # per (token, q/k/v, head): one call for all
            q, k, v = ((ints[:, :, i].transpose(1, 2), scales[:, :, i].transpose(1, 2)) for i in range(3))
            y = attend(layer, q, k, v).transpose(1, 2).reshape(rows * chunk, -1)
            x = x.add_(ops.linear(y, block.proj, path))  # x is this pass's own tensor
            h = ops.layer_norm(x, *block.ln_2, w.eps)
            h = ops.gelu(ops.linear(h, block.fc, path), self.gelu_table)
            x = x.add_(ops.linear(h, block.mlp_proj, path))
        return x

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        x = ops.layer_norm(x, *self.weights.ln_f, self.weights.eps)
        return ops.linear(x, self.weights.lm_head, self.matmul_path)

    def _check(self, tokens: torch.Tensor) -> None:
        if tokens.dim() != 2 or tokens.dtype != torch.int64:
            raise EngineError(f"tokens must be int64 [batch, length], got {tokens.dtype} {tuple(tokens.shape)}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.config.vocab_size):
            raise EngineError(f"token ids must be in 0..{self.config.vocab_size - 1}")

    @torch.no_grad()
    def forward(
        self, tokens: torch.Tensor, start: torch.Tensor, query_lens: torch.Tensor, fresh: bool = False
    ) -> torch.Tensor:
        """tokens [B, C] int64, start [B] int32 (positions cached per row), query_lens [B] int32
        (0 = padding row) -> float32 logits [B, vocab] of each row's last real token. Writes
        the real tokens' K/V to rows 0..B-1 of the cache; `fresh` means start == 0."""
        self._check(tokens)
        rows, chunk = tokens.shape
        if rows > self.max_batch:
            raise EngineError(f"batch of {rows} rows exceeds max_batch={self.max_batch}")
        start, query_lens = start.long(), query_lens.long()
        ends = start + query_lens
        if bool((start < 0).any()) or bool((query_lens < 0).any()) or bool((query_lens > chunk).any()):
            raise EngineError("start and query_lens must be >= 0 and query_lens <= chunk length")
        if fresh and bool(start.any()):
            raise EngineError("fresh=True needs start == 0 for every row")
        if bool((ends > self.config.n_positions).any()):
            raise EngineError(f"positions run past n_positions={self.config.n_positions}")
        offsets = torch.arange(chunk, device=tokens.device)
        positions = start[:, None] + offsets
        valid = offsets[None, :] < query_lens[:, None]
        keys = max(int(ends.max()), 1) if rows else 1
        key_pos = torch.arange(keys, device=tokens.device)
        # Query (r, i) sees keys 0..start[r] + i; key 0 always, so no row is empty.
        allowed = (key_pos[None, None, :] <= positions[:, :, None]).unsqueeze(1)
        row_ids, pos_ids = torch.nonzero(valid, as_tuple=True)
        write_pos = positions[row_ids, pos_ids]

        def attend(layer: int, q: Pair, k: Pair, v: Pair) -> torch.Tensor:
            for cache, scales, (values, scale) in ((self.k, self.k_scale, k), (self.v, self.v_scale, v)):
                cache[layer][row_ids, write_pos] = values.transpose(1, 2)[row_ids, pos_ids]
                scales[layer][row_ids, write_pos] = scale.transpose(1, 2)[row_ids, pos_ids]
            view = lambda t: t[layer, :rows, :keys].transpose(1, 2)  # noqa: E731
            return ops.attention(
                *q, view(self.k), view(self.k_scale), view(self.v), view(self.v_scale),
                allowed, self.exp_table, self.pv_max,
            )

        x = self._embed(tokens, positions.clamp(max=self.config.n_positions - 1))
        x = self._blocks(x.view(rows * chunk, -1), rows, chunk, attend)
        last = (query_lens - 1).clamp(min=0)
        return self._logits(x.view(rows, chunk, -1)[torch.arange(rows, device=x.device), last])

    def _embed(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.weights.wte[tokens] + self.weights.wpe[positions]

    @torch.no_grad()
    def score(self, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: tokens [B, L] int64 from position 0 -> float32 logits [B, L, vocab],
        bit-identical to a fresh `forward` prefill of tokens[:, :t+1] plus steps, at every t."""
        self._check(tokens)
        rows, length = tokens.shape
        if length > self.config.n_positions or length < 1:
            raise EngineError(f"score needs 1..{self.config.n_positions} tokens per row, got {length}")
        per_chunk = max(1, SCORE_CHUNK_TOKENS // length)
        return torch.cat([self._score(tokens[i : i + per_chunk]) for i in range(0, rows, per_chunk)])

    def _score(self, tokens: torch.Tensor) -> torch.Tensor:
        rows, length = tokens.shape
        positions = torch.arange(length, device=tokens.device)
        causal = positions[None, :] <= positions[:, None]

        def attend(layer: int, q: Pair, k: Pair, v: Pair) -> torch.Tensor:
            return ops.attention(*q, *k, *v, causal, self.exp_table, self.pv_max)

        x = self._embed(tokens, positions.expand(rows, length)).view(rows * length, -1)
        x = self._blocks(x, rows, length, attend)
        return self._logits(x).view(rows, length, -1)
