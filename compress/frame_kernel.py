"""One frame of the lockstep decoder in one compiled call: exact numerics on the CPU.

`lockstep.run_lockstep` owns the schedule (windows, prefills, which rows run); per frame it
either runs its Python loop over the frame's 128 positions or, where the engine's exact
forward pass is compiled (`engine.exact_numba`), hands the whole loop to `decode_frame`:
per position, the active rows' tables (`table_kernels.frequency_rows`), the mixer's tables
(`mix_rows`), a token per row from its segment's stream (`range_decoder`), what the mixer
records (`record_rows`), then the model step. The same kernels in the same order as the
Python loop, so the same tokens; without a call into Python per token (measured on the
shipped model, one segment of one lane: 85-100 us a token in the loop, about 60 here, the
window's prefill included).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from engine.exact_numba import forward

from . import range_decoder
from .frequencies import SYMBOLS
from .table_kernels import frequency_rows, mix_rows, record_rows


@njit(cache=True)
def decode_frame(logits, active, segment_of, states, words, word_bounds, current, first_position, steps, bos,
                 mixing, mixer, model_args):
    """Decode one frame of every active row (int64 [A], ascending: a segment's running lanes
    in lane order, as its stream interleaves them) into current [rows, 128].

    logits float32 [batch, vocab]: the rows' next-token logits (after the frame's BOS), then
    overwritten by each step. segment_of [rows]: the segment whose stream row r reads, words
    all segments' streams end to end, word_bounds [segments, 2] each one's slice, states
    [segments, 4] each one's `range_decoder` state. After position p < steps the model
    steps every active row at position first_position + p (rows that are not active take
    no step). `mixer`: `ContextMixer.kernel_arrays()` (used when `mixing`); `model_args`:
    `CompiledForward.args`. Returns 0, 1 for a stream that does not decode, 2 for logits
    that are not finite, 3 for an invalid model step."""
    count = active.shape[0]
    (prev, groups, kinds, width, offset, seen, v, counts, prior, buckets, exp, exp_shift, exp_zero,
     token_out, set_out, terms_out) = mixer
    model = np.empty((count, SYMBOLS), dtype=np.int64)
    mixed = np.empty((count, SYMBOLS), dtype=np.int64)
    flat = np.empty((count, kinds.shape[0]), dtype=np.int64)
    n = np.empty_like(flat)
    sets = np.empty_like(flat)
    w = np.empty((count, kinds.shape[0]), dtype=np.float64)
    cells = np.empty(count, dtype=np.int64)
    tokens = np.empty(count, dtype=np.int64)
    picked = np.empty((count, logits.shape[1]), dtype=np.float32)
    fed = np.full((logits.shape[0], 1), bos, dtype=np.int64)
    start = np.zeros(logits.shape[0], dtype=np.int64)
    lens = np.zeros(logits.shape[0], dtype=np.int64)
    for a in range(count):
        lens[active[a]] = 1
    for position in range(current.shape[1]):
        for a in range(count):
            picked[a] = logits[active[a]]
        if frequency_rows(picked, model) >= 0:
            return 2
        tables = model
        if mixing:
            cells[:] = position
            mix_rows(model, active, cells, active, current, prev, groups, kinds, width, offset, seen, v, counts,
                     prior, buckets, exp, exp_shift, exp_zero, mixed, flat, n, sets, w)
            tables = mixed
        for a in range(count):
            s = segment_of[active[a]]
            token = range_decoder.decode_symbol(tables[a], states[s], words[word_bounds[s, 0] : word_bounds[s, 1]])
            if token < 0:
                return 1
            tokens[a] = token
            current[active[a], position] = token
        if mixing:
            record_rows(active, cells, tokens, mixed, model, counts, flat, n, sets, w, prior, token_out, set_out,
                        terms_out)
        if position < steps:
            for a in range(count):
                fed[active[a], 0] = tokens[a]
            start[:] = first_position + position
            if forward(fed, start, lens, *model_args, logits) != 0:
                return 3
    return 0
