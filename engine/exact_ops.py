"""The operations of exact numerics, and their rules: bit-identical on any machine, thread
count, ISA and batch. Here: integer matmuls, row quantization, LayerNorm, GELU, and the
helpers the other exact ops share (constants, table lookup, float64 2**x); attention, under
the same rules, is in `exact_attention`.

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


def int_matmul(a: torch.Tensor, b: torch.Tensor, path: str | None = None, out: Tensor | None = None) -> torch.Tensor:
    """a int8 [M, K] @ b int8 [N, K].T -> int32 [M, N] (into `out`, contiguous, if given), exact.
    Every path returns the same integers (the true dot products), whatever the algorithm,
    order or thread count."""
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
    if path == "int_mm" and a.device.type == "cpu":  # ATen's int8 GEMM, straight into `out`
        if k == 1:  # torch 2.13's CPU _int_mm returns zeros for K == 1 (tested); a zero column is exact
            a, b = (torch.nn.functional.pad(t, (0, 1)) for t in (a, b))
        return torch._int_mm(a, b.t(), out=out)
    result = _int_matmul(a, b, path)
    return result if out is None else out.copy_(result)


def _int_matmul(a: Tensor, b: Tensor, path: str) -> Tensor:
    """`int_matmul` on its other paths."""
    k = a.shape[1]
    if path == "triton":
        import kernels  # lazily: CPU users never need Triton

        return kernels.int8_matmul(a.contiguous(), b.contiguous())
    if path == "int_mm":  # CUDA's cuBLASLt int8 GEMM: M >= 17, K and N multiples of 8.
        m, n = a.shape[0], b.shape[0]
        pad_k, pad_n = -k % 8, -n % 8
        a = torch.nn.functional.pad(a, (0, pad_k, 0, max(17 - m, 0)))
        b = torch.nn.functional.pad(b, (0, pad_k, 0, pad_n))
        return torch._int_mm(a, b.t())[:m, :n]
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


def const_like(value: float, like: Tensor) -> Tensor:
    """`const` in `like`'s dtype and device."""
    return const(value, like.dtype, like.device)


def quantize_rows(
    x: Tensor, ints: bool = True, dead_scale: Tensor | None = None, out: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """float32 [..., K] -> (q [..., K], scale [..., 1]): per row, scale = max|x| / 127,
    q = round-half-even(x * (127 / max|x|)), so |q| <= 127; int8, or (`ints=False`) float32
    holding the same integers, into `out` if given (any strides). Rows below TINY become
    zero, with scale 0 or `dead_scale`."""
    peak = x.abs().amax(dim=-1, keepdim=True)
    live = peak >= const_like(TINY, peak)
    zero = const_like(0.0, peak)
    # A dead row multiplies by 0, so its integers are 0 (x is finite). No clamp is needed:
    # |x| <= peak, so |x * fl(127 / peak)| <= 127 (1 + 2**-24)**2 < 127.5 rounds to <= 127.
    q = torch.mul(x, torch.where(live, const_like(QMAX, peak) / peak, zero), out=out).round_()
    scale = torch.where(live, peak / const_like(QMAX, peak), zero if dead_scale is None else dead_scale)
    return (q.to(torch.int8) if ints else q), scale


def quantize_heads(qkv: Tensor, dead_scale: Tensor, kv_factor: Tensor, vals: Tensor, kv_scale: Tensor) -> Tensor:
    """A chunk's q, k and v, each (token, part, head) row by `quantize_rows` (float32
    integers): qkv float32 [rows, chunk, 3, head, d] into vals [3, rows, head, chunk, d] and
    kv_scale [2, rows, head, 1, chunk] (keys' times kv_factor [2, 1, 1]); dead rows take their
    part's dead_scale [3, 1, 1]. Returns the queries' scales [rows, chunk, head, 1]."""
    _, scales = quantize_rows(qkv, ints=False, dead_scale=dead_scale, out=vals.permute(1, 3, 0, 2, 4))
    torch.mul(scales[:, :, 1:], kv_factor, out=kv_scale.permute(1, 4, 0, 2, 3))
    return scales[:, :, 0]


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
    safe = torch.where(peak >= const_like(TINY, peak), peak, const_like(1.0, peak))
    big = (x * (const_like(2.0**LN_BITS, safe) / safe)).round_().double()
    count = const_like(float(width), big)
    mean = big.sum(dim=-1, keepdim=True).div_(count)
    var = (big * big).sum(dim=-1, keepdim=True).div_(count).sub_(mean * mean).clamp_(min=0.0)
    # x = big * unit with unit = safe * 2**-20, so eps / unit**2 = (eps * 2**40) / safe**2:
    # the same correctly rounded quotient (safe**2 is exact in float64, both sides normal).
    s = safe.double()
    rstd = const_like(1.0, var) / var.add_(const_like(eps * 2.0 ** (2 * LN_BITS), s) / (s * s)).sqrt_()
    return big.sub_(mean).mul_(rstd).float().mul_(weight).add_(bias)


def exp2_f64(x: np.ndarray) -> np.ndarray:
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
    return torch.from_numpy((x / (1.0 + exp2_f64(-2.0 * a * 1.4426950408889634))).astype(np.float32))


def gelu(x: Tensor, table: Tensor) -> Tensor:
    """Tanh-GELU by lookup at the nearest grid point; x > 8 passes through (gelu(8) = 8 to
    1e-6 relative); x < -8 gives gelu(-8), about -1e-14."""
    limit = GELU_RANGE * 2**GELU_STEP_BITS
    # x * 2**10 + limit + 0.5 truncated is round-half-up to the grid, offset to index >= 0
    # (x * 2**10 is exact: the sum rounds once, fused or not).
    idx = torch.add(const_like(limit + 0.5, x), x, alpha=2**GELU_STEP_BITS).clamp_(0, 2 * limit).int()
    # Pass-through as a lerp weight of exactly 1 (x > 8) or 0, which returns x or the table
    # value exactly (no entry is -0): float ops beat a bool compare and where 4x.
    through = torch.sub(x, const_like(GELU_RANGE, x)).clamp_(min=0).sign_()
    return lookup(table, idx).lerp_(x, through)
