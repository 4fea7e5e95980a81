"""The container against hostile input: every header field re-packed with valid checksums
must decode or fail fast with a `CompressError`, with little memory."""
import dataclasses
import json
import resource
import struct
import time
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import compress
from compress import CompressError, CorruptFileError
from compress.format import (
    CODED, FIXED, LAYOUTS, MAX_BATCH, MAX_LANES, MAX_NUMERICS_BYTES, PREFIX, RAW, VERSION, Header, pack, raw_length,
    repack, unpack,
)

TIME_BUDGET = 0.2  # seconds for a refused file: checks only, no model work
DECODE_BUDGET = 10.0  # seconds for a tiny file that passes the checks and is decoded
MEMORY_BUDGET_KB = 300_000  # peak RSS growth over a whole test


@pytest.fixture(scope="module")
def sample() -> tuple[np.ndarray, bytes]:
    """A real file: three frames coded by the shipped default model at the defaults but one
    lane (one frame repeated, so that coding pays and the file is not stored raw)."""
    frame = np.random.default_rng(0).integers(0, 1024, size=(1, 8, 16)).astype(np.int16)
    tokens = np.concatenate([frame] * 3)
    data = compress.encode(tokens, lanes=1)
    assert unpack(data)[0].storage == CODED
    return tokens, data


def max_rss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


JSON_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=80),
    st.sampled_from([[], {}, ["cpu"], {"a": {"b": [1]}}, [[[[[[]]]]]], "x" * 70, 2**31, -(2**31), 2**64]),
)


@st.composite
def hostile_headers(draw, original: Header):
    """`original` with a few fields replaced by arbitrary values of the field's width."""
    u16, u32 = st.integers(0, 2**16 - 1), st.integers(0, 2**32 - 1)
    extreme16 = st.sampled_from([0, 1, 2, 3, MAX_BATCH, MAX_BATCH + 1, 2000, 2**16 - 1])
    fields = {
        "window": u16 | extreme16, "stride": u16 | extreme16, "lanes": u16 | extreme16, "batch": u16 | extreme16,
        "precision": st.integers(0, 255),
        "shape": st.tuples(u32 | st.integers(0, 5), st.sampled_from(LAYOUTS)).map(lambda s: (s[0], *s[1])),
        "fortran_order": st.booleans(), "token_crc": u32, "payload_crc": u32,
        "payload_length": st.integers(0, 64) | st.integers(0, 2**64 - 1),
        "tables": st.integers(0, 255), "storage": st.integers(0, 255),
        "mixer": st.text(max_size=30) | st.sampled_from(["", original.mixer, original.mixer + "x"]),
        "dtype": st.text(max_size=12) | st.sampled_from(["<i2", ">i1", "|u1", "<f4", "|b1", "<i16", "O", "<u8"]),
        "numerics": (st.dictionaries(st.text(max_size=40), JSON_VALUES, max_size=6)
                     | st.builds(lambda k, v: {**original.numerics, k: v},
                                 st.sampled_from(sorted(original.numerics)) | st.text(max_size=40), JSON_VALUES)),
        "npy_version": st.tuples(st.integers(0, 255), st.integers(0, 255)),
    }
    names = draw(st.sets(st.sampled_from(sorted(fields)), min_size=1, max_size=4))
    return dataclasses.replace(original, **{name: draw(fields[name]) for name in names})


def repacked(header: Header, payload: bytes) -> bytes | None:
    """`header` over `payload` with valid checksums, or None where a field does not fit its width."""
    payload_crc = header.payload_crc if header.payload_crc % 7 else zlib.crc32(payload)  # mostly a valid CRC
    try:
        return pack(dataclasses.replace(header, payload_crc=payload_crc), payload)
    except (struct.error, ValueError, TypeError, UnicodeEncodeError):
        return None


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_hostile_headers_with_valid_checksums_are_refused_fast_or_bounded(sample, data):
    """Decoding starts with these checks: a refused file never reaches the model, and an
    accepted one has every bound that sizes an allocation (the decode test below runs them)."""
    original, payload = unpack(sample[1])
    rss = max_rss_kb()
    header = data.draw(hostile_headers(original))
    length = header.payload_length
    if length <= 256 and data.draw(st.booleans()):  # as long as the header says: length checks pass
        payload = data.draw(st.binary(min_size=length, max_size=length))
    file = repacked(header, bytes(payload))
    if file is None:
        return
    start = time.perf_counter()
    try:
        accepted, _ = unpack(file)
    except CompressError:
        assert time.perf_counter() - start < TIME_BUDGET
        return
    assert 0 <= accepted.batch <= MAX_BATCH and 1 <= accepted.stride <= accepted.window
    assert 1 <= accepted.lanes <= MAX_LANES and accepted.storage in (CODED, RAW)
    assert accepted.storage == CODED or accepted.payload_length == raw_length(accepted.frames)
    assert len(json.dumps(accepted.numerics)) <= MAX_NUMERICS_BYTES
    assert max_rss_kb() - rss < MEMORY_BUDGET_KB


@st.composite
def plausible_headers(draw, original: Header):
    """Changes that pass the format's checks and reach the model: tiny files only."""
    frames = draw(st.integers(0, 2))
    storage = draw(st.sampled_from([CODED, RAW]))
    return dataclasses.replace(
        original, window=draw(st.integers(1, 3)), stride=1, lanes=draw(st.integers(1, 4)),
        batch=draw(st.sampled_from([0, 0, 1, MAX_BATCH])), shape=(frames, *draw(st.sampled_from(LAYOUTS))),
        fortran_order=draw(st.booleans()), token_crc=draw(st.sampled_from([original.token_crc, 0])),
        storage=storage, payload_length=raw_length(frames) if storage == RAW else 4 * draw(st.integers(0, 3)),
        mixer=draw(st.sampled_from([original.mixer, ""])),
    )


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_plausible_hostile_headers_decode_or_fail_with_compress_errors(sample, data):
    original, _ = unpack(sample[1])
    header = data.draw(plausible_headers(original))
    file = repacked(header, data.draw(st.binary(min_size=header.payload_length, max_size=header.payload_length)))
    rss, start = max_rss_kb(), time.perf_counter()
    try:
        restored = compress.decode(file)
        assert restored.shape == header.shape
    except CompressError:
        pass
    assert time.perf_counter() - start < DECODE_BUDGET and max_rss_kb() - rss < MEMORY_BUDGET_KB


@pytest.mark.parametrize("batch", [MAX_BATCH + 1, 2000, 2**16 - 1])
def test_a_huge_batch_is_refused_before_any_allocation(sample, batch):
    rss, start = max_rss_kb(), time.perf_counter()
    with pytest.raises(CorruptFileError, match="batch"):
        compress.decode(repack(sample[1], batch=batch))
    assert time.perf_counter() - start < TIME_BUDGET and max_rss_kb() - rss < 50_000


@pytest.mark.parametrize("numerics", [
    {"threads": 10**30}, {"threads": True}, {"device": "x" * 65}, {"device": "cpu\x1b[2J"}, {"Bad Key": 1},
    {"threads": 1.5}, {"dtype": ["float32"]}, {f"k{i}": 1 for i in range(33)},
])
def test_numerics_must_be_a_small_flat_dict_of_plain_values(sample, numerics):
    original = unpack(sample[1])[0]
    with pytest.raises(CorruptFileError, match="numerics"):
        unpack(repack(sample[1], numerics={**original.numerics, **numerics}))


def with_numerics_bytes(data: bytes, text: bytes) -> bytes:
    """The sample with its numerics JSON replaced by raw `text` and a valid header CRC."""
    header, payload = unpack(data)
    old = json.dumps(header.numerics, sort_keys=True, separators=(",", ":")).encode()
    _, version, flags, length = PREFIX.unpack_from(data)
    body = bytes(data[PREFIX.size:PREFIX.size + length])
    at = body.rindex(struct.pack("<H", len(old)) + old)
    body = body[:at] + struct.pack("<H", len(text)) + text + body[at + 2 + len(old):]
    head = PREFIX.pack(data[:4], version, flags, len(body)) + body
    return head + struct.pack("<I", zlib.crc32(head)) + bytes(payload)


@pytest.mark.parametrize("text", [b"[" * 1000 + b"]" * 1000, b"[" * 500 + b"]" * 500, b"1" * 1000, b"{" * 60000])
def test_deep_or_long_numerics_json_is_corrupt(sample, text):
    start = time.perf_counter()
    with pytest.raises(CorruptFileError):
        unpack(with_numerics_bytes(sample[1], text))
    assert time.perf_counter() - start < TIME_BUDGET


@pytest.mark.parametrize("dtype", [">i1", "<f4", "|b1", "|O"])
def test_dtypes_must_be_integer_dtypes_as_numpy_writes_them(sample, dtype):
    with pytest.raises(CorruptFileError, match="dtype"):
        unpack(repack(sample[1], dtype=dtype))


@pytest.mark.parametrize("cut", range(1, PREFIX.size))
def test_a_short_file_with_a_good_magic_is_truncated_not_bad_magic(sample, cut):
    with pytest.raises(CorruptFileError, match="truncated"):
        unpack(sample[1][:cut])


def test_empty_and_foreign_files_are_not_compressed_files():
    with pytest.raises(CorruptFileError, match="empty"):
        unpack(b"")
    with pytest.raises(CorruptFileError, match="bad magic"):
        unpack(b"\x93NUMPY\x01\x00v\x00")


def test_version_1_files_are_refused_with_the_release_that_reads_them(sample):
    _, _, flags, length = PREFIX.unpack_from(sample[1])
    head = PREFIX.pack(sample[1][:4], 1, flags, length) + sample[1][PREFIX.size:PREFIX.size + length]
    old = head + struct.pack("<I", zlib.crc32(head)) + sample[1][PREFIX.size + length + 4:]
    with pytest.raises(compress.UnsupportedFormatError, match="version 1.*0.1"):
        unpack(old)


@pytest.mark.parametrize("changes", [dict(storage=2), dict(storage=RAW), dict(mixer="bad mixer\n")])
def test_storage_and_mixer_fields_are_checked(sample, changes):
    with pytest.raises(CorruptFileError):
        unpack(repack(sample[1], **changes))


@pytest.mark.parametrize("version", [(2, 0), (3, 0)])
def test_the_npy_version_is_kept_and_checked(sample, version):
    assert unpack(repack(sample[1], npy_version=version))[0].npy_version == version
    with pytest.raises(CorruptFileError, match="npy"):
        unpack(repack(sample[1], npy_version=(version[0] + 2, 0)))


def test_the_fixed_fields_keep_their_documented_layout():
    # fingerprint 32, window/stride/lanes/batch u16, precision/tables/storage u8, frames u32,
    # layout u8, fortran u8, token CRC u32, payload length u64, payload CRC u32 (docs/FORMAT.md)
    assert FIXED.size == 32 + 4 * 2 + 3 * 1 + 4 + 1 + 1 + 4 + 8 + 4
    assert VERSION == 2


def test_an_intact_file_decoding_to_other_tokens_says_what_to_check(sample):
    data = repack(sample[1], token_crc=unpack(sample[1])[0].token_crc ^ 1)
    with pytest.raises(compress.ModelMismatchError, match="differ from the encoder.*MKL_CBWR"):
        compress.decode(data)


@pytest.mark.parametrize("change", [{"threads": 100000}, {"threads": 0}, {"device": "meta"}, {"dtype": "int8"},
                                    {"backend": "x"}, {"compiled": 2}])
def test_hostile_numerics_values_fail_as_compress_errors_before_any_engine_work(sample, change):
    original = unpack(sample[1])[0]
    start = time.perf_counter()
    with pytest.raises(CompressError):
        compress.decode(repack(sample[1], numerics={**original.numerics, **change}))
    assert time.perf_counter() - start < TIME_BUDGET
