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
MATMUL_PATHS = ("int_mm", "float32", "float64")

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
    path = path or ("int_mm" if a.device.type in ("cpu", "cuda") else "float64")
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


def _div(numerator: float, x: torch.Tensor) -> torch.Tensor:
    """numerator / x, one correctly rounded division (a Python-scalar operand may become a
    multiplication by a reciprocal on CUDA, so both operands are tensors)."""
    return torch.full_like(x, numerator) / x


def _row_peak(x: torch.Tensor) -> torch.Tensor:
    """max |x| per row, keepdim: two exact reductions, no |x| temporary."""
    return torch.maximum(x.amax(dim=-1, keepdim=True), x.amin(dim=-1, keepdim=True).neg_())


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 [..., K] -> (int8 [..., K], float32 scale [...]): per row, scale = max|x| / 127,
    q = round-half-even(x * (127 / max|x|)), so |q| <= 127. Rows below TINY become zero."""
    peak = _row_peak(x)
    live = peak >= TINY
    # A dead row multiplies by 0, so its integers are 0 (x is finite). No clamp is needed:
    # |x| <= peak, so |x * fl(127 / peak)| <= 127 (1 + 2**-24)**2 < 127.5 rounds to <= 127.
    inv = torch.where(live, _div(QMAX, peak), 0.0)
    q = (x * inv).round_().to(torch.int8)
    return q, torch.where(live, peak / torch.full_like(peak, QMAX), 0.0).squeeze(-1)


def linear(x: torch.Tensor, lin: QuantizedLinear, path: str | None = None) -> torch.Tensor:
    """float32 [M, K] -> float32 [M, N]: quantize x per row, exact integer matmul, rescale.
    In-place passes: fresh CPU tensors cost page faults, more than the arithmetic."""
    xq, xs = quantize_rows(x)
    y = int_matmul(xq, lin.weight, path).float().mul_(xs[:, None]).mul_(lin.scale)
    return y if lin.bias is None else y.add_(lin.bias)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """Row-local LayerNorm: x -> integers X = round(x * 2**20 / max|x|), so |X| <= 2**20;
    sum(X) <= 2**20 * D and sum(X**2) <= 2**40 * D are integers below 2**53 for D <= 8192,
    hence exact as float64 sums in any order. Mean, variance and 1/sqrt per row in float64.
    A row below TINY has X = 0, so it normalizes to 0 (then bias) with no special case."""
    width = x.shape[-1]
    if width > 2 ** (53 - 2 * LN_BITS):
        raise EngineError(f"layer_norm: width {width} too large for exact sums (at most {2 ** (53 - 2 * LN_BITS)})")
    peak = _row_peak(x)
    safe = torch.where(peak >= TINY, peak, 1.0)
    big = (x * _div(2.0**LN_BITS, safe)).round_().double()
    count = torch.full_like(big[..., :1], width)
    mean = big.sum(dim=-1, keepdim=True) / count
    var = ((big * big).sum(dim=-1, keepdim=True) / count - mean * mean).clamp_(min=0.0)
    unit = safe.double() / torch.full_like(mean, 2.0**LN_BITS)  # x = big * unit, exactly
    rstd = _div(1.0, torch.sqrt(var + _div(eps, unit * unit)))
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


def gelu(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Tanh-GELU by lookup at the nearest grid point; x > 8 passes through (gelu(8) = 8 to
    1e-6 relative); x < -8 gives gelu(-8), about -1e-14."""
    limit = GELU_RANGE * 2**GELU_STEP_BITS
    # x * 2**10 + limit + 0.5 truncated is round-half-up to the grid, offset to index >= 0.
    idx = (x * 2.0**GELU_STEP_BITS).add_(limit + 0.5).clamp_(0, 2 * limit).int()
    out = lookup(table, idx)
    return torch.where(x > GELU_RANGE, x, out, out=out)


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


def attention(
    q: Tensor, q_scale: Tensor, k: Tensor, k_scale: Tensor, v: Tensor, v_scale: Tensor,
    allowed: Tensor, table: Tensor, pv_max: tuple[int, torch.dtype],
) -> Tensor:
    """q int8 [..., Tq, d], k/v int8 [..., Tk, d], scales [..., T], allowed bool [..., Tq, Tk]
    (every query row must allow key 0) -> float32 [..., Tq, d]. Queries go in blocks, each
    reading keys only up to the last one it may see: the rest would get weight exactly 0."""
    out = []
    for lo in range(0, q.shape[-2], ATTENTION_BLOCK):
        mask = allowed[..., lo : lo + ATTENTION_BLOCK, :]
        keys = int(mask.reshape(-1, mask.shape[-1]).any(dim=0).nonzero().max()) + 1
        cut = slice(lo, lo + ATTENTION_BLOCK)
        out.append(_attention(q[..., cut, :], q_scale[..., cut], k[..., :keys, :], k_scale[..., :keys],
                              v[..., :keys, :], v_scale[..., :keys], mask[..., :keys], table, *pv_max))
    return torch.cat(out, dim=-2)


def _attention(
    q: Tensor, q_scale: Tensor, k: Tensor, k_scale: Tensor, v: Tensor, v_scale: Tensor,
    allowed: Tensor, table: Tensor, p_max: int, pv_dtype: torch.dtype,
) -> Tensor:
    """QK^T: float32 matmul of integers, |sum| <= 127**2 * d < 2**24 for d <= 1040: exact.
    u = QK * (k_scale * 2**8 log2(e) / sqrt(d)), masked to -inf; the exponent on a 2**-8
    grid is i = trunc((max u - u) * q_scale) (>= 0; computed on -u), E = table[i] = floor(2**20 * 2**(-i/256))
    (0 for masked keys and far tails). V's per-token scale folds into the weights:
    w = E * v_scale, P = round(w * p_max / max w) in 0..p_max, so |sum P V| <= p_max * 127 * Tk,
    exact in `pv_dtype` (see `prob_max`); sum E <= 2**20 * Tk < 2**53 is exact in float64.
    out = (P V) * max w / (p_max * sum E)."""
    d = q.shape[-1]
    if d > F32_EXACT_K:
        raise EngineError(f"attention: head_dim {d} exceeds {F32_EXACT_K}, QK^T would not be exact in float32")
    u = torch.matmul(q.float(), k.float().transpose(-1, -2))  # QK^T, then in place:
    # Negated scores (negation is exact): -u - min(-u) is bit for bit top - u.
    u.mul_((k_scale * torch.tensor(-(2.0**EXP_STEP_BITS) * 1.4426950408889634 / math.sqrt(d))).unsqueeze(-2))
    u.masked_fill_(~allowed, math.inf)
    low = u.amin(dim=-1, keepdim=True)
    # A zero query row has u = 0 on every key, so any positive scale gives the same weights;
    # 1 keeps masked keys at +inf rather than inf * 0.
    q_scale = torch.where(q_scale > 0, q_scale, 1.0)
    # trunc of the non-negative difference is its floor; masked keys (+inf) clamp to the 0 entry.
    idx = u.sub_(low).mul_(q_scale.unsqueeze(-1)).clamp_(max=table.shape[0] - 1).int()
    e = lookup(table, idx)
    total = e.sum(dim=-1, keepdim=True, dtype=torch.float64)
    w = e.mul_(v_scale.unsqueeze(-2))
    wmax = w.amax(dim=-1, keepdim=True)
    wmax = torch.where(wmax > 0, wmax, 1.0)
    p = w.mul_(_div(p_max, wmax)).round_()
    acc = torch.matmul(p.to(pv_dtype), v.to(pv_dtype)).double()
    norm = wmax.double() / (total * p_max)
    return (acc * norm).float()
