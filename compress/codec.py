"""Segments -> lanes -> windows, driven through the engine in lockstep batches.

A segment of T frames is split into `lanes` contiguous runs of frames; each lane is coded
on its own, starting with no context, by its own range coder. Within a lane, frames are
coded in windows: prefill up to `window - stride` context frames and the BOS of the first
coded frame, then code `stride` frames token by token (BOS is stepped between frames).
Lanes of any segments share a batch: all start at frame 0 of their own run, so they are
at the same point of the window schedule, and a row's logits never depend on other rows,
so a segment decodes identically whatever it is batched with. Encoder and decoder make
exactly the same sequence of prefill/step calls.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .coder import PRECISION, TOTAL, TokenDecoder, TokenEncoder, code_length, frequencies
from .errors import CompressError, CorruptFileError, ModelMismatchError, UnsupportedFormatError
from .format import Header, lane_bounds

Progress = Callable[[int], None]  # called with the number of tokens just coded
# The cheapest a token can be: the 1023 other token ids hold at least 1 of TOTAL each.
MIN_BITS_PER_TOKEN = -np.log2(1 - 1023 / TOTAL)


@dataclass(frozen=True)
class CodecParams:
    window: int  # frames per model window (context + coded); <= model frames_per_window
    stride: int = 1  # frames coded per window: 1 = full sliding window, best rate
    lanes: int = 1  # independent runs a segment is split into, to fill a batch
    batch: int = 8  # streams per engine call; a row's logits may depend on it (torch GEMMs)


@dataclass
class Lane:
    """One contiguous run of frames coded on its own range coder."""

    frames: np.ndarray  # (n, frame_tokens) int64; filled in as it is decoded
    encoder: TokenEncoder | None = None
    decoder: TokenDecoder | None = None
    ideal_bits: float = 0.0  # sum(-log2 p) of the tokens coded so far

    def code(self, frame: int, position: int, freq: np.ndarray) -> int:
        """Code the token at (frame, position) with table `freq`, and return it."""
        if self.decoder is not None:
            self.frames[frame, position] = self.decoder.decode(freq[None])[0]
        else:
            token = self.frames[frame, position : position + 1]
            self.encoder.encode(token, freq[None])
            self.ideal_bits += code_length(freq[None], token)
        return int(self.frames[frame, position])


def windows(frames: int, params: CodecParams) -> Iterator[tuple[int, int, int]]:
    """(first context frame, first coded frame, end) of each window of a lane."""
    for first in range(0, frames, params.stride):
        yield max(0, first - (params.window - params.stride)), first, min(first + params.stride, frames)


def check_params(params: CodecParams, engine) -> None:
    limit = engine.config.frames_per_window
    if not 1 <= params.window <= limit:
        raise CompressError(f"window must be 1..{limit} frames for this model, got {params.window}")
    if not 1 <= params.stride <= params.window:
        raise CompressError(f"stride must be 1..window ({params.window}), got {params.stride}")
    if not 1 <= params.lanes <= 0xFFFF:
        raise CompressError(f"lanes must be 1..65535, got {params.lanes}")
    if not 1 <= params.batch <= min(engine.max_batch, 0xFFFF):
        raise CompressError(f"batch must be 1..{engine.max_batch} (the engine's max_batch), got {params.batch}")


def run_lanes(engine, lanes: list[Lane], params: CodecParams, progress: Progress | None = None) -> None:
    """Code every lane, `params.batch` at a time (longest first, so batches end together)."""
    ordered = sorted(lanes, key=lambda lane: -len(lane.frames))
    for start in range(0, len(ordered), params.batch):
        _run_batch(engine, ordered[start : start + params.batch], params, progress)


def _run_batch(engine, batch: list[Lane], params: CodecParams, progress: Progress | None) -> None:
    config = engine.config
    bos, tokens_per_frame = config.bos_token_id, config.tokens_per_frame
    # Always the full batch shape: the torch backend's logits depend on it. Rows without a
    # lane, or whose lane has ended, are fed BOS and their logits are never used.
    streams = engine.open_streams(params.batch)
    lengths = np.array([len(lane.frames) for lane in batch])
    for context, first, end in windows(int(lengths.max()), params):
        prompt = np.full((params.batch, (first - context) * tokens_per_frame + 1), bos, dtype=np.int64)
        for row, lane in enumerate(batch):
            if len(lane.frames) > first:
                prompt[row, :-1].reshape(-1, tokens_per_frame)[:, 1:] = lane.frames[context:first]
        logits = streams.prefill(torch.from_numpy(prompt))
        for frame in range(first, end):
            active = [row for row in range(len(batch)) if lengths[row] > frame]
            for position in range(config.frame_tokens):
                freq = frequencies(logits[active].float().cpu().numpy(), config.vocab_size - 1)
                fed = np.full(params.batch, bos, dtype=np.int64)
                for table, row in enumerate(active):
                    fed[row] = batch[row].code(frame, position, freq[table])
                if progress:
                    progress(len(active))
                if frame == end - 1 and position == config.frame_tokens - 1:
                    break  # the window is done: the next one starts with a prefill
                logits = streams.step(torch.from_numpy(fed))
            else:
                logits = streams.step(torch.full((params.batch,), bos, dtype=torch.int64))


def encode_lanes(tokens: np.ndarray, params: CodecParams) -> list[Lane]:
    """Lanes over a (T, frame_tokens) int64 array, ready to encode."""
    return [Lane(tokens[a:b], encoder=TokenEncoder()) for a, b in lane_bounds(len(tokens), params.lanes)]


def decode_lanes(header: Header, payload: memoryview, frame_tokens: int) -> list[Lane]:
    """Lanes ready to decode the payload, after checking the header is plausible for it."""
    if header.precision != PRECISION:
        raise UnsupportedFormatError(f"unsupported precision {header.precision} (this coder uses {PRECISION})")
    words = np.frombuffer(payload, dtype="<u4")
    lanes, offset = [], 0
    for (a, b), count in zip(lane_bounds(header.frames, header.lanes), header.lane_words, strict=True):
        # Bound the work a damaged-but-checksummed header can ask for by what the words can hold.
        if (b - a) * frame_tokens * MIN_BITS_PER_TOKEN > 32 * (count + 2):
            raise CorruptFileError(f"header claims {b - a} frames for a lane of {count} words")
        lane_words = words[offset : offset + count]
        lanes.append(Lane(np.zeros((b - a, frame_tokens), dtype=np.int64), decoder=TokenDecoder(lane_words)))
        offset += count
    return lanes


def check_engine(header: Header, engine) -> None:
    """Refuse an engine whose logits could differ from the encoder's."""
    if header.fingerprint != engine.fingerprint:
        raise ModelMismatchError(
            f"model mismatch: the file was compressed with model {header.fingerprint[:16]}, "
            f"this engine has model {engine.fingerprint[:16]}"
        )
    numerics = engine.numerics.to_dict()
    if header.numerics != numerics:
        diff = sorted(k for k in header.numerics.keys() | numerics.keys() if header.numerics.get(k) != numerics.get(k))
        shown = ", ".join(f"{k}: file {header.numerics.get(k)!r} vs engine {numerics.get(k)!r}" for k in diff)
        raise ModelMismatchError(f"numerics mismatch, the logits could differ from the encoder's ({shown})")
    if header.batch > engine.max_batch:
        raise ModelMismatchError(f"the file was coded in batches of {header.batch} streams; "
                                 f"this engine's max_batch is {engine.max_batch}")
    if header.window > engine.config.frames_per_window:
        raise CorruptFileError(f"window {header.window} exceeds the model's {engine.config.frames_per_window} frames")
