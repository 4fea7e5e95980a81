"""Checking and normalising the token arrays users hand to `Engine.imagine`."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.tokens import check_ids, split_layout

from .errors import EngineError


@dataclass(frozen=True)
class Layout:
    """How the caller's array was shaped, so the output can be shaped the same way."""

    batched: bool
    frame_shape: tuple[int, ...]  # (frame_tokens,) or a grid such as (8, 16)
    as_numpy: bool
    dtype: np.dtype | torch.dtype
    device: torch.device | None


def normalise_tokens(tokens: object, frame_tokens: int, values: int) -> tuple[torch.Tensor, Layout]:
    """-> (int64 CPU tensor [B, T, frame_tokens], layout). Accepts the layouts of
    `models.tokens.split_layout` holding ids 0..values-1, as numpy arrays or torch tensors."""
    if isinstance(tokens, np.ndarray):
        dtype, device, array = tokens.dtype, None, tokens
    elif isinstance(tokens, torch.Tensor):
        if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
            raise EngineError(f"tokens must be an integer tensor, got dtype {tokens.dtype}")
        dtype, device, array = tokens.dtype, tokens.device, tokens.detach().to("cpu", torch.int64).numpy()
    else:
        raise EngineError(f"tokens must be a numpy array or a torch tensor, got {type(tokens).__name__}")
    layout = split_layout(array.shape, frame_tokens)
    if layout is None:
        raise EngineError(
            f"tokens of shape {array.shape} are not frames of {frame_tokens} tokens: expected (T, {frame_tokens}), "
            f"(T, h, w) with h*w={frame_tokens}, or the same with a leading batch dimension"
        )
    check_ids(array, EngineError, "tokens", values)
    batched, frame_shape = layout
    shape = array.shape
    flat = torch.from_numpy(array.astype(np.int64).reshape(shape[0] if batched else 1, shape[-len(frame_shape) - 1], frame_tokens))
    return flat, Layout(batched, frame_shape, isinstance(tokens, np.ndarray), dtype, device)


def restore_layout(frames: torch.Tensor, layout: Layout) -> np.ndarray | torch.Tensor:
    """int64 CPU `[B, n, frame_tokens]` -> the caller's layout, array type and dtype."""
    shape = (frames.shape[0], frames.shape[1], *layout.frame_shape)
    frames = frames.reshape(shape if layout.batched else shape[1:])
    if layout.as_numpy:
        return frames.numpy().astype(layout.dtype)
    return frames.to(device=layout.device, dtype=layout.dtype)
