"""Segments -> lanes -> windows: the schedule of model calls and coded tokens.

A segment of T frames is split into `lanes` contiguous runs of frames, each coded on its own
from no context. Lanes run in lockstep (at step s every running lane codes token s of its
own run), and the lanes of one segment share one range-coded stream, interleaved in that
order (`coder.interleaved_rows`). Within a lane, frames are coded in windows: up to
`window - stride` context frames, each behind BOS, then `stride` coded frames.

The decoder cannot see the future: per window it prefills the context and the first coded
frame's BOS, then steps token by token (BOS is stepped between coded frames), exactly the
calls imagine makes. The encoder gets the same logits two ways:
- exact numerics: one teacher-forced `engine.score` over many whole windows at once; the
  engine guarantees those logits equal the decoder's prefill-and-step logits, bit for bit;
- float numerics: it makes the decoder's own calls (float logits depend on call shapes).
Logits become tables (`frequencies.py`), the context mixer (`mixing.py`) mixes them with
what the segment has shown so far, and the range coder codes each token.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from models.tokens import FRAME_TOKENS

from .coder import TokenDecoder, TokenEncoder, code_length
from .defaults import DEFAULT_LANES
from .errors import CompressError
from .format import MAX_BATCH, MAX_LANES, lane_bounds
from .frequencies import SYMBOLS, frequency_tables
from .mixing import ContextMixer, MixerConfig

Progress = Callable[[int], None]  # called with the number of tokens just coded
SCORE_TOKENS = 16384  # teacher-forced tokens per engine.score call: big GEMMs, bounded memory

@dataclass(frozen=True)
class CodecParams:
    window: int  # frames per model window (context + coded); <= the model's frames_per_window
    stride: int = 1  # frames coded per window; the rest of the window is context
    lanes: int = DEFAULT_LANES  # independent runs a segment is split into, decoded side by side
    batch: int = 1  # float numerics only: streams per engine call (a row's logits depend on it)
    mixing: bool = True  # mix the model with counts learned while coding (`mixing.py`)


@dataclass
class Segment:
    """One segment's lanes and its one interleaved stream."""

    frames: np.ndarray  # (T, 128) int64: the tokens to encode, or filled in as decoded
    params: CodecParams
    decoder: TokenDecoder | None = None
    encoder: TokenEncoder = field(default_factory=TokenEncoder)
    ideal_bits: float = 0.0  # sum(-log2 p) of the coded tokens under their tables

    def __post_init__(self) -> None:
        self.bounds = lane_bounds(len(self.frames), self.params.lanes)
        self.lengths = np.array([b - a for a, b in self.bounds], dtype=np.int64)

    @property
    def mixer_version(self) -> str:
        """What the header records: the mixer's version, or "" when mixing is off."""
        return MixerConfig().version if self.params.mixing else ""

    def lane(self, index: int) -> np.ndarray:
        start, end = self.bounds[index]
        return self.frames[start:end]


def windows(frames: int, params: CodecParams) -> Iterator[tuple[int, int, int]]:
    """(first context frame, first coded frame, end) of each window of a lane of `frames`."""
    for first in range(0, frames, params.stride):
        yield max(0, first - (params.window - params.stride)), first, min(first + params.stride, frames)


def check_params(params: CodecParams, engine) -> None:
    limit = engine.config.frames_per_window
    if not 1 <= params.window <= limit:
        raise CompressError(f"window must be 1..{limit} frames for this model, got {params.window}")
    # stride == window > 1 would code a frame of every window with no context at all.
    if not 1 <= params.stride <= max(1, params.window - 1):
        raise CompressError(f"stride must be 1..window-1 ({max(1, params.window - 1)}), got {params.stride}")
    if not 1 <= params.lanes <= MAX_LANES:
        raise CompressError(f"lanes must be 1..{MAX_LANES}, got {params.lanes}")
    batch_limit = min(engine.max_batch, MAX_BATCH)  # what a file may record, and this engine run
    if not 1 <= params.batch <= batch_limit:
        raise CompressError(f"batch must be 1..{batch_limit} (the engine's max_batch, at most {MAX_BATCH}), "
                            f"got {params.batch}")


# --- encoding, teacher-forced (exact numerics) ------------------------------------------
def encode_teacher_forced(engine, segment: Segment, progress: Progress | None = None) -> None:
    """Code every token of `segment` from `engine.score` over whole windows. (Computing the
    next group's tables on a second thread while this one mixes and codes was measured
    slower, 0.90-0.93x on 2 idle cores: the two threads' many small ops contend for the GIL.)"""
    mixer = ContextMixer(len(segment.bounds)) if segment.params.mixing and segment.bounds else None
    for group in _window_groups(segment):
        _code_frames(segment, mixer, group, _window_tables(engine, segment, group), progress)


def _window_groups(segment: Segment) -> Iterator[list[tuple[int, int, int]]]:
    """Consecutive windows, grouped so that a group scores about SCORE_TOKENS tokens."""
    group: list[tuple[int, int, int]] = []
    longest = int(segment.lengths.max(initial=0))
    for window in windows(longest, segment.params):
        group.append(window)
        tokens = sum((end - context) * (FRAME_TOKENS + 1) for context, _, end in group) * len(segment.bounds)
        if tokens >= SCORE_TOKENS or window[2] == longest:
            yield group
            group = []


def _window_tables(engine, segment: Segment, group: list[tuple[int, int, int]]) -> np.ndarray:
    """The model's tables [frames, lanes, 128, 1024] for the coded frames of `group`."""
    per_frame = FRAME_TOKENS + 1
    first_frame, end_frame = group[0][1], group[-1][2]
    lanes = len(segment.bounds)
    tables = np.zeros((end_frame - first_frame, lanes, FRAME_TOKENS, SYMBOLS), dtype=np.int64)
    # Windows that share a length and a first coded position are scored together; logits
    # are computed from that position on (the context's own logits are never used).
    requests: dict[tuple[int, int], list[tuple[int, int, int, int]]] = {}  # -> (lane, context, first, stop)
    for context, first, end in group:
        for lane in range(lanes):
            stop = min(end, int(segment.lengths[lane]))
            if first < stop:
                key = ((stop - context) * per_frame, (first - context) * per_frame)
                requests.setdefault(key, []).append((lane, context, first, stop))
    for (length, skip), items in requests.items():
        per_call = max(1, SCORE_TOKENS // length)
        for start in range(0, len(items), per_call):
            batch = items[start : start + per_call]
            prompt = np.full((len(batch), length), engine.config.bos_token_id, dtype=np.int64)
            for row, (lane, context, _, stop) in enumerate(batch):
                prompt[row].reshape(-1, per_frame)[:, 1:] = segment.lane(lane)[context:stop]
            logits = engine.score(torch.from_numpy(prompt), first=skip)
            for row, (lane, context, first, stop) in enumerate(batch):
                # Logits at a frame's BOS and its first 127 tokens predict its 128 tokens.
                offsets = (np.arange(first, stop)[:, None] - context) * per_frame + np.arange(FRAME_TOKENS) - skip
                rows = logits[row, torch.from_numpy(offsets.reshape(-1))]
                tables[first - first_frame : stop - first_frame, lane] = (
                    frequency_tables(rows).cpu().numpy().reshape(stop - first, FRAME_TOKENS, -1)
                )
    return tables


def _code_frames(segment: Segment, mixer: ContextMixer | None, group: list[tuple[int, int, int]],
                 tables: np.ndarray, progress: Progress | None) -> None:
    """Mix and code the coded frames of `group` in stream order (frame by frame; within a
    frame, position by position, lanes in order)."""
    first_frame, end_frame = group[0][1], group[-1][2]
    for frame in range(first_frame, end_frame):
        active = np.flatnonzero(segment.lengths > frame)
        frames = np.stack([segment.lane(lane)[frame] for lane in active])
        frame_tables = tables[frame - first_frame, active]
        if mixer is not None:
            frame_tables = mixer.predict_frame(frame_tables, frames, rows=active)
            mixer.end_frame(frames, rows=active)
        # Stream order within a frame: position-major, lanes in order.
        flat_tables = frame_tables.transpose(1, 0, 2).reshape(-1, SYMBOLS)
        flat_tokens = frames.T.reshape(-1)
        segment.encoder.encode(flat_tokens, flat_tables)
        segment.ideal_bits += code_length(flat_tables, flat_tokens)
        if progress:
            progress(len(flat_tokens))
