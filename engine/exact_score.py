"""Teacher forcing in exact numerics (`score(runner, tokens, first)`): the logits of every position of
whole sequences in one pass, with no cache. The keys and values are the pass's own, and
QK^T comes from int8 matmuls (`exact_attention.integer_scores`); every op is row-local and
keys beyond a query's position get weight exactly 0, so each position's logits are the bits
of a fresh `ExactRunner.forward` prefill plus steps up to it. A part of the runner in its
own file: it uses the runner's block pass, checks and tables.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import exact_attention as attn
from . import exact_runner
from .errors import EngineError
from .exact_runner import ExactRunner, Narrow


def score(runner: ExactRunner, tokens: Tensor, first: int = 0) -> Tensor:
    """tokens [B, L] int64 from position 0 -> float32 logits [B, L - first, vocab] of
    positions first..L-1, bit-identical to a fresh `runner.forward` prefill of
    tokens[:, :t+1] plus steps, at every t. Rows go in groups of about
    `exact_runner.SCORE_CHUNK_TOKENS` tokens (every op is row-local: no bit changes)."""
    runner._check(tokens)
    rows, length = tokens.shape
    if length > runner.config.n_positions or length < 1:
        raise EngineError(f"score needs 1..{runner.config.n_positions} tokens per row, got {length}")
    if not 0 <= first < length:
        raise EngineError(f"score: first must be in 0..{length - 1}, got {first}")
    out = torch.empty(rows, length - first, runner.config.vocab_size, device=tokens.device)
    per_chunk = max(1, exact_runner.SCORE_CHUNK_TOKENS // length)
    with torch.inference_mode():  # `out` is ordinary, as in `forward`
        mask = attn.causal_mask(torch.arange(length, device=tokens.device), length)  # once, for every chunk
        for i in range(0, rows, per_chunk):
            _score_chunk(runner, tokens[i : i + per_chunk], first, mask, out[i : i + per_chunk])
    return out


def _score_chunk(runner: ExactRunner, tokens: Tensor, first: int, mask: Tensor, out: Tensor) -> None:
    rows, length = tokens.shape
    narrow: Narrow = lambda t: t[:, first:]  # noqa: E731

    def attend(layer: int, q: Tensor, q_scale: Tensor, kv: Tensor, kv_scale: Tensor, narrowed: bool) -> Tensor:
        # [rows, length, 2, head, ...] -> [2, rows, head, length, ...]: as laid out, a view.
        k, v = kv.permute(2, 0, 3, 1, 4)
        k_mult, v_scale = kv_scale.permute(2, 0, 3, 4, 1)
        y = torch.empty(q.shape, device=q.device)  # [rows, length, head, d], filled by heads
        q = q.transpose(1, 2)
        # int8 keys and values (`runner.int8_attention`): QK^T per query block inside attention,
        # as prefills do; else QK^T for the whole sequence here, in int8 matmuls.
        int8 = runner.int8_attention
        k, v = (k.to(torch.int8), v.to(torch.int8)) if int8 else (k, v.to(runner.pv_max[1]))
        attn.attention(q, q_scale.transpose(1, 2), k, k_mult, v, v_scale, mask[first:] if narrowed else mask,
                       first if narrowed else 0, runner.exp_table, runner.pv_max, out=y.transpose(1, 2),
                       scores=None if int8 else attn.integer_scores(q, k, runner.matmul_path))
        return y.view(-1, runner.heads * runner.head_dim)

    w = runner.weights
    x = w.wte.index_select(0, tokens.reshape(-1)).view(rows, length, -1) + w.wpe[:length]
    x = runner._blocks(x.view(rows * length, -1), rows, length, attend, narrow if first else None)
    runner._logits(x, out=out.view(-1, out.shape[-1]))
