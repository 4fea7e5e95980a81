"""commaVQ token facts: the one owner of the layouts and of the token-array validator.

A frame is `FRAME_TOKENS` (128) ids in 0..`TOKEN_VALUES`-1, stored either flat `(T, 128)`
or as the tokenizer's grid `(T, 8, 16)`; a batch of drives adds a leading dimension. The
model's BOS id (1024) never appears in data. The engine (`engine/inputs.py`), the data
loader (`models/data.py`) and the compressor all check arrays here, each raising its own
package's exception.
"""
from __future__ import annotations

import numpy as np

TOKEN_VALUES = 1024
FRAME_TOKENS = 128
FRAME_SHAPE = (8, 16)
LAYOUTS = ((FRAME_TOKENS,), FRAME_SHAPE)  # the frame part of a (T, 128) or (T, 8, 16) array


def split_layout(shape: tuple[int, ...], frame_tokens: int = FRAME_TOKENS) -> tuple[bool, tuple[int, ...]] | None:
    """(batched, frame shape) of an array of frames of `frame_tokens` ids: (T, F), (T, h, w)
    with h * w == F, or either with a leading batch dimension; None for anything else."""
    if len(shape) == 2 and shape[1] == frame_tokens:
        return False, shape[1:]
    if len(shape) == 3 and shape[2] == frame_tokens:
        return True, shape[2:]
    if len(shape) == 3 and shape[1] * shape[2] == frame_tokens:
        return False, shape[1:]
    if len(shape) == 4 and shape[2] * shape[3] == frame_tokens:
        return True, shape[2:]
    return None


def check_ids(array: np.ndarray, error: type[Exception], source: str = "tokens", values: int = TOKEN_VALUES) -> None:
    """Raise `error` unless `array` holds integers in 0..values-1."""
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "iu":
        raise error(f"{source}: token ids must be an integer array, got {getattr(array, 'dtype', type(array).__name__)}")
    if array.size:
        low, high = int(array.min()), int(array.max())
        if low < 0 or high >= values:
            raise error(f"{source}: token values must be in 0..{values - 1}, got {low}..{high}")


def frame_tokens(array: np.ndarray, error: type[Exception] = ValueError, source: str = "tokens",
                 min_frames: int = 0) -> np.ndarray:
    """Check one commaVQ segment, `(T, 8, 16)` or `(T, 128)` ids 0..1023 with at least
    `min_frames` frames, and return it as `(T, 128)` int64; anything else raises `error`."""
    shape = getattr(array, "shape", ())
    if len(shape) < 2 or shape[1:] not in LAYOUTS or shape[0] < min_frames:
        raise error(f"{source}: expected tokens shaped (T, 8, 16) or (T, 128) with T >= {min_frames}, got {shape}")
    check_ids(array, error, source)
    return array.reshape(shape[0], FRAME_TOKENS).astype(np.int64)
