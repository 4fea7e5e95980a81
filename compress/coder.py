"""Logits -> integer frequencies, and range coding of one token stream with them.

Frequencies are a function of the logits' bits that uses only IEEE-754 basic arithmetic
(correctly rounded everywhere) and integers, never libm or numpy's SIMD `exp`, whose last
bits differ between CPUs. So encoder and decoder agree whenever the engine's logits do.

Every real token gets at least 1 of `TOTAL = 2**PRECISION`; BOS never occurs in data and
gets nothing. The table is handed to constriction's range coder as the float weights
`frequency - 1`, which its fast (`perfect=False`) quantizer maps back to exactly `frequency`:
with weights summing to `TOTAL - symbols` its scale is exactly 1 and all sums are exact.
"""
from __future__ import annotations

import math

import constriction
import numpy as np

from .errors import CompressError, ModelMismatchError

PRECISION = 24  # constriction's Categorical model works at 24-bit precision
TOTAL = 1 << PRECISION
# exp2 values are floored to integers below 2**WEIGHT_BITS, so weight * TOTAL fits in int64.
WEIGHT_BITS = 38
LOG2_E = 1.4426950408889634
# Taylor coefficients of 2**f = exp(f ln 2) on [0, 1), highest degree first (error < 1e-10).
EXP2_COEFFICIENTS = tuple(math.log(2) ** k / math.factorial(k) for k in range(11, -1, -1))
CATEGORICAL = constriction.stream.model.Categorical(perfect=False)


def _exp2(x: np.ndarray) -> np.ndarray:
    """2**x for x <= 0 with basic float64 operations only: bit-identical on any machine."""
    whole = np.floor(x)
    fraction = x - whole  # exact
    result = np.full_like(x, EXP2_COEFFICIENTS[0])
    for coefficient in EXP2_COEFFICIENTS[1:]:
        result = result * fraction + coefficient
    return np.ldexp(result, whole.astype(np.int32))


def frequencies(logits: np.ndarray, symbols: int) -> np.ndarray:
    """int64 frequencies [rows, symbols], each >= 1, every row summing to TOTAL, from the
    first `symbols` float32 logits of each row (a softmax, quantized deterministically)."""
    x = np.asarray(logits, dtype=np.float32)[:, :symbols].astype(np.float64)
    if not np.isfinite(x).all():
        raise CompressError("the model produced non-finite logits")
    x = (x - x.max(axis=1, keepdims=True)) * LOG2_E
    np.maximum(x, -(WEIGHT_BITS + 1), out=x)  # below this the weight floors to 0 anyway
    weights = np.floor(np.ldexp(_exp2(x), WEIGHT_BITS)).astype(np.int64)
    freq = weights * (TOTAL - symbols) // weights.sum(axis=1, keepdims=True) + 1
    # The floors leave fewer than `symbols` units; the most likely token takes them.
    rows = np.arange(freq.shape[0])
    freq[rows, weights.argmax(axis=1)] += TOTAL - freq.sum(axis=1)
    return freq


def code_length(freq: np.ndarray, tokens: np.ndarray) -> float:
    """Ideal code length in bits of `tokens` under the rows of `freq`: sum(-log2 p)."""
    chosen = freq[np.arange(len(tokens)), tokens]
    return float(np.sum(PRECISION - np.log2(chosen)))


def _weights(freq: np.ndarray) -> np.ndarray:
    return (np.asarray(freq, dtype=np.int64) - 1).astype(np.float64).reshape(-1, freq.shape[-1])


class TokenEncoder:
    """Range-codes one stream of tokens, each under its own frequency table."""

    def __init__(self) -> None:
        self._coder = constriction.stream.queue.RangeEncoder()

    def encode(self, tokens: np.ndarray, freq: np.ndarray) -> None:
        """Append `tokens` [n], coded with `freq` [n, symbols]."""
        self._coder.encode(np.asarray(tokens, dtype=np.int32).reshape(-1), CATEGORICAL, _weights(freq))

    def finish(self) -> np.ndarray:
        """The compressed stream as 32-bit words."""
        return self._coder.get_compressed()


class TokenDecoder:
    """Inverse of `TokenEncoder`: decodes tokens one table at a time."""

    def __init__(self, words: np.ndarray) -> None:
        self._coder = constriction.stream.queue.RangeDecoder(np.asarray(words, dtype=np.uint32))

    def decode(self, freq: np.ndarray) -> np.ndarray:
        """The next tokens, one per row of `freq` [n, symbols]."""
        try:
            return self._coder.decode(CATEGORICAL, _weights(freq)).astype(np.int64)
        except Exception as exc:  # constriction reports invalid streams with assorted types
            raise ModelMismatchError(f"the range decoder failed on an intact payload ({exc}): "
                                     "the model or numerics differ from the encoder's") from exc
