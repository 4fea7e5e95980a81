"""Frequencies and range coding: exact tables, round trips on any table, overhead."""
import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from compress.coder import TOTAL, TokenDecoder, TokenEncoder, _exp2, code_length, frequencies

SYMBOLS = 1024


def table(kind: str, seed: int, symbols: int) -> np.ndarray:
    """A frequency table summing to TOTAL with every entry >= 1, of a given skew."""
    rng = np.random.default_rng(seed)
    scale = {"uniform": 0.0, "random": 3.0, "skewed": 30.0, "one-hot": 1e4}[kind]
    logits = np.zeros((1, symbols + 1), np.float32)
    logits[0, :symbols] = rng.normal(size=symbols) * scale
    return frequencies(logits, symbols)[0]


def round_trip(tables: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    encoder = TokenEncoder()
    for row, token in zip(tables, tokens):  # one call per token, as the codec does
        encoder.encode(np.array([token]), row[None])
    decoder = TokenDecoder(encoder.finish())
    return np.concatenate([decoder.decode(row[None]) for row in tables])


@settings(max_examples=60, deadline=None)
@given(logits=arrays(np.float32, (3, SYMBOLS + 1), elements=st.floats(width=32, allow_nan=False, allow_infinity=False)))
def test_frequencies_are_exact_tables(logits):
    freq = frequencies(logits, SYMBOLS)
    assert freq.shape == (3, SYMBOLS) and freq.dtype == np.int64
    assert (freq >= 1).all() and (freq.sum(axis=1) == TOTAL).all()
    assert (freq.argmax(axis=1) == logits[:, :SYMBOLS].argmax(axis=1)).all()


def test_frequencies_follow_the_softmax_and_skip_bos():
    rng = np.random.default_rng(0)
    logits = (rng.normal(size=(16, SYMBOLS + 1)) * 4).astype(np.float32)
    logits[:, SYMBOLS] = 1e9  # BOS: must not take any mass
    x = logits[:, :SYMBOLS].astype(np.float64)
    p = np.exp(x - x.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    assert np.abs(frequencies(logits, SYMBOLS) / TOTAL - p).max() < 2 * SYMBOLS / TOTAL


def test_one_hot_logits_leave_one_unit_to_every_other_token():
    logits = np.zeros((1, SYMBOLS + 1), np.float32)
    logits[0, 7] = 1e4
    freq = frequencies(logits, SYMBOLS)[0]
    assert freq[7] == TOTAL - (SYMBOLS - 1) and (np.delete(freq, 7) == 1).all()


def test_exp2_is_accurate_for_basic_arithmetic():
    x = -np.linspace(0, 39, 100_001)
    assert np.allclose(_exp2(x), np.exp2(x), rtol=1e-9, atol=0)


@settings(max_examples=40, deadline=None)
@example(kinds=["one-hot"] * 4, seed=0, symbols=SYMBOLS, rare=True)
@example(kinds=["skewed", "one-hot", "uniform"], seed=1, symbols=2, rare=True)
@given(
    kinds=st.lists(st.sampled_from(["uniform", "random", "skewed", "one-hot"]), min_size=1, max_size=12),
    seed=st.integers(0, 2**32 - 1),
    symbols=st.sampled_from([2, 3, 17, 1024]),
    rare=st.booleans(),
)
def test_coder_round_trips_any_table(kinds, seed, symbols, rare):
    tables = np.stack([table(kind, seed + i, symbols) for i, kind in enumerate(kinds)])
    rng = np.random.default_rng(seed)
    if rare:  # the least likely tokens: the hardest case for a range coder
        tokens = tables.argmin(axis=1)
    else:
        tokens = np.array([rng.choice(symbols, p=row / TOTAL) for row in tables])
    assert (round_trip(tables, tokens) == tokens).all()


def test_overhead_against_the_ideal_code_length_is_below_a_thousandth():
    rng = np.random.default_rng(1)
    logits = (rng.normal(size=(4000, SYMBOLS + 1)) * rng.uniform(0.5, 8, size=(4000, 1))).astype(np.float32)
    tables = frequencies(logits, SYMBOLS)
    tokens = np.array([rng.choice(SYMBOLS, p=row / TOTAL) for row in tables])
    encoder = TokenEncoder()
    encoder.encode(tokens, tables)
    bits = 32 * len(encoder.finish())
    assert bits <= code_length(tables, tokens) * 1.001 + 64
