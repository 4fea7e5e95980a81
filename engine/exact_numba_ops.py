"""The per-row operations of exact numerics (`exact_ops`; attention's are in
`exact_numba_attention`) as numba functions, for the compiled forward pass (`exact_numba`)
and the CPU's prefills (`exact_cpu`): the same IEEE basic operations on
the same dtypes in the same order, integer dot products accumulated exactly. Each mirrors
the torch function its docstring names.

numba's on-disk cache (`cache=True`) keys a compiled function on its own file only: after
editing this file, delete the `__pycache__/*.nbi` and `*.nbc` of `exact_numba` and
`exact_numba_attention` too, or their cached functions keep the old code (an installed
upgrade replaces all the files, so all recompile)."""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit
from numba.core import types
from numba.extending import intrinsic

from .exact_ops import GELU_RANGE, GELU_STEP_BITS, LN_BITS
from .quantize import QMAX, TINY

F32, F64 = np.float32, np.float64
QMAX32, TINY32, ONE32 = F32(QMAX), F32(TINY), F32(1.0)
LN_ONE32 = F32(2.0**LN_BITS)
LN_EPS_SCALE = 2.0 ** (2 * LN_BITS)  # layer_norm's eps is taken times this
GELU_SCALE32 = F32(2.0**GELU_STEP_BITS)
GELU_LIMIT = GELU_RANGE * 2**GELU_STEP_BITS
GELU_RANGE32 = F32(GELU_RANGE)
SIGN_FREE = np.int32(0x7FFFFFFF)  # a float's bits but the sign


@intrinsic
def as_float32(typingctx, bits):
    """The float32 whose bit pattern is the int32 `bits` (a register move, where a one-element
    array's view allocates)."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@njit(cache=True)
def abs_max(x):
    """max |x| (NaN if x holds one, as torch's amax): on the bit patterns, whose integer order
    is the order of |x| for non-NaN floats, and NaNs above +inf (an integer max vectorizes)."""
    bits = x.view(np.int32)
    top = np.int32(0)
    for i in range(bits.shape[0]):
        top = max(top, bits[i] & SIGN_FREE)
    return as_float32(top)


@njit(cache=True)
def quantize(x, q, dead_scale):
    """quantize_rows on one row: q (int8) = round-half-even(x * fl(127 / peak)); returns the
    scale fl(peak / 127), or `dead_scale` (float32) for a row below TINY."""
    peak = abs_max(x)
    if peak >= TINY32:
        mult = QMAX32 / peak
        for i in range(x.shape[0]):
            q[i] = np.int8(np.rint(x[i] * mult))
        return peak / QMAX32
    q[:] = 0
    return dead_scale


@njit(cache=True)
def layer_norm(x, weight, bias, eps_2_40, out):
    """exact_ops.layer_norm on one row (eps_2_40 = eps * 2**40, a float64)."""
    width = x.shape[0]
    peak = abs_max(x)
    safe = peak if peak >= TINY32 else ONE32
    factor = LN_ONE32 / safe
    big = np.empty(width, dtype=np.float64)
    s1 = F64(0.0)
    s2 = F64(0.0)
    for i in range(width):
        b = F64(np.rint(x[i] * factor))
        big[i] = b
        s1 += b
        s2 += b * b
    count = F64(width)
    mean = s1 / count
    var = s2 / count - mean * mean
    if var < 0.0:
        var = 0.0
    s = F64(safe)
    rstd = 1.0 / np.sqrt(var + eps_2_40 / (s * s))
    for i in range(width):
        out[i] = F32((big[i] - mean) * rstd) * weight[i] + bias[i]


@njit(cache=True)
def layer_norm_all(x, weight, bias, eps_2_40, out):
    """`layer_norm` on every row of x float32 [M, width] into out [M, width]."""
    for m in range(x.shape[0]):
        layer_norm(x[m], weight, bias, eps_2_40, out[m])


@njit(cache=True)
def quantize_heads(qkv, dead_scale, kv_factor, vals, q_scale, kv_scale):
    """ExactRunner._quantize_qkv for a chunk, as quantize_rows (ints=False) computes it:
    qkv float32 [rows * chunk, 3, head, d] -> vals float32 integers [3, rows, head, chunk, d],
    q_scale [rows * chunk, head], kv_scale [2, rows, head, chunk] (times kv_factor [2]); a
    dead row (below TINY) multiplies by 0 and takes dead_scale [3] of its part."""
    rows, heads, chunk, d = vals.shape[1], vals.shape[2], vals.shape[3], vals.shape[4]
    for m in range(rows * chunk):
        r, c = m // chunk, m % chunk
        for part in range(3):
            for hd in range(heads):
                x = qkv[m, part, hd]
                peak = abs_max(x)
                live = peak >= TINY32
                mult = QMAX32 / peak if live else F32(0.0)
                dst = vals[part, r, hd, c]
                for i in range(d):
                    dst[i] = np.rint(x[i] * mult)
                scale = peak / QMAX32 if live else dead_scale[part]
                if part == 0:
                    q_scale[m, hd] = scale
                else:
                    kv_scale[part - 1, r, hd, c] = scale * kv_factor[part - 1]


@njit(cache=True)
def gelu(x, table):
    """exact_ops.gelu in place: the table entry at the nearest 2**-10 grid point; x > 8 as is."""
    limit_half = F32(GELU_LIMIT + 0.5)
    top = F32(2 * GELU_LIMIT)
    for i in range(x.shape[0]):
        v = x[i]
        if v > GELU_RANGE32:
            continue
        t = limit_half + v * GELU_SCALE32
        t = min(max(t, F32(0.0)), top)
        x[i] = table[np.int32(t)]


@njit(cache=True)
def quantize_all(x, q, scales):
    """`quantize` on every row of x float32 [M, K] into q int8 [M, K] and scales [M] (dead rows: 0)."""
    for m in range(x.shape[0]):
        scales[m] = quantize(x[m], q[m], F32(0.0))


@njit(cache=True)
def rescale_all(acc, xs, scale, bias, has_bias, out):
    """The linear's epilogue on int32 dots acc [M, N]: out = ((float(acc) * xs_m) * scale_j) + bias_j."""
    for m in range(acc.shape[0]):
        if has_bias:
            for j in range(acc.shape[1]):
                out[m, j] = (F32(acc[m, j]) * xs[m]) * scale[j] + bias[j]
        else:
            for j in range(acc.shape[1]):
                out[m, j] = (F32(acc[m, j]) * xs[m]) * scale[j]


@njit(cache=True)
def linear_rows(x, q, w, scale, bias, has_bias, out):
    """exact_ops.linear on rows x [M, K] -> out [M, N]: out = ((float(q . w_j) * x_scale) *
    scale_j) + bias_j, the integer dots first, then the float32 products in a separate pass.
    Rows go in blocks of about 16 KB of int8 activations (in L1 while every weight row passes
    by: each weight is read once per block, once per call for a step's few rows)."""
    rows, n, k = x.shape[0], w.shape[0], w.shape[1]
    xs = np.empty(rows, dtype=np.float32)
    acc = np.empty((rows, n), dtype=np.int32)
    quantize_all(x, q, xs)
    block = max(1, 16384 // k)
    for low in range(0, rows, block):
        for j in range(n):
            for m in range(low, min(low + block, rows)):
                dot = np.int32(0)
                for i in range(k):
                    dot += np.int32(q[m, i]) * np.int32(w[j, i])
                acc[m, j] = dot
    rescale_all(acc, xs, scale, bias, has_bias, out)
