"""The coder's per-row table arithmetic compiled for the CPU by numba: logits -> frequency
tables (`frequencies.frequency_tables`, version 2) and the context mixer's tables
(`mixing.ContextMixer`), one call for any number of rows.

The same rules as the reference code they replace on the CPU: integers, lookups, and IEEE
basic operations on the same dtypes in the same order (numba compiles without fast-math, so
nothing is contracted or reordered). A decoder step of one row costs a few microseconds here
against 100-200 us of numpy and torch calls. Tests check them against their references
bitwise (`tests/test_compress_lockstep.py`, `tests/test_mixing.py`).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .frequencies import EXP2_TABLE, FRACTION_BITS, SCALE, SYMBOLS, TABLE_SIZE, TOTAL, WEIGHT_BITS, _exp2

_LAST_INDEX = np.float32(TABLE_SIZE - 1)
# EXP2_TABLE (320 KB, evicted from the caches by every model step) from 8 KB: entry i, with
# i = k 2**FRACTION_BITS - j (0 <= j < 2**FRACTION_BITS), is floor(_exp2(j / 2**FRACTION_BITS)
# * 2**(WEIGHT_BITS - k)): `_exp2` of -i / 2**FRACTION_BITS is exactly its fraction's value
# times 2**-k. Checked against the table at import.
_STEPS = 1 << FRACTION_BITS
_FRACTION = _exp2(np.arange(_STEPS) / _STEPS)
_POWER = np.ldexp(1.0, WEIGHT_BITS - np.arange(WEIGHT_BITS + 2))
UNIT = TOTAL - SYMBOLS  # the mass left once every symbol has its 1
SHIFT = 20  # fixed-point bits of the mixing coefficients


@njit(cache=True)
def _weight(index):
    """EXP2_TABLE[index] without the table."""
    if index == TABLE_SIZE - 1:
        return 0.0
    octaves = (index + _STEPS - 1) // _STEPS
    return np.floor(_FRACTION[octaves * _STEPS - index] * _POWER[octaves])


@njit(cache=True)
def frequency_rows(logits, out):
    """Version 2 tables of logits float32 [rows, >= symbols] into out int64 [rows, symbols]
    (symbols = out.shape[1]). Returns the first row whose maximum is not finite (a NaN
    anywhere, or +inf), or -1; the remainder goes to the first maximal logit."""
    rows, symbols = out.shape
    weights = np.empty(symbols, dtype=np.float64)
    for r in range(rows):
        x = logits[r]
        high = x[0]
        for j in range(1, symbols):
            if x[j] > high or np.isnan(x[j]):
                high = x[j]
                if np.isnan(high):
                    break
        if not np.isfinite(high):
            return r
        total = 0.0
        first = -1
        for j in range(symbols):
            s = min((high - x[j]) * SCALE, _LAST_INDEX)
            if s == 0 and first < 0:
                first = j
            weights[j] = _weight(np.int32(s))
            total += weights[j]
        ratio = np.float64(TOTAL - symbols) / total
        used = 0
        for j in range(symbols):
            f = np.int64(np.int32(weights[j] * ratio)) + 1
            out[r, j] = f
            used += f
        out[r, first] += TOTAL - used
    return -1


# Context kinds (`mixing.CONTEXTS`, in that order): the token at the cell in frame t-1, t-2;
# above or left of the cell in the frame being coded; the cell itself.
PREV, PREV2, ABOVE, LEFT, CELL = range(5)


@njit(cache=True)
def _context(kind, prev, current, cell, width):
    """Context symbol of a cell (-1: none): prev [2, 128] holds frames t-1 and t-2, current
    [128] the frame being coded (only its cells before `cell` are read)."""
    if kind == PREV or kind == PREV2:
        return prev[kind, cell]
    if kind == ABOVE:
        return current[cell - width] if cell >= width else -1
    if kind == LEFT:
        return current[cell - 1] if cell % width else -1
    return cell


@njit(cache=True)
def frame_contexts(lanes, frames, prev, kinds, width, out):
    """Every cell's context symbols, out int64 [B, K, 128] (-1: none), for lanes `lanes` whose
    frames are frames [B, 128] and whose previous frames are prev[lane] [2, 128]: what
    `end_frame` counts under, the rows `mix_rows` reads."""
    for r in range(lanes.shape[0]):
        for c in range(kinds.shape[0]):
            for cell in range(frames.shape[1]):
                out[r, c, cell] = _context(kinds[c], prev[lanes[r]], frames[r], cell, width)


@njit(cache=True)
def mix_rows(model, lanes, cells, frame_rows, current, prev, groups, kinds, width, offset, seen, v, counts,
             prior, buckets, exp, exp_shift, exp_zero, out, flat, n, sets, w):
    """The context mixer's tables (`mixing.ContextMixer`) for N rows: model tables int64
    [N, 1024]; row r codes cell cells[r] of lane lanes[r], whose frame so far is
    current[frame_rows[r]] and whose previous frames are prev[lane] [2, 128]; each context
    kind's symbol (`_context`) selects a count row. The mixer's state: each lane's group,
    offset [K], seen [groups * per_group], logits v [groups, K, buckets], counts int32
    [groups * per_group, 1024]. Writes the tables into `out` and, for `record_rows`, each
    row's count rows `flat`, n, logit sets (-1: unseen) and weights w [N, K].

    Per row, with e_k = exp(v_k) (0 unseen) and w_k = e_k / (1 + sum e), in integers:
        b_k = floor(w_k UNIT / (n_k + prior) 2**SHIFT),  a = floor((UNIT 2**SHIFT - sum b_k n_k) / UNIT),
        P(s) = floor((a M(s) + sum_k b_k c_k(s) + 2**SHIFT - a) / 2**SHIFT),
    b_k carrying w_k's counts and a the rest, rounded down so that the remainder TOTAL - sum P
    is >= 0; it goes to the first largest entry. |every term| < 2**47: exact in int64."""
    rows, k = flat.shape
    symbols = model.shape[1]
    per_group = seen.shape[0] // v.shape[0]
    b = np.empty(k, dtype=np.int64)
    e = np.empty(k, dtype=np.float64)
    y = np.empty(symbols, dtype=np.int64)
    for r in range(rows):
        lane, cell = lanes[r], cells[r]
        g = groups[lane]
        denominator = 1.0
        for c in range(k):
            f = g * per_group + _context(kinds[c], prev[lane], current[frame_rows[r]], cell, width) + offset[c]
            flat[r, c] = f
            n[r, c] = seen[f]
            sets[r, c] = -1
            e[c] = 0.0
            if seen[f] > 0:  # the set is floor(log2(n + 1)), capped
                s, t = 0, seen[f] + 1
                while t > 1:
                    t >>= 1
                    s += 1
                sets[r, c] = min(s, buckets - 1)
                e[c] = exp[(v[g, c, sets[r, c]] >> exp_shift) + exp_zero]
            denominator = denominator + e[c]  # in context order
        taken = np.int64(0)
        for c in range(k):
            w[r, c] = e[c] / denominator
            b[c] = np.int64(np.floor(w[r, c] * UNIT / (n[r, c] + prior) * np.float64(1 << SHIFT)))
            taken += b[c] * n[r, c]
        a = ((np.int64(UNIT) << SHIFT) - taken) // UNIT
        rest = (np.int64(1) << SHIFT) - a
        for s in range(symbols):  # pass by pass over the row, each one vectorized
            y[s] = a * model[r, s] + rest
        for c in range(k):
            row, weight = flat[r, c], b[c]
            for s in range(symbols):
                y[s] += weight * counts[row, s]
        used, top = np.int64(0), np.int64(0)
        for s in range(symbols):
            f = y[s] >> SHIFT
            out[r, s] = f
            used += f
            top = max(top, f)
        best = 0
        while out[r, best] != top:  # the first largest entry
            best += 1
        out[r, best] += TOTAL - used


@njit(cache=True)
def record_rows(lanes, cells, tokens, freq, model, counts, flat, n, sets, w, prior, token_out, set_out, terms_out):
    """What the mixer learns from once a frame ends, for N coded tokens (row r: lane, cell and
    token; its mixed and model tables, and `mix_rows`' flat, n, sets, w): the token, each
    context's logit set, and terms [P(token), w_k..., Q_k(token)...] with
    Q_k = (c_k(token) + prior M(token) / TOTAL) / (n_k + prior)."""
    k = flat.shape[1]
    for r in range(tokens.shape[0]):
        lane, cell, t = lanes[r], cells[r], tokens[r]
        m = model[r, t] / TOTAL
        token_out[lane, cell] = t
        terms_out[lane, cell, 0] = freq[r, t] / TOTAL
        for c in range(k):
            set_out[lane, cell, c] = sets[r, c]
            terms_out[lane, cell, 1 + c] = w[r, c]
            terms_out[lane, cell, 1 + k + c] = (counts[flat[r, c], t] + prior * m) / (n[r, c] + prior)


_index = np.arange(TABLE_SIZE - 1)
_octaves = (_index + _STEPS - 1) // _STEPS
if not np.array_equal(np.floor(_FRACTION[_octaves * _STEPS - _index] * _POWER[_octaves]), EXP2_TABLE[:-1]):
    raise AssertionError("the compact exp2 table differs from frequencies.EXP2_TABLE")
