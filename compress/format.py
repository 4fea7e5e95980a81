"""The container: a checksummed header, then the lanes' range-coded words.

Layout (little-endian; see docs/FORMAT.md):

    magic 4 | version u8 | flags u8 | body_length u32 | body | header CRC32 u32 | payload

The prefix, the body length and the trailing CRC keep their places in every version, so
a damaged header ("corrupt") is told apart from an intact one this version cannot read
("unsupported": a newer version or a reserved flag set).
"""
from __future__ import annotations

import json
import re
import struct
import zlib
from dataclasses import dataclass

from .errors import CorruptFileError, UnsupportedFormatError

MAGIC = b"\xfeCVQ"  # 0xFE never occurs in ASCII or UTF-8 text
VERSION = 1
PREFIX = struct.Struct("<4sBBI")
CRC = struct.Struct("<I")
# fingerprint, window, stride, lanes, batch, precision, frames, layout, fortran order,
# token CRC, payload length, payload CRC
FIXED = struct.Struct("<32sHHHHBIBBIQI")
LAYOUTS = ((128,), (8, 16))  # the frame shape of a (T, 128) or a (T, 8, 16) array
DTYPE_PATTERN = re.compile(r"[<>|][iu][1248]")


@dataclass(frozen=True)
class Header:
    """Everything decoding depends on, besides the payload itself."""

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
    ))
    head = PREFIX.pack(MAGIC, VERSION, 0, len(body)) + body
    return head + CRC.pack(zlib.crc32(head)) + payload


def unpack(data: bytes) -> tuple[Header, memoryview]:
    """Parse and check a whole file; returns the header and the payload."""
    data = memoryview(data)
    if len(data) < PREFIX.size or bytes(data[:4]) != MAGIC:
        raise CorruptFileError("not a compressed commaVQ token file (bad magic)")
    _, version, flags, body_length = PREFIX.unpack_from(data)
    end = PREFIX.size + body_length
    if len(data) < end + CRC.size:
        raise CorruptFileError("truncated file: the header is incomplete")
    if zlib.crc32(data[:end]) != CRC.unpack_from(data, end)[0]:
        raise CorruptFileError("header checksum mismatch: the header is damaged")
    if version != VERSION:
        raise UnsupportedFormatError(f"unsupported format version {version} (this reader knows {VERSION})")
    if flags:
        raise UnsupportedFormatError(f"unsupported format: reserved flags 0x{flags:02x} are set")
    try:
        header = _parse_body(data[PREFIX.size:end])
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"invalid header: {exc}") from exc
    payload = data[end + CRC.size:]
    if len(payload) != header.payload_length:
        cut = "truncated" if len(payload) < header.payload_length else "trailing data after the payload"
        raise CorruptFileError(f"{cut}: payload has {len(payload)} bytes, header says {header.payload_length}")
    if zlib.crc32(payload) != header.payload_crc:
        raise CorruptFileError("payload checksum mismatch: the compressed data is damaged")
    return header, payload


def _parse_body(body: memoryview) -> Header:
    (fingerprint, window, stride, lanes, batch, precision, frames, layout, fortran, token_crc,
     payload_length, payload_crc) = FIXED.unpack_from(body)
    if layout >= len(LAYOUTS) or fortran > 1 or not 1 <= stride <= window or min(lanes, batch) < 1:
        raise ValueError("field out of range")
    used_lanes = len(lane_bounds(frames, lanes))
    offset = FIXED.size
    lane_words = struct.unpack_from(f"<{used_lanes}I", body, offset)
    offset += 4 * used_lanes
    (dtype_length,) = struct.unpack_from("<B", body, offset)
    dtype = bytes(body[offset + 1:offset + 1 + dtype_length]).decode("ascii")
    offset += 1 + dtype_length
    (numerics_length,) = struct.unpack_from("<H", body, offset)
    numerics = json.loads(bytes(body[offset + 2:offset + 2 + numerics_length]))
    if offset + 2 + numerics_length != len(body):
        raise ValueError("header length does not match its fields")
    if not DTYPE_PATTERN.fullmatch(dtype):
        raise ValueError(f"dtype {dtype!r} is not an integer dtype")
    if not isinstance(numerics, dict) or not all(
        isinstance(v, (str, int)) and not isinstance(v, bool) for v in numerics.values()
    ):
        raise ValueError("numerics is not a dict of strings and integers")
    if 4 * sum(lane_words) != payload_length:
        raise ValueError("lane lengths do not add up to the payload length")
    return Header(
        fingerprint=bytes(fingerprint).hex(), window=window, stride=stride, lanes=lanes, batch=batch,
        precision=precision, numerics=numerics, dtype=dtype, shape=(frames, *LAYOUTS[layout]),
        fortran_order=bool(fortran), token_crc=token_crc, lane_words=lane_words, payload_crc=payload_crc,
    )
