"""Frequencies (v1 numpy, v2 torch) and range coding: exact tables, determinism, round trips."""
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from compress.coder import TokenDecoder, TokenEncoder, code_length, interleaved_rows
from compress.errors import CompressError, ModelMismatchError
from compress.frequencies import (
    CPU_BLOCK_ROWS, EXP2_TABLE, FRACTION_BITS, SCALE, TABLE_SIZE, TOTAL, WEIGHT_BITS, _exp2, frequencies,
    frequency_tables,
)
from models import DEFAULT_MODEL_DIR, load_pretrained

SYMBOLS = 1024
DRIVE = Path(__file__).resolve().parents[2] / "shared/data/train/3b41c0fa8959aea6c118e5714f412a2e_13.npy"
finite_logits = arrays(np.float32, st.tuples(st.integers(1, 4), st.just(SYMBOLS + 1)),
                       elements=st.floats(width=32, allow_nan=False, allow_infinity=False))


def table(kind: str, seed: int, symbols: int) -> np.ndarray:
    """A frequency table summing to TOTAL with every entry >= 1, of a given skew."""
    rng = np.random.default_rng(seed)
    scale = {"uniform": 0.0, "random": 3.0, "skewed": 30.0, "one-hot": 1e4}[kind]
    logits = np.zeros((1, symbols + 1), np.float32)
    logits[0, :symbols] = rng.normal(size=symbols) * scale
    return frequencies(logits, symbols)[0]


def reference_v2(row: np.ndarray, symbols: int = SYMBOLS) -> list[int]:
    """The v2 table of one row, written plainly: numpy float32 scalars, Python floats and ints."""
    x = [np.float32(v) for v in row[:symbols]]
    high = max(x)
    with np.errstate(over="ignore"):  # high - v may overflow to inf: the far tail, weight 0
        index = [min(float(np.float32(np.float32(high - v) * SCALE)), TABLE_SIZE - 1) for v in x]
    weights = [int(EXP2_TABLE[int(i)]) for i in index]
    ratio = (TOTAL - symbols) / sum(weights)
    freq = [int(w * ratio) + 1 for w in weights]
    freq[x.index(high)] += TOTAL - sum(freq)
    return freq


def softmax_bits(logits: np.ndarray, tokens: np.ndarray) -> float:
    x = torch.from_numpy(logits[:, :SYMBOLS]).double()
    return float(-torch.log_softmax(x, dim=1)[torch.arange(len(tokens)), tokens].sum()) / np.log(2)


@settings(max_examples=60, deadline=None)
@given(logits=finite_logits)
def test_frequencies_are_exact_tables(logits):
    for freq in frequencies(logits, SYMBOLS), frequency_tables(torch.from_numpy(logits)).numpy():
        assert freq.shape == (len(logits), SYMBOLS) and freq.dtype == np.int64
        assert (freq >= 1).all() and (freq.sum(axis=1) == TOTAL).all()
        top = freq[np.arange(len(freq)), logits[:, :SYMBOLS].argmax(axis=1)]
        assert (top == freq.max(axis=1)).all()  # the most likely token has the largest share


@settings(max_examples=30, deadline=None)
@example(logits=np.array([[3e38, -3e38] + [0] * (SYMBOLS - 1)], np.float32))  # high - x overflows
@example(logits=np.full((1, SYMBOLS + 1), 1e-40, np.float32))  # denormals
@given(logits=finite_logits)
def test_v2_tables_equal_a_plain_per_row_implementation(logits):
    expected = [reference_v2(row) for row in logits]
    assert frequency_tables(torch.from_numpy(logits)).tolist() == expected


def test_v2_tables_do_not_depend_on_threads_or_on_how_rows_are_split():
    rng = np.random.default_rng(2)
    logits = torch.from_numpy((rng.normal(size=(2 * CPU_BLOCK_ROWS + 3, SYMBOLS + 1)) *
                               rng.uniform(0.1, 20, size=(2 * CPU_BLOCK_ROWS + 3, 1))).astype(np.float32))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = frequency_tables(logits)
        torch.set_num_threads(2)
        two = frequency_tables(logits)
    finally:
        torch.set_num_threads(threads)
    split = torch.cat([frequency_tables(logits[a:b]) for a, b in ((0, 1), (1, 300), (300, len(logits)))])
    assert torch.equal(one, two) and torch.equal(one, split)
    assert torch.equal(frequency_tables(logits[:, :SYMBOLS].contiguous()), one)  # BOS column ignored
    assert torch.equal(frequency_tables(logits.clone().requires_grad_()), one)


def test_v2_follows_the_softmax_and_skips_bos():
    rng = np.random.default_rng(0)
    logits = (rng.normal(size=(16, SYMBOLS + 1)) * 4).astype(np.float32)
    logits[:, SYMBOLS] = 1e9  # BOS: must not take any mass
    x = logits[:, :SYMBOLS].astype(np.float64)
    p = np.exp(x - x.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    for freq in frequencies(logits, SYMBOLS), frequency_tables(torch.from_numpy(logits)).numpy():
        assert np.abs(freq / TOTAL - p).max() < 2 * SYMBOLS / TOTAL


def test_one_hot_and_minus_infinity_leave_one_unit_to_every_other_token():
    logits = np.zeros((2, SYMBOLS + 1), np.float32)
    logits[0, 7] = 1e4
    logits[1, :] = -np.inf
    logits[1, 7] = 0  # -inf is probability ~0 (v2 only; v1 refuses any non-finite value)
    for freq in frequency_tables(torch.from_numpy(logits)).numpy():
        assert freq[7] == TOTAL - (SYMBOLS - 1) and (np.delete(freq, 7) == 1).all()


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_and_plus_infinity_are_refused(bad):
    logits = np.zeros((3, SYMBOLS + 1), np.float32)
    logits[1, 5] = bad
    with pytest.raises(CompressError, match="logits"):
        frequency_tables(torch.from_numpy(logits))
    with pytest.raises(CompressError, match="logits"):
        frequencies(logits, SYMBOLS)


@pytest.mark.parametrize("logits", [torch.zeros(2, SYMBOLS - 1), torch.zeros(2, SYMBOLS + 1, dtype=torch.float64),
                                    torch.zeros(SYMBOLS + 1)])
def test_v2_refuses_the_wrong_shape_or_dtype(logits):
    with pytest.raises(CompressError, match="float32"):
        frequency_tables(logits)


def test_exp2_and_its_table_are_accurate():
    x = -np.linspace(0, 39, 100_001)
    assert np.allclose(_exp2(x), np.exp2(x), rtol=1e-9, atol=0)
    exact = np.exp2(WEIGHT_BITS - np.arange(TABLE_SIZE - 1) / (1 << FRACTION_BITS))
    assert np.all(np.abs(EXP2_TABLE[:-1] - exact) <= exact * 1e-9 + 1) and EXP2_TABLE[-1] == 0


def test_v2_costs_no_rate_on_real_logits():
    if not DRIVE.is_file():
        pytest.skip("needs ../shared/data")
    model = load_pretrained(DEFAULT_MODEL_DIR, dtype=torch.float32)
    drive = np.load(DRIVE).reshape(-1, 128).astype(np.int64)[-9:]
    windows = np.full((8, 258), SYMBOLS, dtype=np.int64)  # [BOS, frame t-1, BOS, frame t]
    windows[:, 1:129], windows[:, 130:] = drive[:-1], drive[1:]
    with torch.no_grad():
        logits = model(torch.from_numpy(windows))[:, 129:257].reshape(-1, SYMBOLS + 1).contiguous()
    tokens = drive[1:].reshape(-1)
    v1 = code_length(frequencies(logits.numpy(), SYMBOLS), tokens)
    v2 = code_length(frequency_tables(logits).numpy(), tokens)
    assert abs(v2 / v1 - 1) < 5e-4 and abs(v2 / softmax_bits(logits.numpy(), tokens) - 1) < 5e-3


def test_interleaved_rows_step_through_the_lanes_still_running():
    lane, step = interleaved_rows([3, 0, 1, 2], 0, 3)
    assert list(zip(lane, step)) == [(0, 0), (2, 0), (3, 0), (0, 1), (3, 1), (0, 2)]
    lane, step = interleaved_rows([3, 0, 1, 2], 1, 2)
    assert list(zip(lane, step)) == [(0, 1), (3, 1)]
    with pytest.raises(CompressError):
        interleaved_rows([2, -1], 0, 1)


@settings(max_examples=40, deadline=None)
@example(kinds=["one-hot"] * 4, seed=0, symbols=SYMBOLS, rare=True)
@example(kinds=["skewed", "one-hot", "uniform"], seed=1, symbols=2, rare=True)
@given(
    kinds=st.lists(st.sampled_from(["uniform", "random", "skewed", "one-hot"]), min_size=1, max_size=12),
    seed=st.integers(0, 2**32 - 1),
    symbols=st.sampled_from([2, 3, 17, 1024]),
    rare=st.booleans(),
)
def test_coder_round_trips_any_table_one_token_per_call(kinds, seed, symbols, rare):
    tables = np.stack([table(kind, seed + i, symbols) for i, kind in enumerate(kinds)])
    rng = np.random.default_rng(seed)
    if rare:  # the least likely tokens: the hardest case for a range coder
        tokens = tables.argmin(axis=1)
    else:
        tokens = np.array([rng.choice(symbols, p=row / TOTAL) for row in tables])
    encoder = TokenEncoder()
    for row, token in zip(tables, tokens):
        encoder.encode(np.array([token]), row[None])
    decoder = TokenDecoder(encoder.finish())
    assert (np.concatenate([decoder.decode(row[None]) for row in tables]) == tokens).all()


@settings(max_examples=40, deadline=None)
@example(lengths=[0, 0], seed=0, rare=False)
@example(lengths=[5, 0, 1, 3], seed=1, rare=True)
@given(lengths=st.lists(st.integers(0, 12), min_size=1, max_size=9), seed=st.integers(0, 2**32 - 1),
       rare=st.booleans())
def test_interleaved_lanes_round_trip_one_call_per_step(lengths, seed, rare):
    """Lanes of any lengths (empty ones too) in one stream: the encoder codes everything in
    one call; the decoder one call per step. Same words as coding token by token."""
    rng = np.random.default_rng(seed)
    lane, step = interleaved_rows(lengths, 0, max(lengths))
    logits = (rng.normal(size=(len(lane), SYMBOLS + 1)) * rng.choice([0, 1, 8, 1e4], size=(len(lane), 1)))
    freq = frequency_tables(torch.from_numpy(logits.astype(np.float32))).numpy()
    tokens = freq.argmin(axis=1) if rare else np.array([rng.choice(SYMBOLS, p=row / TOTAL) for row in freq], np.int64)
    encoder, one_by_one = TokenEncoder(), TokenEncoder()
    encoder.encode(tokens, freq)
    for token, row in zip(tokens, freq):
        one_by_one.encode([token], row[None])
    words = encoder.finish()
    assert np.array_equal(words, one_by_one.finish())
    decoder, decoded = TokenDecoder(words), []
    for s in range(max(lengths)):
        decoded.append(decoder.decode(freq[step == s]))
        assert len(decoded[-1]) == sum(length > s for length in lengths)
    assert np.array_equal(np.concatenate(decoded) if decoded else np.zeros(0, np.int64), tokens)
    assert 32 * len(words) <= code_length(freq, tokens) * 1.001 + 64


def test_encoder_refuses_mismatched_tokens_and_tables():
    with pytest.raises(CompressError, match="tables"):
        TokenEncoder().encode(np.zeros(3, np.int64), np.ones((2, SYMBOLS), np.int64))
    with pytest.raises(CompressError, match="integer"):
        TokenEncoder().encode(np.zeros(2, np.int64), np.ones((2, SYMBOLS), np.float64))


def test_a_long_lane_round_trips_with_overhead_below_a_thousandth():
    rng = np.random.default_rng(1)
    logits = (rng.normal(size=(4000, SYMBOLS + 1)) * rng.uniform(0.5, 8, size=(4000, 1))).astype(np.float32)
    tables = frequency_tables(torch.from_numpy(logits)).numpy()
    tokens = np.array([rng.choice(SYMBOLS, p=row / TOTAL) for row in tables])
    encoder = TokenEncoder()
    encoder.encode(tokens, tables)  # several blocks of rows, one stream
    words = encoder.finish()
    assert 32 * len(words) <= code_length(tables, tokens) * 1.001 + 64
    assert np.array_equal(TokenDecoder(words).decode(tables), tokens)


@settings(max_examples=50, deadline=None)
@given(words=arrays(np.uint32, st.integers(0, 40)), seed=st.integers(0, 2**32 - 1), symbols=st.sampled_from([2, 17, 1024]))
def test_our_decoder_reads_any_words_without_crashing(words, seed, symbols):
    """Arbitrary words (a damaged or foreign stream) decode to in-range tokens under valid
    tables, past the end of the stream too, or fail as a model mismatch (a quantile past the
    table, as constriction reports it): never another error, never a read past the words."""
    tables = np.stack([table("random", seed + i, symbols) for i in range(60)])
    decoder = TokenDecoder(words)
    decoded = []
    try:
        for i in range(0, 60, 3):
            decoded.append(decoder.decode(tables[i : i + 3]))
    except ModelMismatchError:
        pass
    tokens = np.concatenate(decoded) if decoded else np.zeros(0, np.int64)
    assert tokens.size == 0 or (tokens.min() >= 0 and tokens.max() < symbols)
    assert int(decoder.state[3]) <= len(words)
