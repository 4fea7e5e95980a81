"""The operations of exact numerics: bit-identical on any machine, thread count, ISA and batch.

Rules (issue 11): every matmul multiplies integers and accumulates exactly; between matmuls
only integer arithmetic, lookups in tables built from basic float64 operations, and
elementwise +, -, *, /, sqrt, round (each correctly rounded under IEEE-754, one torch op
each, so nothing can contract them into an FMA). Reductions are maxes (exact in any order)
or sums of integers (exact in any order while below 2**53 in float64). No exp/tanh/log from a
math library; tiny values are flushed explicitly (`TINY`), never by the hardware.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .errors import EngineError
from .quantize import QMAX, TINY, QuantizedLinear

# The largest K whose int8 x int8 dot products fit float32's 24-bit integers exactly:
# 127 * 127 * 1040 = 16,774,160 < 2**24 = 16,777,216.
F32_EXACT_K = 1040
# int32 accumulation of int8 x int8 with |values| <= 127: |sum| <= 16129 * K < 2**31 - 1.
INT32_MAX_K = (2**31 - 1) // (QMAX * QMAX)
MATMUL_PATHS = ("int_mm", "triton", "float32", "float64")

LN_BITS = 20  # LayerNorm rows become integers |X| <= 2**20 before their sums.
GELU_STEP_BITS = 10  # GELU table on a grid of 2**-10 over [-GELU_RANGE, GELU_RANGE].
GELU_RANGE = 8
EXP_STEP_BITS = 8  # attention's 2**-d looked up for d on a grid of 2**-8.
EXP_ONE_BITS = 20  # the table holds floor(2**20 * 2**-d): integer softmax weights.
ATTENTION_BLOCK = 64  # query rows per attention block (causal: later blocks read more keys)


def int_matmul(a: torch.Tensor, b: torch.Tensor, path: str | None = None) -> torch.Tensor:
    """a int8 [M, K] @ b int8 [N, K].T -> int32 [M, N], exact. Every path returns the
    same integers (the true dot products), whatever the algorithm, order or thread count."""
    if a.dtype != torch.int8 or b.dtype != torch.int8 or a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise EngineError(
            f"int_matmul needs int8 [M, K] and [N, K], got {a.dtype} {tuple(a.shape)}, {b.dtype} {tuple(b.shape)}"
        )
    k = a.shape[1]
    if k > INT32_MAX_K:
        raise EngineError(f"int_matmul: K={k} could overflow int32 (at most {INT32_MAX_K})")
    # CUDA: the Triton kernel (`kernels.int8_matmul`: int8 tensor cores, int32 accumulation,
    # any M, no padding); the CPU: ATen's int8 GEMM.
    path = path or {"cuda": "triton", "cpu": "int_mm"}.get(a.device.type, "float64")
    if path == "triton":
        import kernels  # lazily: CPU users never need Triton

        return kernels.int8_matmul(a.contiguous(), b.contiguous())
    if path == "int_mm":
        if a.device.type == "cuda":  # cuBLASLt int8 GEMM: M >= 17, K and N multiples of 8.
            m, n = a.shape[0], b.shape[0]
            pad_k, pad_n = -k % 8, -n % 8
            a = torch.nn.functional.pad(a, (0, pad_k, 0, max(17 - m, 0)))
            b = torch.nn.functional.pad(b, (0, pad_k, 0, pad_n))
            return torch._int_mm(a, b.t())[:m, :n]
        if k == 1:  # torch 2.13's CPU _int_mm returns zeros for K == 1 (tested); a zero column is exact
            a, b = (torch.nn.functional.pad(t, (0, 1)) for t in (a, b))
        return torch._int_mm(a, b.t())
    if path == "float32":
        # Each K-chunk's sums are integers below 2**24: exact in float32 in any order.
        out = torch.zeros(a.shape[0], b.shape[0], dtype=torch.int32, device=a.device)
        for lo in range(0, k, F32_EXACT_K):
            chunk = a[:, lo : lo + F32_EXACT_K].float() @ b[:, lo : lo + F32_EXACT_K].float().t()
            out += chunk.to(torch.int32)
        return out
    if path == "float64":  # |sum| <= 16129 * K < 2**53
        return (a.double() @ b.double().t()).to(torch.int32)
    raise EngineError(f"unknown int_matmul path {path!r}: one of {MATMUL_PATHS}")


_CONSTANTS: dict[tuple[float, torch.dtype, torch.device], Tensor] = {}


def const(value: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """`value` as a 0-d tensor, made once per dtype and device. Elementwise ops against a
    tensor skip wrapping a Python scalar (about half the cost of a small op), and a division
    by a device tensor stays a division (CUDA turns `x / scalar` into `x * (1 / scalar)`)."""
    key = (value, dtype, device)
    if key not in _CONSTANTS:
        _CONSTANTS[key] = torch.tensor(value, dtype=dtype, device=device)
    return _CONSTANTS[key]


def _c(value: float, like: Tensor) -> Tensor:
    return const(value, like.dtype, like.device)


def quantize_rows(
    x: Tensor, ints: bool = True, dead_scale: Tensor | None = None, out: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """float32 [..., K] -> (q [..., K], scale [..., 1]): per row, scale = max|x| / 127,
    q = round-half-even(x * (127 / max|x|)), so |q| <= 127; int8, or (`ints=False`) float32
    holding the same integers, into `out` if given (any strides). Rows below TINY become
    zero, with scale 0 or `dead_scale`."""
    peak = x.abs().amax(dim=-1, keepdim=True)
    live = peak >= _c(TINY, peak)
    zero = _c(0.0, peak)
    # A dead row multiplies by 0, so its integers are 0 (x is finite). No clamp is needed:
    # |x| <= peak, so |x * fl(127 / peak)| <= 127 (1 + 2**-24)**2 < 127.5 rounds to <= 127.
    q = torch.mul(x, torch.where(live, _c(QMAX, peak) / peak, zero), out=out).round_()
    scale = torch.where(live, peak / _c(QMAX, peak), zero if dead_scale is None else dead_scale)
    return (q.to(torch.int8) if ints else q), scale


def linear(x: Tensor, lin: QuantizedLinear, path: str | None = None, out: Tensor | None = None) -> Tensor:
    """float32 [M, K] -> float32 [M, N] (into `out` if given): quantize x per row, exact
    integer matmul, rescale. In-place passes: fresh CPU tensors cost page faults, more than
    the arithmetic (and a mixed int32 * float32 multiply measured slower than cast + mul)."""
    xq, xs = quantize_rows(x)
    acc = int_matmul(xq, lin.weight, path)
    y = (acc.float() if out is None else out.copy_(acc)).mul_(xs).mul_(lin.scale)
    return y if lin.bias is None else y.add_(lin.bias)


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """Row-local LayerNorm: x -> integers X = round(x * 2**20 / max|x|), so |X| <= 2**20;
    sum(X) <= 2**20 * D and sum(X**2) <= 2**40 * D are integers below 2**53 for D <= 8192,
    hence exact as float64 sums in any order. Mean, variance and 1/sqrt per row in float64.
    A row below TINY has X = 0, so it normalizes to 0 (then bias) with no special case."""
    width = x.shape[-1]
    if width > 2 ** (53 - 2 * LN_BITS):
        raise EngineError(f"layer_norm: width {width} too large for exact sums (at most {2 ** (53 - 2 * LN_BITS)})")
    peak = x.abs().amax(dim=-1, keepdim=True)
    safe = torch.where(peak >= _c(TINY, peak), peak, _c(1.0, peak))
    big = (x * (_c(2.0**LN_BITS, safe) / safe)).round_().double()
    count = _c(float(width), big)
    mean = big.sum(dim=-1, keepdim=True).div_(count)
    var = (big * big).sum(dim=-1, keepdim=True).div_(count).sub_(mean * mean).clamp_(min=0.0)
    # x = big * unit with unit = safe * 2**-20, so eps / unit**2 = (eps * 2**40) / safe**2:
    # the same correctly rounded quotient (safe**2 is exact in float64, both sides normal).
    s = safe.double()
    rstd = _c(1.0, var) / var.add_(_c(eps * 2.0 ** (2 * LN_BITS), s) / (s * s)).sqrt_()
    return big.sub_(mean).mul_(rstd).float().mul_(weight).add_(bias)


def _exp2_f64(x: np.ndarray) -> np.ndarray:
    """2**x in float64 from basic operations only (numpy ufuncs, no FMA): x = k + f with k
    an integer and f in [0, 1), 2**f by its Taylor series (error < 1e-17), 2**k by bits."""
    k = np.floor(x)
    f = (x - k) * 0.6931471805599453  # f * ln 2
    term, total = np.ones_like(f), np.ones_like(f)
    for n in range(1, 24):
        term = term * f / n
        total = total + term
    bits = ((k.astype(np.int64) + 1023) << 52).view(np.float64)  # exact 2**k, k in [-1022, 1023]
    return total * bits


def lookup(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """table[idx] for int32 indices (index_select is the fastest gather on the CPU)."""
    return table.index_select(0, idx.reshape(-1)).view(idx.shape)


def gelu_table() -> torch.Tensor:
    """float32 tanh-GELU at x = i / 2**10, |x| <= 8: gelu = x / (1 + 2**(-2 a log2 e)) with
    a = sqrt(2/pi) (x + 0.044715 x**3), which is 0.5 x (1 + tanh a)."""
    x = np.arange(-GELU_RANGE * 2**GELU_STEP_BITS, GELU_RANGE * 2**GELU_STEP_BITS + 1) / 2.0**GELU_STEP_BITS
    a = math.sqrt(2.0 / math.pi) * (x + 0.044715 * (x * x * x))
    return torch.from_numpy((x / (1.0 + _exp2_f64(-2.0 * a * 1.4426950408889634))).astype(np.float32))


def gelu(x: Tensor, table: Tensor) -> Tensor:
    """Tanh-GELU by lookup at the nearest grid point; x > 8 passes through (gelu(8) = 8 to
    1e-6 relative); x < -8 gives gelu(-8), about -1e-14."""
    limit = GELU_RANGE * 2**GELU_STEP_BITS
    # x * 2**10 + limit + 0.5 truncated is round-half-up to the grid, offset to index >= 0
    # (x * 2**10 is exact: the sum rounds once, fused or not).
    idx = torch.add(_c(limit + 0.5, x), x, alpha=2**GELU_STEP_BITS).clamp_(0, 2 * limit).int()
    # Pass-through as a lerp weight of exactly 1 (x > 8) or 0, which returns x or the table
    # value exactly (no entry is -0): float ops beat a bool compare and where 4x.
    through = torch.sub(x, _c(GELU_RANGE, x)).clamp_(min=0).sign_()
    return lookup(table, idx).lerp_(x, through)


def exp_table() -> torch.Tensor:
    """float32 integers floor(2**20 * 2**(-i / 2**8)) for i = 0 .. 20 * 2**8, then a 0 that
    masked keys index. Every entry is an integer below 2**24: exact in float32."""
    steps = np.arange(EXP_ONE_BITS * 2**EXP_STEP_BITS + 1) / -(2.0**EXP_STEP_BITS)
    values = np.floor(_exp2_f64(steps) * 2.0**EXP_ONE_BITS)
    return torch.from_numpy(np.append(values, 0.0).astype(np.float32))


def prob_max(n_positions: int) -> tuple[int, torch.dtype]:
    """Largest weight P of the PV matmul, and the dtype that sums P * V exactly: float32 while
    P * 127 * n_positions < 2**24 leaves at least 9 bits of weight, else float64, 14 bits."""
    p = (2**24 - 1) // (QMAX * n_positions)
    return (min(p, 2**14 - 1), torch.float32) if p >= 2**9 - 1 else (2**14 - 1, torch.float64)


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
    see: the rest would get weight exactly 0."""
    block, tk = ATTENTION_BLOCK, k.shape[-2]
    if q.shape[-2] <= block:  # one block (a decode step): no slicing, every key is read
        wide = _attention(q, q_scale, k, k_mult, v, v_scale, mask, table, *pv_max, scores)
        return wide.float() if out is None else out.copy_(wide)
    out = torch.empty(q.shape, device=q.device) if out is None else out
    for lo in range(0, q.shape[-2], block):
        keys = min(tk, last_key + lo + block)
        rows = slice(lo, lo + block)
        out[..., rows, :].copy_(_attention(
            q[..., rows, :], q_scale[..., rows, :], k[..., :keys, :], k_mult[..., :keys], v[..., :keys, :],
            v_scale[..., :keys], None if mask is None else mask[..., rows, :keys], table, *pv_max,
            None if scores is None else scores[..., rows, :keys],
        ))
    return out


def integer_scores(q: Tensor, k: Tensor, path: str | None = None) -> Tensor:
    """QK^T of float32 integers |x| <= 127 [..., T, d], [..., Tk, d] -> float32 [..., T, Tk]: the
    integers attention's float32 matmul gives, by int8 matmuls (measured 1.5x faster over
    whole sequences; a step's single query stays with the batched float matmul)."""
    *lead, tq, d = q.shape
    tk = k.shape[-2]
    out = torch.empty(*lead, tq, tk, device=q.device)
    pairs = zip(q.to(torch.int8).reshape(-1, tq, d), k.to(torch.int8).reshape(-1, tk, d))
    for o, (a, b) in zip(out.view(-1, tq, tk), pairs):
        o.copy_(int_matmul(a, b, path))
    return out


def causal_mask(query_pos: Tensor, keys: int) -> Tensor:
    """float32 [..., Tq, keys]: +inf where key j comes after the query's position, else 0."""
    inf, zero = (const(c, torch.float32, query_pos.device) for c in (math.inf, 0.0))
    return torch.where(torch.arange(keys, device=query_pos.device) > query_pos[..., None], inf, zero)


def _attention(
    q: Tensor, q_scale: Tensor, k: Tensor, k_mult: Tensor, v: Tensor, v_scale: Tensor,
    mask: Tensor | None, table: Tensor, p_max: int, pv_dtype: torch.dtype, u: Tensor | None = None,
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
    if u is None:  # bmm on [batch * head] rather than matmul's broadcasting: fewer ops a call
        u = torch.bmm(q.reshape(-1, tq, d), k.reshape(-1, keys, d).transpose(1, 2)).view(*lead, tq, keys)
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
    wmax = torch.where(wmax > _c(0.0, wmax), wmax, _c(1.0, wmax))
    p = w.mul_(_c(p_max, wmax) / wmax).round_()
    p = p if p.dtype == pv_dtype else p.to(pv_dtype)  # even a no-op cast costs a dispatch
    acc = torch.bmm(p.view(-1, tq, keys), v.reshape(-1, keys, d)).view(*lead, tq, d)
    # float32 operands promote to float64 inside these ops, exactly (as separate casts would).
    return torch.mul(acc, wmax / total.mul_(const(p_max, torch.float64, total.device)))
