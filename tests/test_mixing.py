"""The context mixer: decoder and encoder call patterns agree bitwise, tables are valid and
deterministic, lanes are independent, and a constriction round trip with mixing decodes."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compress.coder import TokenDecoder, TokenEncoder, code_length
from compress.errors import CompressError
from compress.frequencies import TOTAL
from compress.mixing import CONTEXTS, EXP, FRAME, SYMBOLS, ContextMixer, MixerConfig
from compress.table_kernels import SHIFT, UNIT, mix_rows

FAST = MixerConfig(lr=1, lr_shift=0)  # a large step, so the weights move in a few frames


def model_tables(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Valid random model tables: >= 1 each, summing to TOTAL, peaked like a real model's."""
    weights = rng.integers(0, 1 << 12, size=shape + (SYMBOLS,)) ** 2
    freq = weights * (TOTAL - SYMBOLS) // np.maximum(weights.sum(axis=-1, keepdims=True), 1) + 1
    freq[..., 0] += TOTAL - freq.sum(axis=-1)
    return freq


def drives(rng: np.random.Generator, lanes: int, frames: int, vocab: int) -> np.ndarray:
    """Frames that repeat their predecessor often (so the counts matter), tokens < vocab."""
    out = rng.integers(0, vocab, size=(lanes, frames, FRAME))
    for t in range(1, frames):
        copy = rng.random((lanes, FRAME)) < 0.6
        out[:, t][copy] = out[:, t - 1][copy]
    return out


def encode_pattern(mixer: ContextMixer, model: np.ndarray, frames: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return mixer.predict_frame(model, frames, rows=rows)


def decode_pattern(mixer: ContextMixer, model: np.ndarray, frames: np.ndarray, rows: np.ndarray) -> np.ndarray:
    out = np.empty_like(model)
    partial = np.full_like(frames, -1)  # cells not decoded yet hold garbage the mixer must not read
    for i in range(FRAME):
        out[:, i] = mixer.predict(i, model[:, i], partial, rows=rows)
        partial[:, i] = frames[:, i]
        mixer.observe(i, frames[:, i])
    return out


def run(pattern, lengths: list[int], model: np.ndarray, frames: np.ndarray, config=FAST) -> list[list[np.ndarray]]:
    """Code lanes of different lengths in lockstep; the lanes still running are the rows."""
    mixer = ContextMixer(len(lengths), config)
    tables: list[list[np.ndarray]] = [[] for _ in lengths]
    for t in range(max(lengths)):
        rows = np.array([lane for lane, n in enumerate(lengths) if n > t])
        mixed = pattern(mixer, model[rows, t], frames[rows, t], rows)
        for k, lane in enumerate(rows):
            tables[lane].append(mixed[k])
        mixer.end_frame(frames[rows, t], rows=rows)
    return tables


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), lengths=st.lists(st.integers(1, 4), min_size=1, max_size=3),
       vocab=st.sampled_from([3, 40, SYMBOLS]), contexts=st.lists(st.sampled_from(CONTEXTS), min_size=1, unique=True))
def test_decoder_pattern_equals_encoder_pattern(seed: int, lengths: list[int], vocab: int, contexts: list[str]) -> None:
    rng = np.random.default_rng(seed)
    model = model_tables(rng, (len(lengths), max(lengths), FRAME))
    frames = drives(rng, len(lengths), max(lengths), vocab)
    config = MixerConfig(contexts=tuple(contexts), lr=1, lr_shift=0)
    encoded = run(encode_pattern, lengths, model, frames, config)
    decoded = run(decode_pattern, lengths, model, frames, config)
    for lane_e, lane_d in zip(encoded, decoded):
        for table_e, table_d in zip(lane_e, lane_d):
            assert np.array_equal(table_e, table_d)
            assert table_e.dtype == np.int64 and (table_e >= 1).all() and (table_e.sum(axis=-1) == TOTAL).all()


def reference_table(model: np.ndarray, counts: np.ndarray, w: np.ndarray, n: np.ndarray, prior: float) -> np.ndarray:
    """The mixed tables in plain int64 arithmetic (the mixer's first implementation)."""
    b = np.floor(w * UNIT / (n + prior) * (1 << SHIFT)).astype(np.int64)
    a = ((UNIT << SHIFT) - (b * n).sum(axis=1)) // UNIT
    freq = ((model - 1) * a[:, None] + (b[:, :, None] * counts.astype(np.int64)).sum(axis=1)) >> SHIFT
    freq += 1
    freq[np.arange(len(freq)), freq.argmax(axis=1)] += TOTAL - freq.sum(axis=1)
    return freq


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), rows=st.integers(1, 6), k=st.integers(1, len(CONTEXTS)),
       scale=st.sampled_from([4, 1 << 12, (1 << 31) - 1]), prior=st.sampled_from([2.0**-10, 1.0, 16.0, 1e6]))
def test_table_arithmetic_matches_the_integer_reference(seed: int, rows: int, k: int, scale: int,
                                                        prior: float) -> None:
    """`mix_rows` against plain int64 arithmetic: peaked and flat model tables, counts up to
    int32's limit, one symbol or many, logits anywhere in [-12, 12] (or unseen), each
    context kind looking up its own count row."""
    rng = np.random.default_rng(seed)
    model = model_tables(rng, (rows,))
    model[0] = 1
    model[0, rng.integers(SYMBOLS)] = TOTAL - SYMBOLS + 1  # as peaked as a table can be
    n = rng.integers(0, scale, size=(rows, k), endpoint=True) * (rng.random((rows, k)) < 0.8)
    counts = np.zeros((rows, k, SYMBOLS), dtype=np.int32)
    for i, j in np.ndindex(rows, k):
        one_symbol = np.eye(SYMBOLS)[rng.integers(SYMBOLS)]
        spread = rng.dirichlet(np.full(SYMBOLS, 0.05)) if rng.random() < 0.7 else one_symbol
        counts[i, j] = rng.multinomial(n[i, j], spread)
    # Context "cell" (kind 4) of cell r selects count row offset_k + r: row r's own counts.
    offset = np.arange(k) * rows
    seen = np.zeros(rows * k + 1, dtype=np.int64)
    seen[(offset[None, :] + np.arange(rows)[:, None]).reshape(-1)] = n.reshape(-1)
    table = counts.transpose(1, 0, 2).reshape(rows * k, SYMBOLS)
    # One group; logits per context and bucket s = floor(log2(n + 1)) (capped at 31).
    v = rng.integers(-(12 << 16), 12 << 16, size=(1, k, 32), endpoint=True)
    sets = np.minimum(np.floor(np.log2(n + 1.0)).astype(np.int64), 31)
    e = np.where(n > 0, EXP[(v[0, np.arange(k), sets] >> 8) + len(EXP) // 2], 0.0)
    denominator = np.ones(rows)
    for j in range(k):  # the mixer's order
        denominator = denominator + e[:, j]
    w = e / denominator[:, None]
    freq = np.empty((rows, SYMBOLS), dtype=np.int64)
    flat, got_n, got_sets = (np.empty((rows, k), dtype=np.int64) for _ in range(3))
    got_w = np.empty((rows, k))
    lanes = np.arange(rows)
    mix_rows(model, lanes, lanes, lanes, np.zeros((rows, 128), dtype=np.int64), np.zeros((rows, 2, 128), dtype=np.int64),
             np.zeros(rows, dtype=np.int64), np.full(k, 4), 16, offset, seen, v, table, prior, 32, EXP, 8, len(EXP) // 2,
             freq, flat, got_n,
             got_sets, got_w)
    assert np.array_equal(got_n, n) and np.array_equal(got_w, w) and np.array_equal(got_sets, np.where(n > 0, sets, -1))
    assert np.array_equal(flat, offset[None, :] + lanes[:, None])
    assert freq.dtype == np.int64 and np.array_equal(freq, reference_table(model, counts, w, n, prior))
    assert (freq >= 1).all() and (freq.sum(axis=1) == TOTAL).all()


def test_lanes_share_what_they_learn_and_runs_are_deterministic() -> None:
    """Lanes of a segment learn from each other's earlier frames: a lane that repeats what
    another lane showed a frame step earlier costs less than alone. Runs are repeatable."""
    rng = np.random.default_rng(1)
    model, frames = model_tables(rng, (2, 5, FRAME)), drives(rng, 2, 5, 50)
    frames[1, 1:] = frames[0, :-1]  # lane 1 replays lane 0's transitions one step later
    frames[1, 0] = rng.integers(0, 50, FRAME)
    together = run(encode_pattern, [5, 5], model, frames)
    again = run(encode_pattern, [5, 5], model, frames)
    alone = run(encode_pattern, [5], model[1:2], frames[1:2])
    for t in range(5):
        assert np.array_equal(together[0][t], again[0][t]) and np.array_equal(together[1][t], again[1][t])
    shared = sum(code_length(together[1][t], frames[1, t]) for t in range(2, 5))
    own = sum(code_length(alone[0][t], frames[1, t]) for t in range(2, 5))
    assert shared < own


def test_mixing_learns_a_repeating_drive() -> None:
    """On a drive whose cells each follow a fixed transition, mixed tables beat the model's
    alone (a flat table), checked against the ideal code length computed by the coder."""
    rng = np.random.default_rng(2)
    step = rng.permutation(SYMBOLS)
    frames = np.empty((1, 12, FRAME), dtype=np.int64)
    frames[0, 0] = rng.integers(0, SYMBOLS, FRAME)
    for t in range(1, 12):
        frames[0, t] = step[frames[0, t - 1]]
    frames[0, 1:6] = frames[0, 6:11]  # the transitions seen early come back later
    model = np.full((1, 12, FRAME, SYMBOLS), TOTAL // SYMBOLS, dtype=np.int64)
    tables = run(encode_pattern, [12], model, frames)[0]
    late = range(8, 12)
    mixed = sum(code_length(tables[t], frames[0, t]) for t in late)
    alone = sum(code_length(model[0, t], frames[0, t]) for t in late)
    assert alone == pytest.approx(10.0 * FRAME * len(late))
    assert mixed < 0.8 * alone


def test_table_is_the_documented_mixture() -> None:
    """With the logits frozen at 0 (lr=0), frame 2's table is 1/2 M + 1/2 (c + prior M) / (n + prior),
    c the counts of frame 0 -> frame 1 transitions: checked against a float64 reference."""
    rng = np.random.default_rng(5)
    config = MixerConfig(contexts=("prev",), lr=0, start=0)
    model, frames = model_tables(rng, (1, 3, FRAME)), drives(rng, 1, 3, 20)
    mixer = ContextMixer(1, config)
    for t in range(2):
        assert np.array_equal(mixer.predict_frame(model[:, t], frames[:, t]), model[:, t])  # no counts yet
        mixer.end_frame(frames[:, t])
    mixed = mixer.predict_frame(model[:, 2], frames[:, 2])[0] / TOTAL
    counts = np.zeros((SYMBOLS, SYMBOLS))
    np.add.at(counts, (frames[0, 0], frames[0, 1]), 1)
    m = model[0, 2] / TOTAL
    context = counts[frames[0, 1]]
    seen = context.sum(axis=1, keepdims=True)
    expected = np.where(seen > 0, 0.5 * m + 0.5 * (context + config.prior * m) / (seen + config.prior), m)
    assert np.abs(mixed - expected).max() < 1e-4  # the rounding remainder lands on one symbol
    assert np.abs(mixed - expected).sum(axis=1).max() < 3e-4


def test_round_trip_through_the_range_coder() -> None:
    rng = np.random.default_rng(3)
    model, frames = model_tables(rng, (2, 4, FRAME)), drives(rng, 2, 4, 30)
    encoder = ContextMixer(2, FAST)
    coders = [TokenEncoder(), TokenEncoder()]
    for t in range(4):
        mixed = encoder.predict_frame(model[:, t], frames[:, t])
        for lane in range(2):
            coders[lane].encode(frames[lane, t], mixed[lane])
        encoder.end_frame(frames[:, t])
    decoders = [TokenDecoder(coder.finish()) for coder in coders]
    decoder = ContextMixer(2, FAST)
    restored = np.zeros_like(frames)
    for t in range(4):
        partial = np.zeros((2, FRAME), dtype=np.int64)
        for i in range(FRAME):
            mixed = decoder.predict(i, model[:, t, i], partial)
            tokens = np.array([decoders[lane].decode(mixed[lane][None])[0] for lane in range(2)])
            partial[:, i] = tokens
            decoder.observe(i, tokens)
        restored[:, t] = partial
        decoder.end_frame(partial)
    assert np.array_equal(restored, frames)


def test_bad_input_raises() -> None:
    rng = np.random.default_rng(4)
    mixer = ContextMixer(2)
    model, frames = model_tables(rng, (2, FRAME)), drives(rng, 2, 1, SYMBOLS)[:, 0]
    with pytest.raises(CompressError, match="model tables must be integer"):
        mixer.predict_frame(model.astype(np.float64), frames)
    with pytest.raises(CompressError, match="tokens must be"):
        mixer.predict_frame(model, frames + SYMBOLS)
    with pytest.raises(CompressError, match="distinct lanes"):
        mixer.predict(0, model[:, 0], frames, rows=np.array([1, 1]))
    with pytest.raises(CompressError, match="must follow predict"):
        mixer.observe(3, frames[:, 3])
    with pytest.raises(CompressError, match="differ"):
        mixer.end_frame(frames)
    with pytest.raises(CompressError, match="lanes must be"):
        ContextMixer(0)
    with pytest.raises(CompressError, match="contexts must be"):
        MixerConfig(contexts=("future",))
