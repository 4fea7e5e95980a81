"""The context mixer's table arithmetic: model tables and count rows -> exact mixed tables.

For a row with model table M, weights w_k and count rows c_k (n_k = sum of c_k) of its
contexts, the mixed table is

    P(s) = 1 + floor((a (M(s) - 1) + sum_k b_k c_k(s)) / 2**SHIFT),
    b_k = floor(w_k UNIT / (n_k + prior) 2**SHIFT),   a = floor((UNIT 2**SHIFT - sum_k b_k n_k) / UNIT),

b_k carrying w_k's counts and a the rest; a is rounded down so that the floors leave a
remainder TOTAL - sum_s P(s) >= 0, which goes to the row's largest entry (the first if tied).

The [N, 1024] part is one float64 matmul per call, exact: see `TableMixer.__call__`. Its
operands are laid out [K + 2, N, 1024] so that the gathered counts convert in one contiguous
copy; the matmul reads each row's [K + 2, 1024] through strides.
"""
from __future__ import annotations

import numpy as np

from .frequencies import SYMBOLS, TOTAL

UNIT = TOTAL - SYMBOLS  # mass left once every symbol has its 1
SHIFT = 20  # fixed-point bits of the mixing coefficients; keeps every sum < 2**46
TO_FIXED = float(1 << SHIFT)
FROM_FIXED = 2.0 ** -SHIFT


class TableMixer:
    """Mixes rows of a count table [rows, SYMBOLS] int32 (updated in place by its owner)
    into model tables. Keeps its work arrays between calls: allocating megabytes afresh
    every frame made the allocator fault pages in again and again."""

    def __init__(self, counts: np.ndarray, contexts: int) -> None:
        self._counts = counts
        self._k = contexts
        self._work: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def _scratch(self, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._work is None or self._work[0].shape[1] != rows:
            k = self._k
            operands = np.empty((k + 2, rows, SYMBOLS), dtype=np.float64)  # M, c_0..c_K-1, 1
            operands[k + 1] = 1.0  # never overwritten: the constant's operand
            self._work = (np.empty((k, rows, SYMBOLS), dtype=np.int32), operands,
                          np.empty((rows, 1, SYMBOLS), dtype=np.float64))
        return self._work

    def __call__(self, model: np.ndarray, count_rows: np.ndarray, w: np.ndarray, n: np.ndarray,
                 prior: float) -> tuple[np.ndarray, np.ndarray]:
        """Tables P [N, 1024] int64 for valid model tables [N, 1024] (every entry >= 1, rows
        summing to TOTAL), count rows [N, K] of the count table, weights w [N, K] (summing
        below 1) and n [N, K]; and the count rows read, [K, N, 1024] float64, valid until
        the next call."""
        b = np.floor(w * UNIT / (n + prior) * TO_FIXED).astype(np.int64)
        a = ((UNIT << SHIFT) - (b * n).sum(axis=1)) // UNIT
        gathered, operands, out = self._scratch(len(model))
        k = self._k
        # 'clip' skips the bounds check of 'raise' (the indices are always in range).
        np.take(self._counts, count_rows.T, axis=0, out=gathered, mode="clip")
        np.copyto(operands[1 : k + 1], gathered)
        np.copyto(operands[0], model)
        # y = a M + sum_k b_k c_k + (2**SHIFT - a) = a (M - 1) + sum_k b_k c_k + 2**SHIFT, so
        # P = floor(y / 2**SHIFT) before the remainder. A float64 matmul, because numpy's int64
        # (and int32 * int64) multiplies cost several times more per pass. Exact in float64:
        # c_k(s) <= n_k, and sum_k w_k < 1 by a margin (1 / (1 + sum e) > 1e-6 for K <= 5)
        # far above the rounding of w and b, so sum_k b_k n_k < UNIT 2**SHIFT and
        # 0 <= a <= 2**SHIFT; with M <= TOTAL every term is a nonnegative integer below 2**44
        # and y < 2**46. Scaled by 2**-SHIFT (exact: a power
        # of two), every partial sum, in whatever order and grouping the matmul adds (FMA or
        # not), is a multiple of 2**-SHIFT below 2**26: 46 significant bits, exact in float64.
        # So the matmul returns y / 2**SHIFT >= 0 exactly, and converting to int64 truncates:
        # the floor.
        fixed = np.concatenate([a[:, None], b, (1 << SHIFT) - a[:, None]], axis=1)
        coefficients = fixed * FROM_FIXED  # exact: integers below 2**53 times a power of two
        np.matmul(coefficients[:, None], operands.transpose(1, 0, 2), out=out)
        freq = out[:, 0].astype(np.int64)
        freq[np.arange(len(freq)), freq.argmax(axis=1)] += TOTAL - freq.sum(axis=1)
        return freq, operands[1 : k + 1]
