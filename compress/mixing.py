"""Adaptive context mixing: the model's table mixed with counts learned while coding.

A segment's mixer counts, over the frames its lanes have coded so far, how often each symbol
followed each context symbol, for a few contexts k (`CONTEXTS`: e.g. the token at the same cell of the
previous frame, or the cell itself). For a token, with M the model's table and c_k, n_k the
counts of its contexts, the coded distribution is the linear mixture

    P = w_0 M + sum_k w_k Q_k,   Q_k(s) = (c_k(s) + prior M(s)) / (n_k + prior),

each Q_k the counts smoothed towards the model. The weights are a softmax of learned
logits, v_0 = 0 for the model and v_k[set] for context k, the set chosen by how often the
context was seen (log2 buckets of n_k); a context never seen gets no weight. The logits
learn online by gradient ascent on log P.

Exactness: the table is integer arithmetic (`table_kernels.mix_rows`), learning is fixed
point with integer sums, and the few float64 values are IEEE basic operations in a fixed
order; exp comes from a table built by repeated multiplication, never libm.

Counts and weights change once per frame step, so the encoder mixes a whole frame at once
(`predict_frame`) and the decoder token by token (`predict` + `observe`) with bit-identical
tables; each then calls `end_frame` with every running lane's frame (`rows`: the lanes of a
call). The lanes of a group (`groups`: one per segment) share counts and weights, and run
in lockstep, so at frame step t every lane sees its group's frames before t on both sides;
only the previous frames (`prev`, `prev2`) are a lane's own. Groups never mix: one mixer
serves many segments decoded side by side, none depending on the others.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.tokens import FRAME_SHAPE
from models.tokens import FRAME_TOKENS as FRAME

from .errors import CompressError
from .frequencies import SYMBOLS
from .table_kernels import frame_contexts, mix_rows, record_rows

WIDTH = FRAME_SHAPE[1]  # cells per row of the 8x16 grid
V_BITS = 16  # fixed-point bits of the learned logits v
V_LIMIT = 12 << V_BITS  # |v| <= 12
TABLE_STEP = 8  # the exp table has one entry per 2**-8 of v
E_STEP = 0.9961013694701175  # exp(-2**-8), the ratio between consecutive table entries
# The token at the same cell in frame t-1 or t-2; above or left of the cell in the frame being
# coded (decoded before it in raster order); or the cell's own index (its rows: 128).
CONTEXTS = ("prev", "prev2", "above", "left", "cell")


def _exp_table() -> np.ndarray:
    """exp(j / 256) for j = -12*256..12*256, by repeated multiplication (correctly rounded
    Python floats in a fixed order), so it is the same on every machine."""
    decay = [1.0]
    for _ in range(V_LIMIT >> TABLE_STEP):
        decay.append(decay[-1] * E_STEP)
    negative = np.array(decay)
    return np.concatenate([negative[::-1], 1.0 / negative[1:]])


EXP = _exp_table()


@dataclass(frozen=True)
class MixerConfig:
    # Defaults chosen on the validation split (bench/mixing.py): the last 15% of the training
    # minute, alone and after the rest of the minute, and the four 8-frame clips.
    contexts: tuple[str, ...] = ("prev", "prev2", "cell")
    prior: float = 16.0  # pseudo-count of the model inside each Q_k
    lr: int = 1  # logit step: v += (lr * sum of gradients) >> lr_shift, in 2**-16 units
    lr_shift: int = 2
    buckets: int = 16  # logit sets per context: floor(log2(n + 1)), capped
    start: int = -1  # every context logit's first value, in units of 1 (the model's is 0)

    def __post_init__(self) -> None:
        names = self.contexts
        if not names or any(c not in CONTEXTS for c in names) or len(set(names)) < len(names):
            raise CompressError(f"contexts must be distinct names from {CONTEXTS}, got {self.contexts!r}")
        if self.prior <= 0 or self.lr < 0 or self.lr_shift < 0 or self.buckets < 1 or abs(self.start) > 12:
            raise CompressError(f"invalid mixer settings: {self}")

    @property
    def version(self) -> str:
        """Names the scheme and its settings, for the file header: decoders must match it."""
        return (f"mix2:{'+'.join(self.contexts)},prior={self.prior!r},lr={self.lr}/2^{self.lr_shift},"
                f"buckets={self.buckets},start={self.start}")


class ContextMixer:
    """One segment's counts and mixing logits, shared by its lanes; see the module docstring
    for the two call patterns."""

    def __init__(self, lanes: int, config: MixerConfig = MixerConfig(), groups: np.ndarray | None = None) -> None:
        if lanes < 1:
            raise CompressError(f"lanes must be >= 1, got {lanes}")
        self._group = np.zeros(lanes, dtype=np.int64) if groups is None else np.asarray(groups, dtype=np.int64)
        if self._group.shape != (lanes,) or self._group.min() < 0:
            raise CompressError(f"groups must give each of the {lanes} lanes a group >= 0")
        count = int(self._group.max()) + 1
        self.lanes, self.config = lanes, config
        self.version = config.version
        k = len(config.contexts)
        # All contexts' counts in one table, one gather for them all: context k's symbol x at
        # row _offset[k] + x, and its row _offset[k] - 1 for "none" (x = -1), never counted.
        sizes = [1 + (FRAME if c == "cell" else SYMBOLS) for c in config.contexts]
        self._offset = np.cumsum([1] + sizes[:-1])
        self._counts = np.zeros((count, sum(sizes), SYMBOLS), dtype=np.int32)
        self._counts.fill(0)  # touch every page now: faulting them in one by one while coding is slower
        self._seen = np.zeros((count, sum(sizes)), dtype=np.int64)  # n per group and context row
        self._v = np.full((count, k, config.buckets), config.start << V_BITS, dtype=np.int64)
        self._prev = np.full((lanes, 2, FRAME), -1, dtype=np.int64)  # frames t-1, t-2; -1: none yet
        # What end_frame learns from, per lane and cell: the token; each context's logit set
        # (-1: unused); P(token), then each context's weight w_k and Q_k(token).
        self._token = np.full((lanes, FRAME), -1, dtype=np.int64)
        self._set = np.zeros((lanes, FRAME, k), dtype=np.int64)
        self._terms = np.zeros((lanes, FRAME, 1 + 2 * k), dtype=np.float64)
        self._last: tuple | None = None  # the last predict's rows, position and parts
        self._all = np.arange(lanes)
        self._kinds = np.array([CONTEXTS.index(c) for c in config.contexts])  # `table_kernels` codes

    def _rows(self, rows: np.ndarray | None, batch: int) -> np.ndarray:
        if rows is None and batch == self.lanes:
            return self._all
        rows = np.asarray(rows if rows is not None else [], dtype=np.int64).reshape(-1)
        if len(rows) != batch or len(np.unique(rows)) != len(rows):
            raise CompressError(f"rows must name {batch} distinct lanes, got {rows.tolist()}")
        if rows.size and not (0 <= rows.min() and rows.max() < self.lanes):
            raise CompressError(f"rows must be lanes 0..{self.lanes - 1}, got {rows.tolist()}")
        return rows

    def _mix(self, lanes: np.ndarray, cells: np.ndarray, frame_rows: np.ndarray, current: np.ndarray,
             model: np.ndarray) -> tuple:
        """Mixed tables [N, 1024] for N (lane, cell) rows, the cells' frames so far in
        current[frame_rows] and model tables [N, 1024]; and what `_record` needs of them."""
        if model.shape[-1] != SYMBOLS or model.dtype.kind not in "iu" or model.ndim != 2:
            raise CompressError(f"model tables must be integer [N, {SYMBOLS}], got {model.dtype} {model.shape}")
        # Tables from `frequencies.frequency_tables` are valid by construction, as the table
        # arithmetic requires; checking each row again would cost passes over [N, 1024].
        model = np.ascontiguousarray(model, dtype=np.int64)
        rows, k = len(lanes), len(self._kinds)
        freq = np.empty((rows, SYMBOLS), dtype=np.int64)
        flat, n, sets = (np.empty((rows, k), dtype=np.int64) for _ in range(3))
        w = np.empty((rows, k), dtype=np.float64)
        mix_rows(model, lanes, cells, frame_rows, current, *self._mix_state(), freq, flat, n, sets, w)
        return freq, model, flat, n, sets, w

    def _record(self, lanes, cells, tokens, freq, model, flat, n, sets, w) -> None:
        record_rows(lanes, cells, tokens, freq, model, self._counts.reshape(-1, SYMBOLS), flat, n, sets, w,
                    self.config.prior, *self._record_state())

    def _mix_state(self) -> tuple:
        """What `mix_rows` reads of this mixer, in its argument order (v is replaced by every
        `end_frame`, so this is taken afresh)."""
        return (self._prev, self._group, self._kinds, WIDTH, self._offset, self._seen.reshape(-1), self._v,
                self._counts.reshape(-1, SYMBOLS), self.config.prior, self.config.buckets, EXP,
                V_BITS - TABLE_STEP, V_LIMIT >> TABLE_STEP)

    def _record_state(self) -> tuple:
        """Where `record_rows` writes what `end_frame` learns from, in its argument order."""
        return self._token, self._set, self._terms

    def kernel_arrays(self) -> tuple:
        """What `frame_kernel.decode_frame` mixes and records with: `_mix_state` then
        `_record_state`; valid until the next `end_frame`."""
        return self._mix_state() + self._record_state()

    def predict(self, position: int, model_freq: np.ndarray, partial_frame: np.ndarray,
                rows: np.ndarray | None = None) -> np.ndarray:
        """Decoder: tables [B, 1024] for cell `position` of the current frame of lanes `rows`;
        `partial_frame` [B, 128] holds the frame's tokens decoded so far (cells < position)."""
        if not 0 <= position < FRAME:
            raise CompressError(f"position must be 0..{FRAME - 1}, got {position}")
        model_freq = np.asarray(model_freq)
        if model_freq.ndim != 2 or np.shape(partial_frame) != (len(model_freq), FRAME):
            raise CompressError(f"expected model_freq [B, {SYMBOLS}] and partial_frame [B, {FRAME}]")
        rows = self._rows(rows, len(model_freq))
        current = _tokens(partial_frame, (len(rows), FRAME), position)
        return self.predict_step(position, model_freq, current, rows, self._all[: len(rows)])

    def predict_step(self, position: int, model_freq: np.ndarray, frames: np.ndarray, rows: np.ndarray,
                     frame_rows: np.ndarray) -> np.ndarray:
        """`predict` for a trusted caller (the decoder's loop: no checks, no copies): lanes
        `rows` (distinct, int64), their frames so far in frames[frame_rows] (int64 [*, 128])."""
        cells = np.full(len(rows), position, dtype=np.int64)
        parts = self._mix(rows, cells, frame_rows, frames, model_freq)
        self._last = (rows, position, cells, parts)
        return parts[0]

    def observe(self, position: int, tokens: np.ndarray) -> None:
        """Decoder: the tokens just decoded at `position` with the last `predict`'s tables."""
        if self._last is None or self._last[1] != position:
            raise CompressError(f"observe({position}) must follow predict({position})")
        self.observe_step(_tokens(tokens, (len(self._last[0]),)))

    def observe_step(self, tokens: np.ndarray) -> None:
        """`observe` for a trusted caller: the last `predict_step`'s tokens, int64 [B]."""
        rows, _, cells, parts = self._last
        self._record(rows, cells, tokens, *parts)
        self._last = None

    def predict_frame(self, model_freq: np.ndarray, frames: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Encoder: tables [B, 128, 1024] for a whole known frame [B, 128] of lanes `rows`."""
        model_freq = np.asarray(model_freq)
        if model_freq.ndim != 3 or model_freq.shape[1:] != (FRAME, SYMBOLS):
            raise CompressError(f"model_freq must be [B, {FRAME}, {SYMBOLS}], got {model_freq.shape}")
        batch = len(model_freq)
        rows = self._rows(rows, batch)
        frames = _tokens(frames, (batch, FRAME))
        lanes, cells = np.repeat(rows, FRAME), np.tile(np.arange(FRAME), batch)
        self._last = None
        parts = self._mix(lanes, cells, np.repeat(np.arange(batch), FRAME), frames, model_freq.reshape(-1, SYMBOLS))
        self._record(lanes, cells, frames.reshape(-1), *parts)
        return parts[0].reshape(batch, FRAME, SYMBOLS)

    def end_frame(self, frames: np.ndarray, rows: np.ndarray | None = None) -> None:
        """After a frame [B, 128] of lanes `rows` is coded: learn the logits, count the frame."""
        frames = _tokens(frames, (len(np.asarray(frames)), FRAME))
        rows = self._rows(rows, len(frames))
        if not np.array_equal(self._token[rows], frames):
            raise CompressError("end_frame's frames differ from the tokens predicted and observed")
        k = len(self.config.contexts)
        terms, sets = self._terms[rows], self._set[rows]
        p, w, q = terms[..., 0:1], terms[..., 1 : 1 + k], terms[..., 1 + k :]
        # d log P / d v_k = w_k (Q_k - P) / P, rounded to fixed point, summed exactly.
        grad = np.floor(w * (q - p) / p * (1 << V_BITS) + 0.5).astype(np.int64)
        used = sets >= 0
        total = np.zeros_like(self._v)  # summed over each group's lanes: integers, any order
        group = np.broadcast_to(self._group[rows][:, None, None], sets.shape)
        which = np.broadcast_to(np.arange(k), sets.shape)
        np.add.at(total, (group[used], which[used], sets[used]), grad[used])
        self._v = np.clip(self._v + ((total * self.config.lr) >> self.config.lr_shift), -V_LIMIT, V_LIMIT)
        context = np.empty((len(rows), len(self._kinds), FRAME), dtype=np.int64)
        frame_contexts(rows, frames, self._prev, self._kinds, WIDTH, context)
        known = context >= 0
        group = np.broadcast_to(self._group[rows][:, None, None], context.shape)[known]
        index = (context + self._offset[:, None])[known]
        np.add.at(self._counts, (group, index, np.broadcast_to(frames[:, None], context.shape)[known]), 1)
        np.add.at(self._seen, (group, index), 1)
        self._prev[rows, 1] = self._prev[rows, 0]
        self._prev[rows, 0] = frames
        self._token[rows] = -1


def _tokens(tokens: np.ndarray, shape: tuple[int, ...], decoded: int = FRAME) -> np.ndarray:
    """Checked int64 tokens; only the first `decoded` cells of a frame must be tokens yet."""
    tokens = np.asarray(tokens)
    if tokens.shape != shape or tokens.dtype.kind not in "iu":
        raise CompressError(f"tokens must be integer {shape}, got {tokens.dtype} {tokens.shape}")
    head = tokens[..., :decoded]
    if head.size and not (0 <= head.min() and head.max() < SYMBOLS):
        raise CompressError(f"tokens must be 0..{SYMBOLS - 1}")
    return tokens.astype(np.int64)
