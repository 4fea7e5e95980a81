"""encode/decode with tiny random models in exact and float numerics: round trips, the
teacher-forced encoder against the step-by-step decoder, batching, mismatches, bad files."""
import dataclasses
import struct
import time
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import compress
from compress import CodecParams, CompressError, CorruptFileError, ModelMismatchError, UnsupportedFormatError
from compress.coder import TokenEncoder
from compress.format import PREFIX, RAW, VERSION, pack, raw_length, unpack
from compress.lanes import Segment, encode_teacher_forced
from compress.lockstep import run_lockstep
from engine import Engine
from models import GPT, GPTConfig, save_pretrained

WINDOW = 3  # frames: enough for every stride/context combination
DTYPES = ["<i2", ">i2", "<i8", "<u2", ">u4", "|u1", "|i1", "<i4"]


def tiny_model(directory, seed: int) -> None:
    torch.manual_seed(seed)
    config = GPTConfig(n_positions=WINDOW * 129, n_layer=1, n_head=2, n_embd=16, n_inner=32)
    save_pretrained(GPT(config), directory)


def tiny_engine(directory, seed: int, numerics: str = "float", compile: bool = False) -> Engine:
    tiny_model(directory, seed)
    if numerics == "exact":
        return Engine.from_pretrained(directory, max_batch=4, numerics="exact")
    return Engine.from_pretrained(directory, backend="torch", dtype=torch.float32, max_batch=4, compile=compile)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return tiny_engine(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture(scope="module")
def exact_engine(tmp_path_factory):
    return tiny_engine(tmp_path_factory.mktemp("tiny_exact"), seed=0, numerics="exact")


@pytest.fixture(scope="module")
def other_engine(tmp_path_factory):
    return tiny_engine(tmp_path_factory.mktemp("other"), seed=1)


@pytest.fixture(scope="module")
def sample(engine):
    frame = np.random.default_rng(0).integers(0, 1024, size=(1, 8, 16)).astype(np.int16)
    tokens = np.concatenate([frame, frame])  # a repeated frame: the mixer learns it, so coding pays
    data = compress.encode(tokens, engine=engine, lanes=1)
    assert compress.read_header(data).storage != RAW
    return tokens, data


@st.composite
def token_arrays(draw):
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = (draw(st.integers(0, 4)), *draw(st.sampled_from([(128,), (8, 16)])))
    high = min(1023, np.iinfo(dtype).max)
    # Few distinct ids, so that the model and the mixer have something to learn.
    tokens = draw(arrays(dtype, shape, elements=st.integers(0, high) | st.sampled_from([0, 7, high])))
    return np.asfortranarray(tokens) if draw(st.booleans()) else tokens


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tokens=token_arrays(), stride=st.integers(1, WINDOW - 1), lanes=st.integers(1, 3), mixing=st.booleans(),
       exact=st.booleans())
def test_round_trip_restores_the_exact_array(engine, exact_engine, tokens, stride, lanes, mixing, exact):
    chosen = exact_engine if exact else engine
    data = compress.encode(tokens, engine=chosen, stride=stride, lanes=lanes, mixing=mixing)
    restored = compress.decode(data, engine=chosen)
    assert restored.dtype == tokens.dtype and restored.shape == tokens.shape
    assert np.isfortran(restored) == np.isfortran(tokens)
    assert restored.tobytes(order="A") == tokens.tobytes(order="A")


class RecordingEncoder(TokenEncoder):
    """Keeps every table and token it codes, in stream order."""

    def __init__(self) -> None:
        super().__init__()
        self.tables, self.tokens = [], []

    def encode(self, tokens, freq) -> None:
        self.tables.append(np.array(freq))
        self.tokens.append(np.array(tokens).reshape(-1))
        super().encode(tokens, freq)


@pytest.mark.parametrize("stride, lanes, mixing", [(1, 1, True), (2, 2, True), (1, 3, False)])
def test_teacher_forced_tables_equal_the_step_by_step_tables_bitwise(exact_engine, stride, lanes, mixing):
    """The exact encoder's one-pass tables are the decoder's prefill-and-step tables."""
    tokens = np.random.default_rng(stride + lanes).integers(0, 1024, size=(7, 128))
    tokens[1::2] = tokens[0]  # repeated frames: the mixer's counts come into play
    params = CodecParams(WINDOW, stride, lanes, 4, mixing)
    forced = Segment(tokens, params, encoder=RecordingEncoder())
    encode_teacher_forced(exact_engine, forced)
    stepped = Segment(tokens, params, encoder=RecordingEncoder())
    run_lockstep(exact_engine, [stepped], len(stepped.bounds))
    for segment in (forced, stepped):
        segment.tables, segment.tokens = np.concatenate(segment.encoder.tables), np.concatenate(segment.encoder.tokens)
    assert forced.tables.shape == (tokens.size, 1024)
    assert np.array_equal(forced.tokens, stepped.tokens)
    assert np.array_equal(forced.tables, stepped.tables)
    assert forced.encoder.finish().tobytes() == stepped.encoder.finish().tobytes()


@pytest.mark.parametrize("numerics, params", [
    ("exact", CodecParams(window=WINDOW, stride=1, lanes=2)),
    ("float", CodecParams(window=WINDOW, stride=1, lanes=1, batch=4)),  # float: one batch shape
])
def test_segments_code_identically_alone_and_together(request, numerics, params):
    chosen = request.getfixturevalue("exact_engine" if numerics == "exact" else "engine")
    rng = np.random.default_rng(1)
    segments = [rng.integers(0, 1024, size=(t, 128)) for t in (3, 1, 5, 2)]
    together = [e.data for e in compress.encode_many(segments, chosen, params)]
    alone = [compress.encode_many([s], chosen, params)[0].data for s in segments]
    assert together == alone
    for segment, restored in zip(segments, compress.decode_many(together[::-1], chosen)[::-1]):
        assert (restored == segment).all()


def test_exact_header_records_no_machine_facts(exact_engine):
    tokens = np.zeros((2, 128), np.int16)
    header = compress.read_header(compress.encode(tokens, engine=exact_engine))
    assert header.numerics == {"mode": "exact", "version": 1} and header.batch == 0
    assert header.fingerprint == exact_engine.fingerprint and header.mixer.startswith("mix")
    assert compress.read_header(compress.encode(tokens, engine=exact_engine, mixing=False)).mixer == ""


def test_float_header_holds_the_determinism_contract(engine, sample):
    header = compress.read_header(sample[1])
    assert header.fingerprint == engine.fingerprint and header.numerics == engine.numerics.to_dict()
    assert (header.window, header.stride, header.lanes, header.batch) == (WINDOW, 1, 1, 1)  # one lane: one row
    assert header.shape == (2, 8, 16) and header.dtype == "<i2"


def test_incompressible_segments_are_stored_raw(exact_engine):
    tokens = np.random.default_rng(5).integers(0, 1024, size=(3, 128)).astype(np.int16)
    data = compress.encode(tokens, engine=exact_engine, lanes=1)
    header = compress.read_header(data)
    assert header.storage == RAW and header.payload_length == raw_length(3)
    assert len(data) - header.payload_length < 200  # no file is much larger than 10 bits per token
    assert compress.decode(data, engine=exact_engine).tobytes() == tokens.tobytes()


def test_a_different_model_is_a_model_mismatch(other_engine, sample):
    with pytest.raises(ModelMismatchError, match="model mismatch"):
        compress.decode(sample[1], engine=other_engine)


def test_an_exact_file_needs_an_exact_engine(engine, exact_engine):
    data = compress.encode(np.zeros((4, 128), np.int16), engine=exact_engine, lanes=1)
    assert compress.read_header(data).storage != RAW
    with pytest.raises(ModelMismatchError):
        compress.decode(data, engine=engine)


def test_different_numerics_are_a_model_mismatch(tmp_path, sample):
    compiled = tiny_engine(tmp_path, seed=0, compile=True)  # same weights, other numerics
    with pytest.raises(ModelMismatchError, match="numerics mismatch.*compiled"):
        compress.decode(sample[1], engine=compiled)


def test_tampered_numerics_in_the_file_are_a_model_mismatch(engine, sample):
    header, payload = unpack(sample[1])
    tampered = dataclasses.replace(header, numerics={**header.numerics, "dtype": "float16"})
    with pytest.raises(ModelMismatchError, match="numerics mismatch.*dtype"):
        compress.decode(pack(tampered, bytes(payload)), engine=engine)


class SpoofedEngine:
    """Another model's logits behind this model's identity: what a numerics bug looks like."""

    def __init__(self, real: Engine, claimed: Engine) -> None:
        self._real, self.fingerprint, self.numerics = real, claimed.fingerprint, claimed.numerics

    def __getattr__(self, name):
        return getattr(self._real, name)


def test_intact_payload_with_wrong_logits_is_a_mismatch_not_corruption(engine, other_engine, sample):
    with pytest.raises(ModelMismatchError, match="differ from the encoder"):
        compress.decode(sample[1], engine=SpoofedEngine(other_engine, engine))


@pytest.mark.parametrize(
    "tokens",
    [np.zeros((2, 127), np.int16), np.zeros((2, 8, 8), np.int16), np.zeros((1, 128), np.float32),
     np.full((1, 128), 1024), np.full((1, 128), -1), np.zeros((1, 128), bool), np.int16(3), [[0] * 128]],
)
def test_invalid_token_arrays_are_refused(engine, tokens):
    with pytest.raises(CompressError):
        compress.encode(tokens, engine=engine)


@pytest.mark.parametrize("options", [dict(window=WINDOW + 1), dict(window=0), dict(stride=WINDOW), dict(lanes=0),
                                     dict(lanes=65)])
def test_invalid_parameters_are_refused(engine, options):
    with pytest.raises(CompressError):
        compress.encode(np.zeros((1, 128), np.int16), engine=engine, **options)


def assert_fails_fast(data: bytes, engine, error=CompressError) -> None:
    start = time.perf_counter()
    with pytest.raises(error):
        compress.decode(data, engine=engine)
    assert time.perf_counter() - start < 0.5


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=400) | st.binary(max_size=200).map(lambda b: b"\xfeCVQ\x02\x00" + b))
def test_random_bytes_raise_only_compress_errors(engine, data):
    assert_fails_fast(data, engine)


def test_every_truncation_is_corrupt(engine, sample):
    data = sample[1]
    for cut in range(len(data)):
        assert_fails_fast(data[:cut], engine, CorruptFileError)
    assert_fails_fast(data + b"\0", engine, CorruptFileError)


def test_every_bit_flip_is_corrupt(engine, sample):
    data = bytearray(sample[1])
    for bit in range(8 * len(data)):
        data[bit // 8] ^= 1 << (bit % 8)
        assert_fails_fast(bytes(data), engine, CorruptFileError)
        data[bit // 8] ^= 1 << (bit % 8)


def with_prefix(data: bytes, version: int, flags: int) -> bytes:
    """The file with another version/flags byte and a header CRC that matches them."""
    _, _, _, body_length = PREFIX.unpack_from(data)
    end = PREFIX.size + body_length
    head = data[:4] + bytes([version, flags]) + data[6:end]
    return head + struct.pack("<I", zlib.crc32(head)) + data[end + 4 :]


@pytest.mark.parametrize("version, flags", [(VERSION + 1, 0), (1, 0), (VERSION, 1), (VERSION, 0x80)])
def test_other_versions_and_reserved_flags_are_unsupported(engine, sample, version, flags):
    with pytest.raises(UnsupportedFormatError):
        compress.decode(with_prefix(sample[1], version, flags), engine=engine)


@pytest.mark.parametrize("changes", [dict(tables=1), dict(mixer="mix9:unknown")])
def test_unknown_tables_or_mixers_are_unsupported(engine, sample, changes):
    header, payload = unpack(sample[1])
    with pytest.raises(UnsupportedFormatError):
        compress.decode(pack(dataclasses.replace(header, **changes), bytes(payload)), engine=engine)


def test_a_checksummed_header_claiming_huge_arrays_fails_fast(engine, sample):
    header, payload = unpack(sample[1])
    forged = dataclasses.replace(header, shape=(2**32 - 1, 8, 16), lanes=1)
    assert_fails_fast(pack(forged, bytes(payload)), engine, CompressError)


def test_gpt2m_sized_windows_teacher_forced_equal_stepped(tmp_path):
    """gpt2m's 20-frame window (2580 positions: attention sums in float64), every context
    length 0..19 as the window fills, then sliding: the one-pass tables are the stepped ones."""
    torch.manual_seed(2)
    save_pretrained(GPT(GPTConfig(n_positions=20 * 129, n_layer=1, n_head=2, n_embd=16, n_inner=32)), tmp_path)
    engine = Engine.from_pretrained(tmp_path, max_batch=2, numerics="exact")
    tokens = np.random.default_rng(7).integers(0, 1024, size=(22, 128))
    tokens[1::3] = tokens[0]
    params = CodecParams(20, 1, 1, 1, True)
    forced = Segment(tokens, params, encoder=RecordingEncoder())
    encode_teacher_forced(engine, forced)
    stepped = Segment(tokens, params, encoder=RecordingEncoder())
    run_lockstep(engine, [stepped], 1)
    assert np.array_equal(np.concatenate(forced.encoder.tables), np.concatenate(stepped.encoder.tables))
    data = compress.encode(tokens, engine=engine, lanes=1)
    assert compress.decode(data, engine=engine).tobytes() == tokens.tobytes()
