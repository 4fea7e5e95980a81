"""Lockstep coding: the decoder, and the encoder in float numerics. All lanes of the run's
segments advance together: per window a prefill of every row, then frame by frame, position
by position, every running row codes one token and the model steps (`lanes` has the
schedule's terms: segments, lanes, windows).

Per frame the position loop runs in Python (`_frame`: any engine, encoding or decoding) or,
where every segment decodes and the engine's exact forward pass is compiled (the CPU), in
one compiled call (`frame_kernel.decode_frame`): the same kernels in the same order.
"""
from __future__ import annotations

import numpy as np
import torch

from models.tokens import FRAME_TOKENS

from .coder import code_length, mismatch
from .errors import CompressError
from .frame_kernel import decode_frame
from .frequencies import SYMBOLS, frequency_tables, nonfinite_logits
from .lanes import Progress, Segment, windows
from .mixing import ContextMixer, MixerConfig
from .table_kernels import frequency_rows


def run_lockstep(engine, segments: list[Segment], batch: int, progress: Progress | None = None) -> None:
    """Code all lanes of `segments` together, prefilling and stepping `batch` streams (at
    least the total lane count; spare rows are fed BOS). Decodes segments that have a
    decoder, encodes the others. One mixer serves every segment, each its own group."""
    rows = [(segment, lane) for segment in segments for lane in range(len(segment.bounds))]
    if not rows:
        return
    if len(rows) > batch:
        raise CompressError(f"{len(rows)} lanes cannot run in lockstep in a batch of {batch}")
    params = segments[0].params
    config = engine.config
    bos, per_frame = config.bos_token_id, config.tokens_per_frame
    lengths = np.array([segment.lengths[lane] for segment, lane in rows])
    groups = np.array([index for index, segment in enumerate(segments) for _ in segment.bounds])
    mixer = ContextMixer(len(rows), groups=groups) if params.mixing else None
    # A segment's rows are consecutive, and its running lanes at any frame are a prefix of them.
    first_row = np.cumsum([0] + [len(segment.bounds) for segment in segments])
    current = np.zeros((len(rows), FRAME_TOKENS), dtype=np.int64)  # the frame being coded, per row
    streams = engine.open_streams(batch)
    fed = np.full(batch, bos, dtype=np.int64)
    compiled = _CompiledFrames.for_run(engine, segments, groups)
    for context, first, end in windows(int(lengths.max()), params):
        prompt = np.full((batch, (first - context) * per_frame + 1), bos, dtype=np.int64)
        for row, (segment, lane) in enumerate(rows):
            if lengths[row] > first:
                prompt[row, :-1].reshape(-1, per_frame)[:, 1:] = segment.lane(lane)[context:first]
        logits = streams.prefill(torch.from_numpy(prompt))
        for frame in range(first, end):
            active = np.flatnonzero(lengths > frame)
            # Each segment's slice of `active`: its stream codes these rows, in lane order.
            spans = [(segment, *np.searchsorted(active, first_row[index : index + 2]))
                     for index, segment in enumerate(segments)]
            for row in active:
                segment, lane = rows[row]
                current[row] = segment.lane(lane)[frame] if segment.decoder is None else 0
            last_frame = frame == end - 1  # its last token is followed by the next window's prefill
            if compiled is not None:
                compiled.decode(logits, active, current, streams, FRAME_TOKENS - last_frame, mixer)
                if progress:
                    progress(len(active) * FRAME_TOKENS)
            else:
                logits = _frame(streams, logits, active, spans, current, mixer, fed, bos, last_frame, progress)
            if frame < end - 1:
                logits = streams.step(torch.full((batch,), bos, dtype=torch.int64))
            for row in active:
                segment, lane = rows[row]
                segment.lane(lane)[frame] = current[row]
            if mixer is not None:
                mixer.end_frame(current[active], rows=active)


class _CompiledFrames:
    """Whole frames decoded in one compiled call (`frame_kernel`): where every segment of
    the run decodes and the engine's exact forward pass is compiled (the CPU)."""

    def __init__(self, model_args: tuple, segments: list[Segment], groups: np.ndarray, bos: int) -> None:
        self.model_args, self.bos = model_args, bos
        self.segments = segments
        self.segment_of = groups
        # Every segment's stream end to end, each one's [start, end) in it, and its decoder's state.
        self.words = np.concatenate([segment.decoder.words for segment in segments])
        lengths = np.array([len(segment.decoder.words) for segment in segments], dtype=np.int64)
        ends = np.cumsum(lengths)
        self.word_bounds = np.stack([ends - lengths, ends], axis=1)
        self.states = np.stack([segment.decoder.state for segment in segments])
        self._unmixed: tuple | None = None  # fills the kernel's mixer argument when mixing is off

    @classmethod
    def for_run(cls, engine, segments: list[Segment], groups: np.ndarray) -> _CompiledFrames | None:
        compiled = getattr(getattr(engine, "runner", None), "compiled", None)
        if compiled is None or any(segment.decoder is None for segment in segments):
            return None
        return cls(compiled.args, segments, groups, engine.config.bos_token_id)

    def decode(self, logits: torch.Tensor, active: np.ndarray, current: np.ndarray, streams, steps: int,
               mixer: ContextMixer | None) -> None:
        """Decode the frame into current[active]; the model steps after its first `steps`
        positions, writing the logits in place."""
        first = int(streams.reserve(steps)[0][0]) if steps else 0
        if mixer is None and self._unmixed is None:  # the smallest mixer: its arrays are never read
            self._unmixed = ContextMixer(1, MixerConfig(contexts=("cell",))).kernel_arrays()
        arrays = self._unmixed if mixer is None else mixer.kernel_arrays()
        error = decode_frame(logits.numpy(), active, self.segment_of, self.states, self.words, self.word_bounds,
                             current, first, steps, self.bos, mixer is not None, arrays, self.model_args)
        for segment, state in zip(self.segments, self.states):
            segment.decoder.state[:] = state
        if error == 1:
            raise mismatch()
        if error == 2:
            raise nonfinite_logits()
        if error:
            raise CompressError("invalid model step")


def _frame(streams, logits: torch.Tensor, active: np.ndarray, spans: list, current: np.ndarray,
           mixer: ContextMixer | None, fed: np.ndarray, bos: int, last_frame: bool,
           progress: Progress | None) -> torch.Tensor:
    """Code one frame of the active rows position by position (tables, mixer, coder, step);
    returns the logits after its last step."""
    everyone = len(active) == len(fed)  # no rows to pick out of the logits
    active_tensor = torch.from_numpy(active)
    for position in range(FRAME_TOKENS):
        tables = _tables(logits if everyone else logits[active_tensor])
        if mixer is not None:
            tables = mixer.predict_step(position, tables, current, active, active)
        for segment, lo, hi in spans:
            _code_tokens(segment, tables[lo:hi], current, active[lo:hi], position)
        tokens = current[active, position]
        if mixer is not None:
            mixer.observe_step(tokens)
        if progress:
            progress(len(active))
        if not (last_frame and position == FRAME_TOKENS - 1):  # else the next window prefills
            fed[:] = bos
            fed[active] = tokens
            logits = streams.step(torch.from_numpy(fed))
    return logits


def _tables(logits: torch.Tensor) -> np.ndarray:
    """Frequency tables of a step's logits, as numpy; on the CPU straight from the kernel (the
    same bits as `frequency_tables`, without its torch calls: the decoder's per-token cost)."""
    if logits.device.type != "cpu":
        return frequency_tables(logits).cpu().numpy()
    out = np.empty((len(logits), SYMBOLS), dtype=np.int64)
    if frequency_rows(logits.numpy(), out) >= 0:
        raise nonfinite_logits()
    return out


def _code_tokens(segment: Segment, tables: np.ndarray, current: np.ndarray, rows: np.ndarray, position: int) -> None:
    """Decode (into `current`) or encode (from it) one segment's tokens at `position`."""
    if not len(rows):
        return
    if segment.decoder is not None:
        current[rows, position] = segment.decoder.decode(tables)
    else:
        tokens = current[rows, position]
        segment.encoder.encode(tokens, tables)
        segment.ideal_bits += code_length(tables, tokens)
