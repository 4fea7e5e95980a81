"""Attention's per-query operations of exact numerics (`exact_attention`) as numba functions:
a step's attention over one row's int8 cache (`attend`, for `exact_numba.forward`) and the
softmax weights of a prefill's query blocks (`softmax_digits`), under the rules of
`exact_numba_ops` (the same IEEE operations in the same order, integer sums exact; after
editing this file, delete `exact_numba`'s cached `.nbi`/`.nbc` too).

Speed: the weights run in passes that vectorize (only the table's gather does not), with
contiguous arrays (numba compiles strided ones into scalar loops)."""
from __future__ import annotations

import numpy as np
from numba import njit

from .exact_numba_ops import F32, F64, ONE32, SIGN_FREE, as_float32
from .quantize import QMAX


@njit(cache=True)
def min_value(u):
    """min of float32 u [K] (K >= 1, no NaN): an integer min over the bit patterns mapped to
    integers in the floats' order (a float min does not vectorize without fast-math). Of
    -0 and +0 it returns -0, where torch's amin may return either: u - umin is the same."""
    bits = u.view(np.int32)
    low = SIGN_FREE
    for j in range(bits.shape[0]):
        b = bits[j]
        low = min(low, b ^ ((b >> 31) & SIGN_FREE))
    return as_float32(low ^ ((low >> 31) & SIGN_FREE))


@njit(cache=True)
def exp_weights(u, umin, q_scale, v_scale, table, idx, w):
    """The softmax's weights of one query (exact_attention._attention) from its keys' scores
    u [K] (+inf: masked) and their minimum: E = table[trunc(min((u - umin) * q_scale, last))]
    (0 for masked keys and far tails), w = E * v_scale into w [K]; idx int32 [K] is scratch.
    Returns sum E (float64: integers, exact) and max w (1 where no weight is positive). In
    passes that vectorize, but for the table's gather: sum E in int64 (the same integers),
    max w on the bit patterns (w >= 0, whose integer order is theirs)."""
    keys = u.shape[0]
    last = F32(table.shape[0] - 1)
    for j in range(keys):
        idx[j] = np.int32(min((u[j] - umin) * q_scale, last))
    for j in range(keys):
        w[j] = table[idx[j]]
    total = np.int64(0)
    for j in range(keys):
        total += np.int64(w[j])
        w[j] = w[j] * v_scale[j]
    bits = w.view(np.int32)
    top = np.int32(0)
    for j in range(keys):
        top = max(top, bits[j])
    wmax = as_float32(top)
    if not wmax > F32(0.0):
        wmax = ONE32
    return F64(total), wmax


@njit(cache=True)
def attend(q, q_scale, cache, scales, pos, table, p_max, out):
    """exact_attention._attention for one query per head over keys 0..pos of one row's
    cache (int8 [2, head, position, d], scales [2, head, position]: keys' times key_factor)."""
    heads, d = q.shape
    keys = pos + 1
    u = np.empty(keys, dtype=np.float32)
    w = np.empty(keys, dtype=np.float32)
    idx = np.empty(keys, dtype=np.int32)
    acc = np.empty(d, dtype=np.int64)
    acc32 = np.empty(d, dtype=np.int32)
    # P V summed in int32 over runs of keys short enough not to overflow (|P v| <= p_max 127),
    # then in int64: int32 multiplies vectorize twice as wide.
    run = max(1, (2**31 - 1) // (p_max * QMAX))
    pm32, pm64 = F32(p_max), F64(p_max)
    for h in range(heads):
        umin = F32(np.inf)
        for j in range(keys):
            dot = np.int32(0)
            for i in range(d):
                dot += np.int32(q[h, i]) * np.int32(cache[0, h, j, i])
            uj = F32(dot) * scales[0, h, j]
            u[j] = uj
            if uj < umin:
                umin = uj
        total, wmax = exp_weights(u, umin, q_scale[h], scales[1, h], table, idx, w)
        mult = pm32 / wmax
        acc[:] = 0
        for low in range(0, keys, run):
            acc32[:] = 0
            for j in range(low, min(low + run, keys)):
                p = np.int32(np.rint(w[j] * mult))
                for i in range(d):
                    acc32[i] += p * np.int32(cache[1, h, j, i])
            for i in range(d):
                acc[i] += acc32[i]
        factor = F64(wmax) / (total * pm64)
        for i in range(d):
            out[h * d + i] = F32(F64(acc[i]) * factor)


@njit(cache=True)
def softmax_digits(scores, k_mult, v_scale, q_scale, mask, table, p_max, digits, factor):
    """exact_attention._attention's weights for a block of queries, in one pass per row:
    scores [B, Tq, K] (integer QK dots: int32, or float32 holding them), k_mult and v_scale
    [B, K], q_scale [B, Tq], mask float32 [M, Tq, K] (0 or +inf; M divides B, rows b share
    mask b // (B / M); M = 0: none). Writes P = round(w * fl(p_max / max w)) as its two 7-bit digits, digits int8
    [B, 2 Tq, K] (high rows first), and factor float64 [B, Tq] = max w / (sum E * p_max)."""
    rows, tq, keys = scores.shape
    share = rows // mask.shape[0] if mask.shape[0] else 1
    u = np.empty(keys, dtype=np.float32)
    w = np.empty(keys, dtype=np.float32)
    idx = np.empty(keys, dtype=np.int32)
    pm32, pm64 = F32(p_max), F64(p_max)
    for b in range(rows):
        for i in range(tq):
            if mask.shape[0]:
                m = mask[b // share, i]
                for j in range(keys):  # a masked key: +inf, its weight 0
                    u[j] = F32(np.inf) if m[j] != F32(0.0) else F32(scores[b, i, j]) * k_mult[b, j]
            else:
                for j in range(keys):
                    u[j] = F32(scores[b, i, j]) * k_mult[b, j]
            total, wmax = exp_weights(u, min_value(u), q_scale[b, i], v_scale[b], table, idx, w)
            mult = pm32 / wmax
            for j in range(keys):
                p = np.int32(np.rint(w[j] * mult))
                digits[b, i, j] = np.int8(p >> 7)
                digits[b, tq + i, j] = np.int8(p & 127)
            factor[b, i] = F64(wmax) / (total * pm64)
