"""The range decoder, compiled by numba: decodes what constriction's `RangeEncoder` (32-bit
words, 64-bit state) wrote under integer frequency tables of PRECISION bits.

Ours rather than constriction's `RangeDecoder` because a decoder step is one call into
Python per token (about 3 us with the float conversion of the table), and a numba loop that
steps the model, mixes and decodes a whole frame (`frame_kernel`) must decode inside the
loop. The arithmetic is the standard range coder's, which constriction's encoder inverts:

    scale = range >> PRECISION;  q = (point - lower) / scale  (mod 2**64)
    symbol s: cum[s] <= q < cum[s + 1];  lower += scale cum[s];  range = scale freq[s]
    while range < 2**32: lower, range, point shifted left 32 bits, the next word into point

A table given to constriction as the weights freq - 1 (`coder.py`) quantizes back to exactly
freq, so the symbol intervals are the same on both sides. Tests decode constriction's output
for random tables and streams (`tests/test_compress_coder.py`).

State: uint64 [4] = lower, range, point, index of the next word.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .frequencies import PRECISION

_WORD = np.uint64(32)
_PRECISION = np.uint64(PRECISION)
_LIMIT = np.uint64(1 << PRECISION)
_LOW_RANGE = np.uint64(1 << 32)  # below this the range is renormalized
_WORD_MASK = np.uint64(0xFFFFFFFF)


@njit(cache=True)
def start(words, state):
    """The state before the first symbol: the first two words as the point (missing words
    read as zeros), lower 0, range 2**64 - 1."""
    point = np.uint64(0)
    taken = 0
    while taken < 2 and taken < words.shape[0]:
        point = (point << _WORD) | np.uint64(words[taken])
        taken += 1
    if 0 < taken < 2:
        point = point << _WORD
    state[0] = np.uint64(0)
    state[1] = np.uint64(0xFFFFFFFFFFFFFFFF)
    state[2] = point
    state[3] = np.uint64(taken)


@njit(cache=True)
def decode_symbol(freq, state, words):
    """The next symbol under the table `freq` (int64 [symbols], summing to 2**PRECISION), or
    -1 if the stream cannot have been written with it (a quantile past the table)."""
    lower, span, point = state[0], state[1], state[2]
    scale = span >> _PRECISION
    quantile = (point - lower) // scale
    if quantile >= _LIMIT:
        return -1
    target = np.int64(quantile)
    symbol, cumulative = 0, np.int64(0)
    while cumulative + freq[symbol] <= target:
        cumulative += freq[symbol]
        symbol += 1
        if symbol == freq.shape[0]:
            return -1
    lower = lower + scale * np.uint64(cumulative)
    span = scale * np.uint64(freq[symbol])
    if span < _LOW_RANGE:
        lower = lower << _WORD
        span = span << _WORD
        point = point << _WORD
        index = state[3]
        if index < np.uint64(words.shape[0]):
            point = point | np.uint64(words[index])
            state[3] = index + np.uint64(1)
    state[0], state[1], state[2] = lower, span, point
    return symbol


@njit(cache=True)
def decode_rows(freq, state, words, out):
    """One symbol per row of `freq` [n, symbols], in row order, into `out` [n]. Returns the
    first row that failed, or -1."""
    for r in range(freq.shape[0]):
        symbol = decode_symbol(freq[r], state, words)
        if symbol < 0:
            return r
        out[r] = symbol
    return -1
