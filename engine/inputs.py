"""Checking and normalising the token arrays users hand to `Engine.imagine`."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .errors import EngineError


@dataclass(frozen=True)
class Layout:
    """How the caller's array was shaped, so the output can be shaped the same way."""

    batched: bool
    frame_shape: tuple[int, ...]  # (frame_tokens,) or a grid such as (8, 16)
    as_numpy: bool
    dtype: np.dtype | torch.dtype
    device: torch.device | None


def normalise_tokens(tokens: object, frame_tokens: int, max_value: int) -> tuple[torch.Tensor, Layout]:
    """-> (int64 CPU tensor [B, T, frame_tokens], layout). Accepts (T, F), (T, h, w),
    (B, T, F) and (B, T, h, w) with h * w == F, as numpy arrays or torch tensors."""
    if isinstance(tokens, np.ndarray):
        if tokens.dtype.kind not in "iu":
            raise EngineError(f"tokens must be an integer array, got dtype {tokens.dtype}")
        dtype, device, array = tokens.dtype, None, torch.from_numpy(tokens.astype(np.int64))
    elif isinstance(tokens, torch.Tensor):
        if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
            raise EngineError(f"tokens must be an integer tensor, got dtype {tokens.dtype}")
        dtype, device, array = tokens.dtype, tokens.device, tokens.detach().to("cpu", torch.int64)
    else:
        raise EngineError(f"tokens must be a numpy array or a torch tensor, got {type(tokens).__name__}")

    shape = tuple(array.shape)
    if len(shape) == 2 and shape[1] == frame_tokens:
        batched, frame_shape = False, shape[1:]
    elif len(shape) == 3 and shape[2] == frame_tokens:
        batched, frame_shape = True, shape[2:]
    elif len(shape) == 3 and shape[1] * shape[2] == frame_tokens:
        batched, frame_shape = False, shape[1:]
    elif len(shape) == 4 and shape[2] * shape[3] == frame_tokens:
        batched, frame_shape = True, shape[2:]
    else:
        raise EngineError(
            f"tokens of shape {shape} are not frames of {frame_tokens} tokens: expected (T, {frame_tokens}), "
            f"(T, h, w) with h*w={frame_tokens}, or the same with a leading batch dimension"
        )
    array = array.reshape(shape[0] if batched else 1, shape[-len(frame_shape) - 1], frame_tokens)
    if array.numel():
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > max_value:
            raise EngineError(f"token values must be in 0..{max_value}, got {low}..{high}")
    layout = Layout(batched, frame_shape, isinstance(tokens, np.ndarray), dtype, device)
    return array, layout


def restore_layout(frames: torch.Tensor, layout: Layout) -> np.ndarray | torch.Tensor:
    """int64 CPU `[B, n, frame_tokens]` -> the caller's layout, array type and dtype."""
    shape = (frames.shape[0], frames.shape[1], *layout.frame_shape)
    frames = frames.reshape(shape if layout.batched else shape[1:])
    if layout.as_numpy:
        return frames.numpy().astype(layout.dtype)
    return frames.to(device=layout.device, dtype=layout.dtype)
