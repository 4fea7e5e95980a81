"""Range coding of token streams under integer frequency tables (see `frequencies.py`).

A table is handed to constriction's range encoder as the float weights `frequency - 1`, which
its fast (`perfect=False`) quantizer maps back to exactly `frequency`: with weights summing
to `TOTAL - symbols` its scale is exactly 1 and all sums are exact. Decoding is ours
(`range_decoder`, compiled), which reads the integer tables directly.

Lanes decoded in lockstep share one stream, interleaved in a fixed order (`interleaved_rows`:
at each step, the lanes still running, in lane order), so a decoder step is one `decode` call
with one table per active lane, and the encoder writes the same order in one `encode` call.
"""
from __future__ import annotations

from collections.abc import Sequence

import constriction
import numpy as np

from . import range_decoder
from .errors import CompressError, ModelMismatchError
from .frequencies import PRECISION, TOTAL, frequencies

__all__ = ["PRECISION", "TOTAL", "frequencies", "code_length", "interleaved_rows", "TokenEncoder", "TokenDecoder"]

CATEGORICAL = constriction.stream.model.Categorical(perfect=False)
ENCODE_BLOCK_ROWS = 256


def code_length(freq: np.ndarray, tokens: np.ndarray) -> float:
    """Ideal code length in bits of `tokens` under the rows of `freq`: sum(-log2 p)."""
    chosen = freq[np.arange(len(tokens)), tokens]
    return float(np.sum(PRECISION - np.log2(chosen)))


def interleaved_rows(lengths: Sequence[int], start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """(lane, step) of every token coded at steps start..stop-1 of lanes of these lengths
    (tokens per lane), in stream order: step by step, the lanes still running in lane order."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.ndim != 1 or (lengths < 0).any() or not 0 <= start <= stop:
        raise CompressError(f"bad interleaving: lengths {lengths.tolist()}, steps {start}..{stop}")
    step, lane = np.nonzero(np.arange(start, stop)[:, None] < lengths[None, :])
    return lane, step + start


def _weights(freq: np.ndarray) -> np.ndarray:
    """constriction's float weights for integer tables [n, symbols]: one vectorized pass."""
    freq = np.asarray(freq)
    if freq.ndim != 2 or freq.dtype.kind not in "iu":
        raise CompressError(f"frequency tables must be integer [n, symbols], got {freq.dtype} {freq.shape}")
    weights = freq.astype(np.float64)
    weights -= 1  # in place: a separate pass over a cache-sized block is cheaper than a casting ufunc
    return weights


class TokenEncoder:
    """Range-codes one stream of tokens, each under its own frequency table."""

    def __init__(self) -> None:
        self._coder = constriction.stream.queue.RangeEncoder()

    def encode(self, tokens: np.ndarray, freq: np.ndarray) -> None:
        """Append `tokens` [n], coded with `freq` [n, symbols]."""
        tokens = np.asarray(tokens, dtype=np.int32).reshape(-1)
        if len(tokens) != len(freq):
            raise CompressError(f"{len(tokens)} tokens but {len(freq)} frequency tables")
        # Blocks of rows whose float weights stay in cache: converting a whole lane at once
        # costs more than constriction's coding itself.
        for start in range(0, len(tokens), ENCODE_BLOCK_ROWS):
            stop = start + ENCODE_BLOCK_ROWS
            self._coder.encode(tokens[start:stop], CATEGORICAL, _weights(freq[start:stop]))

    def finish(self) -> np.ndarray:
        """The compressed stream as 32-bit words."""
        return self._coder.get_compressed()


class TokenDecoder:
    """Inverse of `TokenEncoder` (`range_decoder`, compiled): one call decodes a token per
    table row, e.g. one per active lane of an interleaved stream."""

    def __init__(self, words: np.ndarray) -> None:
        self.words = np.ascontiguousarray(words, dtype=np.uint32)
        self.state = np.empty(4, dtype=np.uint64)  # range_decoder's state, advanced in place
        range_decoder.start(self.words, self.state)

    def decode(self, freq: np.ndarray) -> np.ndarray:
        """The next tokens, one per row of `freq` [n, symbols]."""
        freq = np.asarray(freq)
        if freq.ndim != 2 or freq.dtype.kind not in "iu":
            raise CompressError(f"frequency tables must be integer [n, symbols], got {freq.dtype} {freq.shape}")
        out = np.empty(len(freq), dtype=np.int64)
        if range_decoder.decode_rows(np.ascontiguousarray(freq, dtype=np.int64), self.state, self.words, out) >= 0:
            raise mismatch()
        return out


def mismatch() -> ModelMismatchError:
    """What a decoder raises when an intact payload does not decode under its tables."""
    return ModelMismatchError("the range decoder failed on an intact payload: "
                              "the model or numerics differ from the encoder's")
