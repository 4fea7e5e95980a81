"""The container: a checksummed header, then the lanes' range-coded words.

Layout (little-endian; see docs/FORMAT.md):

    magic 4 | version u8 | flags u8 | body_length u32 | body | header CRC32 u32 | payload

The prefix, the body length and the trailing CRC keep their places in every version, so
a damaged header ("corrupt") is told apart from an intact one this version cannot read
("unsupported": a newer version or a reserved flag set). Version 2 appends the input's
.npy format version to version 1's body; version 1 files stay readable.

Every field is checked here, before anything is allocated for decoding: a checksummed
header is only as trustworthy as whoever wrote it.
"""
from __future__ import annotations

import json
import re
import struct
import zlib
from dataclasses import dataclass, replace

import numpy as np

from .errors import CorruptFileError, UnsupportedFormatError

MAGIC = b"\xfeCVQ"  # 0xFE never occurs in ASCII or UTF-8 text
VERSION = 2  # written; 1 is still read
PREFIX = struct.Struct("<4sBBI")
CRC = struct.Struct("<I")
# fingerprint, window, stride, lanes, batch, precision, frames, layout, fortran order,
# token CRC, payload length, payload CRC
FIXED = struct.Struct("<32sHHHHBIBBIQI")
NPY_VERSION = struct.Struct("<BB")  # version 2: the .npy format (major, minor) of the input
NPY_VERSIONS = ((1, 0), (2, 0), (3, 0))  # what numpy.lib.format reads and writes
LAYOUTS = ((128,), (8, 16))  # the layout byte's values: a (T, 128) or a (T, 8, 16) array
DTYPE_PATTERN = re.compile(r"[<>|][iu][1248]")
MAX_FRAMES = 2**32 - 1  # the frames field is a u32
# The most streams per engine call an encoder may write. The decoder opens this many rows
# whatever the payload's size, so it bounds the memory a tiny file can demand.
MAX_BATCH = 64
# engine.numerics is a small flat dict of short names and values (the engine checks the
# values); these bounds keep a forged one from costing time, memory or terminal escapes.
MAX_NUMERICS_BYTES = 1024
MAX_NUMERICS_ENTRIES = 32
NUMERICS_KEY = re.compile(r"[a-z][a-z0-9_]{0,31}")
NUMERICS_TEXT = re.compile(r"[A-Za-z0-9_.:+-]{0,64}")
NUMERICS_INT_LIMIT = 2**31


@dataclass(frozen=True)
class Header:
    """Everything decoding depends on, besides the payload itself. New fields need a
    default (what older versions mean) so that older files still read."""

    fingerprint: str  # models.fingerprint of the weights (SHA-256 hex)
    window: int  # frames per model window: context plus coded frames
    stride: int  # frames coded per window
    lanes: int  # independent runs a segment was split into
    batch: int  # streams per engine call
    precision: int  # frequency tables sum to 2**precision
    numerics: dict[str, str | int]  # engine.numerics: the logits' bits depend on these
    dtype: str  # numpy dtype.str of the original array, byte order included
    shape: tuple[int, ...]  # (T, 128) or (T, 8, 16)
    fortran_order: bool
    token_crc: int  # CRC32 of the original array's bytes in C order
    lane_words: tuple[int, ...]  # 32-bit words of each lane's range-coded stream
    payload_crc: int
    npy_version: tuple[int, int] = (1, 0)  # .npy format the array came in (version 1: always 1.0)

    @property
    def frames(self) -> int:
        return self.shape[0]

    @property
    def payload_length(self) -> int:
        return 4 * sum(self.lane_words)


def lane_bounds(frames: int, lanes: int) -> list[tuple[int, int]]:
    """The [start, end) frames of each non-empty lane: equal runs, the last one shorter."""
    size = max(1, -(-frames // lanes))
    return [(start, min(start + size, frames)) for start in range(0, frames, size)]


def pack(header: Header, payload: bytes) -> bytes:
    numerics = json.dumps(header.numerics, sort_keys=True, separators=(",", ":")).encode()
    dtype = header.dtype.encode()
    body = b"".join((
        FIXED.pack(
            bytes.fromhex(header.fingerprint), header.window, header.stride, header.lanes, header.batch,
            header.precision, header.frames, LAYOUTS.index(header.shape[1:]), header.fortran_order,
            header.token_crc, len(payload), header.payload_crc,
        ),
        struct.pack(f"<{len(header.lane_words)}I", *header.lane_words),
        struct.pack("<B", len(dtype)), dtype,
        struct.pack("<H", len(numerics)), numerics,
        NPY_VERSION.pack(*header.npy_version),
    ))
    head = PREFIX.pack(MAGIC, VERSION, 0, len(body)) + body
    return head + CRC.pack(zlib.crc32(head)) + payload


def repack(data: bytes, **changes: object) -> bytes:
    """A valid file with some header fields replaced (`dataclasses.replace` names)."""
    header, payload = unpack(data)
    return pack(replace(header, **changes), bytes(payload))


def unpack(data: bytes) -> tuple[Header, memoryview]:
    """Parse and check a whole file; returns the header and the payload."""
    data = memoryview(data)
    if len(data) < PREFIX.size:
        if not data:
            raise CorruptFileError("empty file: not a compressed commaVQ token file")
        if MAGIC.startswith(bytes(data[:4])):
            raise CorruptFileError(f"truncated file: {len(data)} bytes, shorter than the {PREFIX.size}-byte prefix")
    if bytes(data[:4]) != MAGIC:
        raise CorruptFileError("not a compressed commaVQ token file (bad magic)")
    _, version, flags, body_length = PREFIX.unpack_from(data)
    end = PREFIX.size + body_length
    if len(data) < end + CRC.size:
        raise CorruptFileError("truncated file: the header is incomplete")
    if zlib.crc32(data[:end]) != CRC.unpack_from(data, end)[0]:
        raise CorruptFileError("header checksum mismatch: the header is damaged")
    if version not in (1, VERSION):
        raise UnsupportedFormatError(f"unsupported format version {version} (this reader knows 1 and {VERSION})")
    if flags:
        raise UnsupportedFormatError(f"unsupported format: reserved flags 0x{flags:02x} are set")
    try:
        header = _parse_body(data[PREFIX.size:end], version)
    except (struct.error, ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise CorruptFileError(f"invalid header: {exc}") from exc
    payload = data[end + CRC.size:]
    if len(payload) != header.payload_length:
        cut = "truncated" if len(payload) < header.payload_length else "trailing data after the payload"
        raise CorruptFileError(f"{cut}: payload has {len(payload)} bytes, header says {header.payload_length}")
    if zlib.crc32(payload) != header.payload_crc:
        raise CorruptFileError("payload checksum mismatch: the compressed data is damaged")
    return header, payload


def _parse_body(body: memoryview, version: int) -> Header:
    """The header's fields, each checked; any ValueError means an invalid header."""
    (fingerprint, window, stride, lanes, batch, precision, frames, layout, fortran, token_crc,
     payload_length, payload_crc) = FIXED.unpack_from(body)
    if layout >= len(LAYOUTS) or fortran > 1:
        raise ValueError(f"layout {layout} or Fortran order {fortran} out of range")
    if not 1 <= stride <= window:
        raise ValueError(f"stride {stride} must be 1..window ({window})")
    if not 1 <= batch <= MAX_BATCH:
        raise ValueError(f"batch {batch} must be 1..{MAX_BATCH}")
    if lanes < 1:
        raise ValueError("lanes must be at least 1")
    used_lanes = len(lane_bounds(frames, lanes))  # at most min(frames, lanes): a u16
    offset = FIXED.size
    lane_words = struct.unpack_from(f"<{used_lanes}I", body, offset)
    offset += 4 * used_lanes
    (dtype_length,) = struct.unpack_from("<B", body, offset)
    dtype = bytes(body[offset + 1:offset + 1 + dtype_length]).decode("ascii")
    offset += 1 + dtype_length
    (numerics_length,) = struct.unpack_from("<H", body, offset)
    if numerics_length > MAX_NUMERICS_BYTES:
        raise ValueError(f"numerics of {numerics_length} bytes (at most {MAX_NUMERICS_BYTES})")
    numerics = json.loads(bytes(body[offset + 2:offset + 2 + numerics_length]))
    offset += 2 + numerics_length
    npy_version = NPY_VERSION.unpack_from(body, offset) if version >= 2 else (1, 0)
    offset += NPY_VERSION.size if version >= 2 else 0
    if offset != len(body):
        raise ValueError("header length does not match its fields")
    if not DTYPE_PATTERN.fullmatch(dtype) or np.dtype(dtype).str != dtype:
        raise ValueError(f"dtype {dtype!r} is not an integer dtype as numpy writes it")
    _check_numerics(numerics)
    if npy_version not in NPY_VERSIONS:
        raise ValueError(f".npy format version {npy_version} is not one of {NPY_VERSIONS}")
    if 4 * sum(lane_words) != payload_length:
        raise ValueError("lane lengths do not add up to the payload length")
    return Header(
        fingerprint=bytes(fingerprint).hex(), window=window, stride=stride, lanes=lanes, batch=batch,
        precision=precision, numerics=numerics, dtype=dtype, shape=(frames, *LAYOUTS[layout]),
        fortran_order=bool(fortran), token_crc=token_crc, lane_words=lane_words, payload_crc=payload_crc,
        npy_version=npy_version,
    )


def _check_numerics(numerics: object) -> None:
    """A flat dict of short names to short plain-text strings or 32-bit integers."""
    if not isinstance(numerics, dict) or len(numerics) > MAX_NUMERICS_ENTRIES:
        raise ValueError(f"numerics must be a dict of at most {MAX_NUMERICS_ENTRIES} entries")
    for key, value in numerics.items():
        if not NUMERICS_KEY.fullmatch(key):
            raise ValueError(f"numerics key {key[:40]!r} is not a short lower-case name")
        if isinstance(value, str):
            if not NUMERICS_TEXT.fullmatch(value):
                raise ValueError(f"numerics {key}: {value[:40]!r} is not a short plain name")
        elif isinstance(value, bool) or not isinstance(value, int) or abs(value) >= NUMERICS_INT_LIMIT:
            shown = value if isinstance(value, int) and abs(value) < 10**40 else type(value).__name__
            raise ValueError(f"numerics {key}: {shown} is not a string or a 32-bit integer")
