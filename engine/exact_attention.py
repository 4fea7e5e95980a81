"""Attention in exact numerics, under the rules stated in `exact_ops`: integer QK^T, a
table-based softmax on a 2**-8 grid with integer weights, and an exact PV matmul. Keys a
query may not see get weight exactly 0, so its bits depend neither on how many keys are read
(queries go in blocks, each reading only the keys it may see) nor on whether QK^T came
precomputed (`integer_scores`).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .errors import EngineError
from .exact_ops import F32_EXACT_K, const, const_like, exp2_f64, int_matmul, lookup
from .quantize import QMAX

EXP_STEP_BITS = 8  # attention's 2**-d looked up for d on a grid of 2**-8.
EXP_ONE_BITS = 20  # the table holds floor(2**20 * 2**-d): integer softmax weights.
ATTENTION_BLOCK = 64  # query rows per attention block (causal: later blocks read more keys)


def exp_table() -> torch.Tensor:
    """float32 integers floor(2**20 * 2**(-i / 2**8)) for i = 0 .. 20 * 2**8, then a 0 that
    masked keys index. Every entry is an integer below 2**24: exact in float32."""
    steps = np.arange(EXP_ONE_BITS * 2**EXP_STEP_BITS + 1) / -(2.0**EXP_STEP_BITS)
    values = np.floor(exp2_f64(steps) * 2.0**EXP_ONE_BITS)
    return torch.from_numpy(np.append(values, 0.0).astype(np.float32))


def prob_max(n_positions: int) -> tuple[int, torch.dtype]:
    """Largest weight P of the PV matmul, and the dtype that sums P * V exactly: float32 while
    P * 127 * n_positions < 2**24 leaves at least 9 bits of weight, else float64, 14 bits."""
    p = (2**24 - 1) // (QMAX * n_positions)
    return (min(p, 2**14 - 1), torch.float32) if p >= 2**9 - 1 else (2**14 - 1, torch.float64)


def int8_pays(pv_max: tuple[int, torch.dtype]) -> bool:
    """Whether the CPU should attend with int8 matmuls on the int8 cache: for long contexts,
    whose P V sums need float64 (gpt2m: QK^T 5x, P V 7x faster than float bmm); for short
    ones float32 bmm is faster (shipped model: a 130-token prefill 1.6 vs 2.1 ms)."""
    return pv_max[1] == torch.float64


def key_factor(head_dim: int) -> float:
    """Keys' scales are stored times this (float32): QK * key_factor * k_scale is the score
    -(q.k / sqrt(d)) * 2**8 * log2(e) before the query's scale, negated (exactly) so that its
    minimum marks the top key."""
    return -(2.0**EXP_STEP_BITS) * 1.4426950408889634 / math.sqrt(head_dim)


def attention(
    q: Tensor, q_scale: Tensor, k: Tensor, k_mult: Tensor, v: Tensor, v_scale: Tensor,
    mask: Tensor | None, last_key: int, table: Tensor, pv_max: tuple[int, torch.dtype], out: Tensor | None = None,
    scores: Tensor | None = None,
) -> Tensor:
    """q float32 integers [..., Tq, d] with scales [..., Tq, 1] (1 where q is all zero);
    k float32 integers [..., Tk, d] with k_mult = k_scale * key_factor(d) [..., 1, Tk];
    v integers in pv_max's dtype with v_scale [..., 1, Tk]; mask (`causal_mask`; None: no key
    masked) +inf on keys a query must not see; query row i sees no key beyond last_key + i,
    and key 0 always; `scores`: QK^T if computed already -> float32 [..., Tq, d] (into `out`,
    any strides). Queries go in blocks, each reading keys only up to the last one it may
    see: the rest would get weight exactly 0. k and v may instead be the int8 cache itself
    (the CPU's prefills): QK^T and P V are then int8 matmuls per block (`integer_scores`,
    `_integer_pv`), the same integers, 5-7x faster at gpt2m's lengths than float bmm."""
    block, tk = ATTENTION_BLOCK, k.shape[-2]
    if q.shape[-2] <= block:  # one block (a decode step): no slicing, every key is read
        wide = _attention(q, q_scale, k, k_mult, v, v_scale, mask, table, *pv_max, scores)
        return wide.float() if out is None else out.copy_(wide)
    out = torch.empty(q.shape, device=q.device) if out is None else out
    work = None
    if k.dtype == torch.int8:  # the blocks' int8 matmuls read [batch * head] matrices: lay them out once
        k, v = k.contiguous(), v.contiguous()
        work = Workspace(math.prod(q.shape[:-2]) * block * tk)
    for lo in range(0, q.shape[-2], block):
        keys = min(tk, last_key + lo + block)
        rows = slice(lo, lo + block)
        out[..., rows, :].copy_(_attention(
            q[..., rows, :], q_scale[..., rows, :], k[..., :keys, :], k_mult[..., :keys], v[..., :keys, :],
            v_scale[..., :keys], None if mask is None else mask[..., rows, :keys], table, *pv_max,
            None if scores is None else scores[..., rows, :keys], work,
        ))
    return out


class Workspace:
    """The int8 path's per-block scores (int32: the matmuls write them, the compiled softmax
    reads them) and P digits (int8), reused by every block of an `attention` call: a fresh
    multi-megabyte tensor per block cost as much in page faults as the softmax's arithmetic
    (measured: 1.31 vs 0.61 ns a weight)."""

    def __init__(self, size: int) -> None:
        self._scores = torch.empty(size, dtype=torch.int32)
        self._digits = torch.empty(2 * size, dtype=torch.int8)

    def scores(self, *shape: int) -> Tensor:
        return self._scores[: math.prod(shape)].view(shape)

    def digits(self, *shape: int) -> Tensor:
        return self._digits[: math.prod(shape)].view(shape)


def integer_scores(q: Tensor, k: Tensor, path: str | None = None, out: Tensor | None = None) -> Tensor:
    """QK^T of integers |x| <= 127 [..., T, d], [..., Tk, d] (float32 or int8) -> float32
    [..., T, Tk], or into `out` (contiguous; int32 takes the matmuls' own output, no copy): the
    integers attention's float32 matmul gives, by int8 matmuls (measured 1.5x faster over
    whole sequences; a step's single query stays with the batched float matmul)."""
    *lead, tq, d = q.shape
    tk = k.shape[-2]
    out = torch.empty(*lead, tq, tk, device=q.device) if out is None else out
    pairs = zip(q.to(torch.int8).reshape(-1, tq, d), k.to(torch.int8).reshape(-1, tk, d))
    for o, (a, b) in zip(out.view(-1, tq, tk), pairs):
        if o.dtype == torch.int32:
            int_matmul(a, b, path, out=o)
        else:
            o.copy_(int_matmul(a, b, path))
    return out


def causal_mask(query_pos: Tensor, keys: int) -> Tensor:
    """float32 [..., Tq, keys]: +inf where key j comes after the query's position, else 0."""
    inf, zero = (const(c, torch.float32, query_pos.device) for c in (math.inf, 0.0))
    return torch.where(torch.arange(keys, device=query_pos.device) > query_pos[..., None], inf, zero)


def _attention(
    q: Tensor, q_scale: Tensor, k: Tensor, k_mult: Tensor, v: Tensor, v_scale: Tensor,
    mask: Tensor | None, table: Tensor, p_max: int, pv_dtype: torch.dtype, u: Tensor | None = None,
    work: Workspace | None = None,
) -> Tensor:
    """QK^T: float32 matmul of integers, |sum| <= 127**2 * d < 2**24 for d <= 1040: exact.
    u = QK * k_mult, masked keys +inf; the exponent on a 2**-8 grid is i = trunc((u - min u)
    * q_scale) (>= 0), E = table[i] = floor(2**20 * 2**(-i/256)) (0 for masked keys and far
    tails). V's per-token scale folds into the weights: w = E * v_scale,
    P = round(w * p_max / max w) in 0..p_max, so |sum P V| <= p_max * 127 * Tk, exact in
    `pv_dtype` (see `prob_max`); sum E <= 2**20 * Tk < 2**53 is exact in float64.
    out = (P V) * max w / (p_max * sum E), in float64: the caller rounds it to float32."""
    *lead, tq, d = q.shape
    keys = k.shape[-2]
    if d > F32_EXACT_K:
        raise EngineError(f"attention: head_dim {d} exceeds {F32_EXACT_K}, QK^T would not be exact in float32")
    if u is None and k.dtype == torch.int8:  # the int8 cache itself: QK^T as int8 matmuls
        u = integer_scores(q, k, out=None if work is None else work.scores(*lead, tq, keys))
    elif u is None:  # bmm on [batch * head] rather than matmul's broadcasting: fewer ops a call
        u = torch.bmm(q.reshape(-1, tq, d), k.reshape(-1, keys, d).transpose(1, 2)).view(*lead, tq, keys)
    if v.dtype == torch.int8:  # the CPU's long contexts: the passes below fused, P V in int8 matmuls
        return _fused_int8(u, q_scale, k_mult, v, v_scale, mask, table, p_max, work)
    if mask is None:
        u.mul_(k_mult)
    else:  # mask + u * k_mult in one pass: adding 0 keeps the rounded product, fused or not
        torch.addcmul(mask, u, k_mult, out=u)  # (-0 becomes +0: the same exponent 0 below)
    # trunc of the non-negative difference is its floor; masked keys (+inf) clamp to the 0 entry.
    idx = u.sub_(u.amin(dim=-1, keepdim=True)).mul_(q_scale).clamp_(max=table.shape[0] - 1).int()
    e = lookup(table, idx)
    total = e.sum(dim=-1, keepdim=True, dtype=torch.float64)
    w = e.mul_(v_scale)
    wmax = w.amax(dim=-1, keepdim=True)
    wmax = torch.where(wmax > const_like(0.0, wmax), wmax, const_like(1.0, wmax))
    p = w.mul_(const_like(p_max, wmax) / wmax).round_()
    p = p if p.dtype == pv_dtype else p.to(pv_dtype)  # even a no-op cast costs a dispatch
    acc = torch.bmm(p.view(-1, tq, keys), v.reshape(-1, keys, d)).view(*lead, tq, d)
    # float32 operands promote to float64 inside these ops, exactly (as separate casts would).
    return torch.mul(acc, wmax / total.mul_(const(p_max, torch.float64, total.device)))


def _fused_int8(u: Tensor, q_scale: Tensor, k_mult: Tensor, v: Tensor, v_scale: Tensor, mask: Tensor | None,
                table: Tensor, p_max: int, work: Workspace | None) -> Tensor:
    """`_attention` from its scores u on, for int8 v: the weights in one compiled pass per
    row (`exact_numba_attention.softmax_digits`: the same operations in the same order), then
    `_integer_pv` on P's digits."""
    from .exact_numba_attention import softmax_digits  # numba: CPU only, imported on first use

    *lead, tq, keys = u.shape
    rows, d = u.numel() // (tq * keys), v.shape[-1]
    masks = mask.reshape(-1, tq, keys) if mask is not None else torch.empty(0, tq, keys)
    shape = (rows, 2 * tq, keys)
    digits = torch.empty(shape, dtype=torch.int8) if work is None else work.digits(*shape)
    factor = torch.empty(rows, tq, 1, dtype=torch.float64)
    # Contiguous arrays: numba compiles strided ones into loops that do not vectorize (2x slower).
    dense = [t.reshape(rows, -1).contiguous().numpy() for t in (k_mult, v_scale, q_scale)]
    softmax_digits(u.reshape(rows, tq, keys).numpy(), *dense, masks.contiguous().numpy(), table.numpy(), p_max,
                   digits.numpy(), factor.view(rows, tq).numpy())
    return _integer_pv(digits, v.reshape(rows, keys, d)).mul_(factor).view(*lead, tq, d)


def _integer_pv(digits: Tensor, v: Tensor) -> Tensor:
    """sum P V for 0 <= P < 2**14 given as int8 digits [B, 2 Tq, Tk] (P = 128 hi + lo: the
    high digits' rows, then the low ones') and int8 v [B, Tk, d] -> float64 [B, Tq, d],
    exactly: one int8 matmul per matrix (int32 sums below 127**2 Tk), combined in float64
    (below 2**53)."""
    b, tq = digits.shape[0], digits.shape[1] // 2
    out = torch.empty(b, tq, v.shape[-1], dtype=torch.float64, device=digits.device)
    for o, a, m in zip(out, digits, v):
        both = int_matmul(a, m.t()).double()
        torch.add(both[tq:], both[:tq], alpha=128, out=o)
    return out
