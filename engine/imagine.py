"""Imagine: continue drives frame by frame, a client of the step interface (`Streams`).

Each new frame sees the window's last `frames_per_window - 1` frames (fewer while the
history is shorter), each behind a BOS, then its own BOS; its tokens are sampled one at a
time on the device (`frame_loop.py`: one replayed CUDA graph per frame on CUDA), and the
finished frame joins the history.

A drive's frames depend only on its own tokens and seed, never on the batch: the sampler's
noise is per drive, and an op set that is not batch invariant (the torch backend: library
GEMMs pick their algorithm by shape) always runs at the engine's full `max_batch` shape,
padded with dummy drives, as the compressor does.
"""
from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from models import GPTConfig

from .errors import EngineError
from .frame_loop import FrameLoop, Sampling
from .inputs import normalise_tokens, restore_layout
from .streams import Streams


class Engine(Protocol):
    """What imagine needs of an `engine.Engine` (a protocol, so this module does not import
    the engine that delegates to it)."""

    config: GPTConfig
    device: torch.device
    max_batch: int
    batch_invariant: bool

    def open_streams(self, batch_size: int) -> Streams: ...

    def frame_loop(self, batch_size: int, sampling: Sampling) -> FrameLoop: ...


@torch.no_grad()
def imagine(
    engine: Engine,
    tokens: np.ndarray | torch.Tensor,
    n: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | Sequence[int] | None = None,
) -> np.ndarray | torch.Tensor:
    """Continue one drive `(T, 128)` / `(T, 8, 16)` or a batch `(B, T, ...)` by `n` frames,
    in the caller's layout, array type and dtype. `Engine.imagine` is this function.

    `temperature=0` is greedy. `seed`: one int for every drive, one per drive, or None for
    fresh ones. A drive's frames depend only on its own tokens and seed, never on the batch.
    """
    config = engine.config
    frames, layout = normalise_tokens(tokens, config.frame_tokens, config.vocab_size - 1)
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
        raise EngineError(f"n must be a non-negative integer, got {n!r}")
    if not (isinstance(temperature, (int, float)) and temperature >= 0):
        raise EngineError(f"temperature must be a number >= 0, got {temperature!r}")
    if top_k is not None and not (isinstance(top_k, int) and 1 <= top_k < config.vocab_size):
        raise EngineError(f"top_k must be None or an integer in 1..{config.vocab_size - 1}, got {top_k!r}")
    seeds = drive_seeds(seed, frames.shape[0])
    results = []
    for begin in range(0, frames.shape[0], engine.max_batch):
        chunk = slice(begin, begin + engine.max_batch)
        results.append(_imagine_batch(engine, frames[chunk], seeds[chunk], int(n), temperature, top_k))
    new_frames = torch.cat(results) if results else torch.zeros(0, int(n), config.frame_tokens, dtype=torch.int64)
    return restore_layout(new_frames, layout)


def _imagine_batch(
    engine: Engine, frames: torch.Tensor, seeds: torch.Tensor, n: int, temperature: float, top_k: int | None
) -> torch.Tensor:
    config, device = engine.config, engine.device
    drives = frames.shape[0]
    rows = drives if engine.batch_invariant else engine.max_batch
    frames = torch.nn.functional.pad(frames, (0, 0, 0, 0, 0, rows - drives))  # dummy drives of token 0
    seeds = torch.nn.functional.pad(seeds, (0, rows - drives))
    streams = engine.open_streams(rows)
    loop = engine.frame_loop(rows, Sampling(float(temperature), top_k, config.bos_token_id))
    bos = torch.full((rows, frames.shape[1], 1), config.bos_token_id, dtype=torch.int64)
    history = torch.cat([bos, frames], dim=2).to(device)  # [rows, T, tokens_per_frame]
    seeds, step = seeds.to(device), torch.zeros(1, dtype=torch.int64, device=device)
    live = torch.ones(rows, dtype=torch.int32, device=device)  # every row's steps are real
    out = torch.empty(rows, n, config.frame_tokens, dtype=torch.int64, device=device)
    new_bos = torch.full((rows, 1), config.bos_token_id, dtype=torch.int64, device=device)
    for frame in range(n):
        context = _last_frames(history, config.frames_per_window - 1).reshape(rows, -1)
        logits = streams.prefill(torch.cat([context, new_bos], dim=1))
        start, kv_lens = streams.reserve(config.frame_tokens - 1)  # the frame's last token is not fed back
        out[:, frame] = loop(logits, seeds, step, start, live, kv_lens)
        step += config.frame_tokens
        new_frame = torch.cat([new_bos, out[:, frame]], dim=1)[:, None]
        history = torch.cat([_last_frames(history, config.frames_per_window - 2), new_frame], dim=1)
    return out[:drives].cpu()


def _last_frames(history: torch.Tensor, count: int) -> torch.Tensor:
    """The last `count` frames of `[B, T, ...]`, or all T of them when T < count (a bare
    negative start would wrap around and keep too few)."""
    return history[:, max(history.shape[1] - max(count, 0), 0) :]


def drive_seeds(seed: int | Sequence[int] | None, drives: int) -> torch.Tensor:
    """int64 `[drives]`: one int for every drive, one per drive, or fresh ones for None."""
    if seed is None:
        values = [secrets.randbits(62) for _ in range(drives)]
    elif isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        values = [int(seed)] * drives
    elif isinstance(seed, Sequence) and len(seed) == drives and all(isinstance(s, (int, np.integer)) for s in seed):
        values = [int(s) for s in seed]
    else:
        raise EngineError(f"seed must be None, an int, or one int per drive ({drives}), got {seed!r}")
    if any(not -(2**63) <= v < 2**63 for v in values):
        raise EngineError("seeds must fit in 64 signed bits")
    return torch.tensor(values, dtype=torch.int64)
