"""The world model's forward pass in exact numerics (`exact_ops`, `exact_attention`), with its
own KV cache; teacher forcing (`score`) is in `exact_score`.

Every operation is row-local (one token's row, or one query's attention row) and exact or
correctly rounded, so a token's logits depend only on its own sequence: not on the batch,
the chunking, prefill versus decode, the thread count, the ISA or the device. Keys and
values are cached as they are used, int8 per (token, head) with a float32 scale, so a
decode step reads exactly what a prefill computed; padding keys get weight exactly 0.

Speed: on the CPU, steps run as one numba call over this cache (`exact_numba`: the same
operations, no fast-math; compared bitwise in the tests); elsewhere rows stepping in
lockstep take `_step` (no mask), other calls the masked general path. The last layer
computes only the positions whose logits are returned. No torch.compile: inductor's flags
are environment-controlled and Triton contracts FMAs and approximates division.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from models import GPT

from . import exact_attention as attn
from . import exact_ops as ops
from .errors import EngineError
from .quantize import QuantizedGPT, quantize_model, quantized_fingerprint

Attend = Callable[[int, Tensor, Tensor, Tensor, Tensor, bool], Tensor]
Narrow = Callable[[Tensor], Tensor]

# Rows of a `score` call (and of a long prefill) go in groups of about this many tokens:
# small enough that a group's activations stay in the CPU's caches (measured: groups of 2-4
# windows of 258 tokens ran 1.3-1.5x faster than 64); every op is row-local, so the grouping
# changes no bit.
SCORE_CHUNK_TOKENS = 2**10
# A CPU step of up to this many rows is faster compiled, row by row, than as batched torch ops
# (measured, shipped model: 1 row 38 vs 607 us, 8 rows 0.29 vs 0.79 ms, 64 rows 2.4 vs 1.8 ms);
# prefills are faster in torch's int8 GEMMs (130 tokens, 1 row: 1.8 vs 2.1 ms).
COMPILED_MAX_ROWS = 32
# Prefill chunks of at least this many tokens write their K/V to the cache by a slice copy per
# row (gpt2m's windows: an indexed gather and scatter cost 25-50 ms of a 2,452-token prefill);
# shorter chunks, typically of many rows, by one indexed write (64 rows x 16 tokens: 5.9 vs 9.0 ms).
SLICED_WRITE_TOKENS = 512


class ExactRunner:
    """`forward` has ModelRunner.forward's contract (teacher forcing: `exact_score.score`)."""

    def __init__(
        self, model: GPT, *, max_batch: int, device: torch.device | str = "cpu", matmul_path: str | None = None
    ) -> None:
        if max_batch < 1:
            raise EngineError(f"max_batch must be positive, got {max_batch}")
        self.device = device = torch.device(device)
        self.config = config = model.config
        self.weights: QuantizedGPT = quantize_model(model, device)
        self.matmul_path = matmul_path
        self.gelu_table = ops.gelu_table().to(device)
        self.exp_table = attn.exp_table().to(device)
        self.pv_max = attn.prob_max(config.n_positions)
        # Prefills and teacher forcing of long contexts on the CPU attend on int8 keys and values
        # (int8 matmuls, `exact_attention.int8_pays`); elsewhere on float32 integers.
        self.int8_attention = device.type == "cpu" and attn.int8_pays(self.pv_max)
        tables = self.gelu_table.cpu().numpy().tobytes() + self.exp_table.cpu().numpy().tobytes()
        tables += repr(self.pv_max).encode()
        self.fingerprint: str = quantized_fingerprint(self.weights, tables)
        self.max_batch, self.heads, self.head_dim = max_batch, config.n_head, config.head_dim
        # Per layer: int8 [batch, key/value, head, position, d] (a row's keys for one head are
        # contiguous; a token's k and v are one slice, written in one copy), and their scales
        # [batch, key/value, head, 1, position]: keys' times attn.key_factor, values' as they
        # are. int8 rather than float32 integers: a step reads the whole filled cache, and
        # converting a quarter of the bytes beat reading float32, or a float shadow of the
        # cache (docs/BENCHMARKS.md, 2026-12-06).
        shape = (config.n_layer, max_batch, 2, config.n_head, config.n_positions, config.head_dim)
        self.kv = torch.zeros(shape, dtype=torch.int8, device=device)
        self.kv_scale = torch.zeros(config.n_layer, max_batch, 2, config.n_head, 1, config.n_positions, device=device)
        # Attention reads the int8 cache converted into these (float32 keys, values in the PV
        # matmul's dtype): fresh multi-megabyte tensors each step cost more in page faults
        # than the conversion itself (measured, 64 rows: 0.86 vs 0.13 ms a conversion).
        size = max_batch * config.n_head * config.n_positions * config.head_dim
        self._k_float = torch.empty(size, device=device)
        self._v_float = torch.empty(size, dtype=self.pv_max[1], device=device)
        # Scales of all-zero q / k / v rows: 1 for queries (any positive scale gives the same
        # weights, and 1 keeps masked keys at +inf rather than inf * 0), 0 for keys and values.
        self._dead_scale = torch.tensor([1.0, 0.0, 0.0], device=device).view(3, 1, 1)
        self._kv_factor = torch.tensor([attn.key_factor(config.head_dim), 1.0], device=device).view(2, 1, 1)
        # On the CPU: steps of up to `compiled_max_rows` rows as one numba call (`exact_numba`),
        # the other calls' LayerNorm, linears, GELU and q/k/v quantization compiled (`exact_cpu`).
        self.compiled, self._ops = None, ops
        if device.type == "cpu":
            from . import exact_cpu
            from .exact_numba import CompiledForward

            self.compiled, self._ops = CompiledForward(self), exact_cpu
        self.compiled_max_rows = COMPILED_MAX_ROWS

    def _blocks(self, x: Tensor, rows: int, chunk: int, attend: Attend, narrow: Narrow | None = None) -> Tensor:
        """x float32 [rows * chunk, n_embd] through every block. `attend(layer, q, q_scale, kv,
        kv_scale, last)` gets the layer's quantized q [rows, chunk, head, d] and k/v [rows,
        chunk, 2, head, d] (float32 integers) with scales [..., 1] (keys' times key_factor).
        `narrow` keeps, in the last layer, only the query positions whose logits are wanted:
        past its attention, every op is row-local."""
        w, shape = self.weights, (rows, chunk, 3, self.heads, self.head_dim)
        last = len(w.blocks) - 1
        for layer, block in enumerate(w.blocks):
            h = self._ops.layer_norm(x, *block.ln_1, w.eps)
            qkv = self._ops.linear(h, block.attn, self.matmul_path).view(shape)
            vals, q_scale, kv_scale = self._quantize_qkv(qkv)
            q = vals[:, :, 0]
            if layer == last and narrow is not None:
                q, q_scale = narrow(q), narrow(q_scale)
                x = narrow(x.view(rows, chunk, -1)).reshape(-1, x.shape[-1])
            y = attend(layer, q, q_scale, vals[:, :, 1:], kv_scale, layer == last and narrow is not None)
            x = x.add_(self._ops.linear(y, block.proj, self.matmul_path))  # x is this pass's own tensor
            h = self._ops.layer_norm(x, *block.ln_2, w.eps)
            h = self._ops.gelu(self._ops.linear(h, block.fc, self.matmul_path), self.gelu_table)
            x = x.add_(self._ops.linear(h, block.mlp_proj, self.matmul_path))
        return x

    def _quantize_qkv(self, qkv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """qkv [rows, chunk, 3, head, d] -> its integers (same shape), the queries' scales
        [rows, chunk, head, 1], the keys' (times key_factor) and values' [rows, chunk, 2, head, 1]."""
        rows, chunk, _, heads, d = qkv.shape
        if chunk == 1:  # a step: nothing to lay out, and the fewest ops
            vals, scales = ops.quantize_rows(qkv, ints=False, dead_scale=self._dead_scale)
            return vals, scales[:, :, 0], scales[:, :, 1:] * self._kv_factor
        # Laid out as [q/k/v, rows, head, chunk, d] and [k/v, rows, head, 1, chunk] (seen in qkv's
        # order): contiguous per head for attention's matmuls and its rows of scales.
        laid = torch.empty(3, rows, heads, chunk, d, device=qkv.device)
        kv_scale = torch.empty(2, rows, heads, 1, chunk, device=qkv.device)
        q_scale = self._ops.quantize_heads(qkv, self._dead_scale, self._kv_factor, laid, kv_scale)
        return laid.permute(1, 3, 0, 2, 4), q_scale, kv_scale.permute(1, 4, 0, 2, 3)

    def _logits(self, x: Tensor, out: Tensor) -> None:
        x = self._ops.layer_norm(x, *self.weights.ln_f, self.weights.eps)
        self._ops.linear(x, self.weights.lm_head, self.matmul_path, out=out)

    def _check(self, tokens: Tensor, values: bool = True) -> None:
        if tokens.dim() != 2 or tokens.dtype != torch.int64:
            raise EngineError(f"tokens must be int64 [batch, length], got {tokens.dtype} {tuple(tokens.shape)}")
        if values and tokens.numel():
            low, high = (int(t) for t in torch.aminmax(tokens))
            if low < 0 or high >= self.config.vocab_size:
                raise EngineError(f"token ids must be in 0..{self.config.vocab_size - 1}")

    def _check_values(self, tokens: Tensor, starts: list[int], lens: list[int]) -> None:
        self._check(tokens)
        if min(starts, default=0) < 0 or min(lens, default=0) < 0 or max(lens, default=0) > tokens.shape[1]:
            raise EngineError("start and query_lens must be >= 0 and query_lens <= chunk length")
        if max((s + n for s, n in zip(starts, lens)), default=0) > self.config.n_positions:
            raise EngineError(f"positions run past n_positions={self.config.n_positions}")

    def _embed(self, tokens: Tensor, positions: Tensor) -> Tensor:
        # index_select gathers the same rows as advanced indexing, several times faster.
        w = self.weights
        x = w.wte.index_select(0, tokens.reshape(-1)) + w.wpe.index_select(0, positions.reshape(-1))
        return x.view(*tokens.shape, -1)

    def forward(
        self, tokens: Tensor, start: Tensor, query_lens: Tensor, fresh: bool = False, kv_len: int | None = None
    ) -> Tensor:
        """tokens [B, C] int64, start [B] int32 (positions cached per row), query_lens [B] int32
        (0 = padding row) -> float32 logits [B, vocab] of each row's last real token. Writes
        the real tokens' K/V to rows 0..B-1 of the cache; `fresh` means start == 0. `kv_len`
        (a caller's bound on the filled keys) is not needed: the keys read are exactly those
        filled, bounded by the rows' own ends."""
        self._check(tokens, values=False)
        rows, chunk = tokens.shape
        if rows > self.max_batch:
            raise EngineError(f"batch of {rows} rows exceeds max_batch={self.max_batch}")
        if chunk < 1:
            raise EngineError("tokens need at least one position per row")
        if start.shape != (rows,) or query_lens.shape != (rows,):
            raise EngineError(f"start and query_lens must be [{rows}], one per row of tokens, "
                              f"got {list(start.shape)} and {list(query_lens.shape)}")
        if fresh and bool(start.any()):
            raise EngineError("fresh=True needs start == 0 for every row")
        # Allocated outside inference mode, so callers get an ordinary tensor; inside it, the
        # many small ops skip autograd's bookkeeping (measured: a step 14% faster).
        out = torch.empty(rows, self.config.vocab_size, device=tokens.device)
        if self.compiled is not None and chunk == 1 and rows <= self.compiled_max_rows:
            error = self.compiled(tokens.numpy(), start.numpy(), query_lens.numpy(), out.numpy())
            if error:  # the kernel checks every value before it writes anything
                self._check_values(tokens, start.tolist(), query_lens.tolist())
                raise EngineError(f"invalid call (error {error})")  # unreachable: the checks agree
            return out
        starts, lens = start.tolist(), query_lens.tolist()
        self._check_values(tokens, starts, lens)
        # Positions past every row's real tokens (a static-shape caller's padding) change no
        # bit: they write no K/V and return no logits. Skipping them saves their work.
        tokens = tokens[:, : max(max(lens, default=0), 1)]
        chunk = tokens.shape[1]
        with torch.inference_mode():
            if rows and chunk == 1 and min(lens) == 1 and min(starts) == max(starts):
                self._step(tokens[:, 0], starts[0], out)
                return out
            # Rows are independent: a long prefill goes in groups of rows, small enough that
            # a group's activations stay in the CPU's caches (as `score` does).
            group = max(1, SCORE_CHUNK_TOKENS // chunk)
            for r in range(0, rows, group):
                rows_ = slice(r, r + group)
                self._prefill(tokens[rows_], start[rows_].long(), query_lens[rows_].long(), starts[rows_],
                              lens[rows_], r, out[rows_])
        return out

    def _as_float(self, cache: Tensor, rows: int, keys: int) -> tuple[Tensor, Tensor]:
        """Keys and values 0..keys-1 of a layer's cache rows, converted into the buffers
        (contiguous, which the attention's reshapes need)."""
        k, v = cache[:, :, :, :keys].unbind(1)
        size = k.numel()
        return self._k_float[:size].view(k.shape).copy_(k), self._v_float[:size].view(v.shape).copy_(v)

    def _step(self, tokens: Tensor, pos: int, out: Tensor) -> None:
        """One token per row, every row at position `pos` (streams in lockstep): each query
        sees all keys 0..pos, so attention needs no mask."""
        rows, keys = tokens.shape[0], pos + 1

        def attend(layer: int, q: Tensor, q_scale: Tensor, kv: Tensor, kv_scale: Tensor, _: bool) -> Tensor:
            cache, scales = self.kv[layer, :rows], self.kv_scale[layer, :rows]
            cache[:, :, :, pos] = kv[:, 0]
            scales[:, :, :, :, pos] = kv_scale[:, 0]
            k, v = self._as_float(cache, rows, keys)
            k_mult, v_scale = scales[..., :keys].unbind(1)
            return attn.attention(q.transpose(1, 2), q_scale.transpose(1, 2), k, k_mult, v, v_scale, None, pos,
                                  self.exp_table, self.pv_max).view(rows, -1)

        x = self.weights.wte.index_select(0, tokens) + self.weights.wpe[pos]
        self._logits(self._blocks(x, rows, 1, attend), out)

    def _prefill(
        self, tokens: Tensor, start: Tensor, query_lens: Tensor, starts: list[int], lens: list[int], row0: int,
        out: Tensor,
    ) -> None:
        """Any rows (cache rows row0..): each writes its real tokens' K/V, then attends
        (masked) to its own keys; the last layer computes only each row's last real token."""
        rows, chunk = tokens.shape
        offsets = torch.arange(chunk, device=tokens.device)
        positions = start[:, None] + offsets
        keys = max(max(s + n for s, n in zip(starts, lens)), 1)
        by_row = chunk >= SLICED_WRITE_TOKENS  # how the rows' K/V go into the cache
        if not by_row:
            row_ids, pos_ids = torch.nonzero(offsets[None, :] < query_lens[:, None], as_tuple=True)
            write_pos = positions[row_ids, pos_ids]
        last = (query_lens - 1).clamp(min=0)
        pick = torch.arange(rows, device=tokens.device)
        narrow: Narrow = lambda t: t[pick, last].unsqueeze(1)  # noqa: E731
        # Query (r, i) sees keys 0..start[r] + i; key 0 always, so no row is empty.
        mask = {False: attn.causal_mask(positions[:, None], keys)}
        mask[True] = attn.causal_mask(narrow(positions)[:, None], keys)
        reach = {False: max(starts), True: max(s + max(n - 1, 0) for s, n in zip(starts, lens))}

        def attend(layer: int, q: Tensor, q_scale: Tensor, kv: Tensor, kv_scale: Tensor, narrowed: bool) -> Tensor:
            cache, scales = self.kv[layer, row0 : row0 + rows], self.kv_scale[layer, row0 : row0 + rows]
            if by_row:
                for r, (s, n) in enumerate(zip(starts, lens)):  # positions s..s+n-1
                    cache[r, :, :, s : s + n] = kv[r, :n].permute(1, 2, 0, 3)  # [2, head, n, d]
                    scales[r, :, :, :, s : s + n] = kv_scale[r, :n].permute(1, 2, 3, 0)
            else:
                cache[row_ids, :, :, write_pos] = kv[row_ids, pos_ids].to(torch.int8)
                scales[row_ids, :, :, :, write_pos] = kv_scale[row_ids, pos_ids]
            # On the int8 cache itself (long contexts on the CPU), else on its float conversion.
            k, v = cache[:, :, :, :keys].unbind(1) if self.int8_attention else self._as_float(cache, rows, keys)
            k_mult, v_scale = scales[..., :keys].unbind(1)
            y = torch.empty(q.shape, device=q.device)  # [rows, chunk, head, d], filled by heads
            attn.attention(q.transpose(1, 2), q_scale.transpose(1, 2), k, k_mult, v, v_scale, mask[narrowed],
                           reach[narrowed], self.exp_table, self.pv_max, out=y.transpose(1, 2))
            return y.view(-1, self.heads * self.head_dim)

        x = self._embed(tokens, positions.clamp(max=self.config.n_positions - 1))
        self._logits(self._blocks(x.view(rows * chunk, -1), rows, chunk, attend, narrow), out)
