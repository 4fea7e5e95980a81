"""The container: a checksummed header, then the payload: one range-coded stream of 32-bit
words (the segment's lanes interleaved), or the tokens stored raw at 10 bits each.

Layout (little-endian; see docs/FORMAT.md):

    magic 4 | version u8 | flags u8 | body_length u32 | body | header CRC32 u32 | payload

The prefix, the body length and the trailing CRC keep their places in every version, so
a damaged header ("corrupt") is told apart from an intact one this version cannot read
("unsupported": another version or a reserved flag set). Version 1 (commavq-engine 0.1:
one stream per lane, float numerics only) is no longer read.

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

from models.npy import DTYPE_PATTERN, NPY_VERSIONS
from models.tokens import FRAME_TOKENS, LAYOUTS  # LAYOUTS' index is the header's layout byte

from .errors import CorruptFileError, UnsupportedFormatError

MAGIC = b"\xfeCVQ"  # 0xFE never occurs in ASCII or UTF-8 text
VERSION = 2
PREFIX = struct.Struct("<4sBBI")
CRC = struct.Struct("<I")
# fingerprint, window, stride, lanes, batch, precision, tables, storage, frames, layout,
# fortran order, token CRC, payload length, payload CRC
FIXED = struct.Struct("<32sHHHHBBBIBBIQI")
NPY_VERSION = struct.Struct("<BB")  # the .npy format (major, minor) of the input
CODED, RAW = 0, 1  # storage: range-coded with the model, or 10 bits per token when that is smaller
TABLES = (2,)  # frequency-table versions this reader knows (compress/frequencies.py)
MIXER_TEXT = re.compile(r"[A-Za-z0-9_.:,=+/^-]{0,200}")
MAX_FRAMES = 2**32 - 1  # the frames field is a u32
# The most streams per engine call an encoder may write. The decoder opens this many rows
# whatever the payload's size, so it bounds the memory a tiny file can demand.
MAX_BATCH = 64
# Lanes of a segment run side by side in one batch, each with its own mixer state.
MAX_LANES = MAX_BATCH
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
    batch: int  # float numerics: streams per engine call; exact: 0 (any batch gives the same bits)
    precision: int  # frequency tables sum to 2**precision
    numerics: dict[str, str | int]  # engine.numerics: the logits' bits depend on these
    dtype: str  # numpy dtype.str of the original array, byte order included
    shape: tuple[int, ...]  # (T, 128) or (T, 8, 16)
    fortran_order: bool
    token_crc: int  # CRC32 of the original array's bytes in C order
    payload_length: int  # bytes
    payload_crc: int
    tables: int = 2  # the frequency-table version (compress/frequencies.py)
    mixer: str = ""  # the context mixer's version (compress/mixing.py); "" when off
    storage: int = CODED  # CODED or RAW
    npy_version: tuple[int, int] = (1, 0)  # .npy format the array came in

    @property
    def frames(self) -> int:
        return self.shape[0]

    @property
    def tokens(self) -> int:
        return self.frames * FRAME_TOKENS


def lane_bounds(frames: int, lanes: int) -> list[tuple[int, int]]:
    """The [start, end) frames of each non-empty lane: equal runs, the last one shorter."""
    size = max(1, -(-frames // lanes))
    return [(start, min(start + size, frames)) for start in range(0, frames, size)]


def pack(header: Header, payload: bytes) -> bytes:
    numerics = json.dumps(header.numerics, sort_keys=True, separators=(",", ":")).encode()
    dtype, mixer = header.dtype.encode(), header.mixer.encode()
    body = b"".join((
        FIXED.pack(
            bytes.fromhex(header.fingerprint), header.window, header.stride, header.lanes, header.batch,
            header.precision, header.tables, header.storage, header.frames, LAYOUTS.index(header.shape[1:]),
            header.fortran_order, header.token_crc, len(payload), header.payload_crc,
        ),
        struct.pack("<B", len(dtype)), dtype,
        struct.pack("<H", len(numerics)), numerics,
        struct.pack("<B", len(mixer)), mixer,
        NPY_VERSION.pack(*header.npy_version),
    ))
    head = PREFIX.pack(MAGIC, VERSION, 0, len(body)) + body
    return head + CRC.pack(zlib.crc32(head)) + payload


def repack(data: bytes, **changes: object) -> bytes:
    """A valid file with some header fields replaced (`dataclasses.replace` names)."""
    header, payload = unpack(data)
    return pack(replace(header, **changes), bytes(payload))


def read_header(data: bytes) -> Header:
    """The header of a compressed file, after checking the whole file's checksums."""
    return unpack(data)[0]


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
    if version == 1:
        raise UnsupportedFormatError("format version 1 (commavq-engine 0.1) is no longer read: "
                                     "decode the file with that release")
    if version != VERSION:
        raise UnsupportedFormatError(f"unsupported format version {version} (this reader knows {VERSION})")
    if flags:
        raise UnsupportedFormatError(f"unsupported format: reserved flags 0x{flags:02x} are set")
    try:
        header = _parse_body(data[PREFIX.size:end])
    except (struct.error, ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise CorruptFileError(f"invalid header: {exc}") from exc
    payload = data[end + CRC.size:]
    if len(payload) != header.payload_length:
        cut = "truncated" if len(payload) < header.payload_length else "trailing data after the payload"
        raise CorruptFileError(f"{cut}: payload has {len(payload)} bytes, header says {header.payload_length}")
    if zlib.crc32(payload) != header.payload_crc:
        raise CorruptFileError("payload checksum mismatch: the compressed data is damaged")
    return header, payload


def _parse_body(body: memoryview) -> Header:
    """The header's fields, each checked; any ValueError means an invalid header."""
    (fingerprint, window, stride, lanes, batch, precision, tables, storage, frames, layout, fortran, token_crc,
     payload_length, payload_crc) = FIXED.unpack_from(body)
    if layout >= len(LAYOUTS) or fortran > 1:
        raise ValueError(f"layout {layout} or Fortran order {fortran} out of range")
    if not 1 <= stride <= window:
        raise ValueError(f"stride {stride} must be 1..window ({window})")
    if not 0 <= batch <= MAX_BATCH:
        raise ValueError(f"batch {batch} must be 0..{MAX_BATCH}")
    if not 1 <= lanes <= MAX_LANES:
        raise ValueError(f"lanes {lanes} must be 1..{MAX_LANES}")
    if storage not in (CODED, RAW):
        raise ValueError(f"storage {storage} is neither coded (0) nor raw (1)")
    offset = FIXED.size
    (dtype_length,) = struct.unpack_from("<B", body, offset)
    dtype = bytes(body[offset + 1:offset + 1 + dtype_length]).decode("ascii")
    offset += 1 + dtype_length
    (numerics_length,) = struct.unpack_from("<H", body, offset)
    if numerics_length > MAX_NUMERICS_BYTES:
        raise ValueError(f"numerics of {numerics_length} bytes (at most {MAX_NUMERICS_BYTES})")
    numerics = json.loads(bytes(body[offset + 2:offset + 2 + numerics_length]))
    offset += 2 + numerics_length
    (mixer_length,) = struct.unpack_from("<B", body, offset)
    mixer = bytes(body[offset + 1:offset + 1 + mixer_length]).decode("ascii")
    offset += 1 + mixer_length
    npy_version = NPY_VERSION.unpack_from(body, offset)
    offset += NPY_VERSION.size
    if offset != len(body):
        raise ValueError("header length does not match its fields")
    if not DTYPE_PATTERN.fullmatch(dtype) or np.dtype(dtype).str != dtype:
        raise ValueError(f"dtype {dtype!r} is not an integer dtype as numpy writes it")
    _check_numerics(numerics)
    if npy_version not in NPY_VERSIONS:
        raise ValueError(f".npy format version {npy_version} is not one of {NPY_VERSIONS}")
    if not MIXER_TEXT.fullmatch(mixer):
        raise ValueError(f"mixer {mixer[:40]!r} is not a mixer version")
    if storage == RAW and payload_length != raw_length(frames):
        raise ValueError(f"raw payload of {payload_length} bytes for {frames} frames")
    if storage == CODED and payload_length % 4:
        raise ValueError(f"coded payload of {payload_length} bytes is not whole 32-bit words")
    return Header(
        fingerprint=bytes(fingerprint).hex(), window=window, stride=stride, lanes=lanes, batch=batch,
        precision=precision, numerics=numerics, dtype=dtype, shape=(frames, *LAYOUTS[layout]),
        fortran_order=bool(fortran), token_crc=token_crc, payload_length=payload_length,
        payload_crc=payload_crc, tables=tables, mixer=mixer, storage=storage, npy_version=npy_version,
    )


def raw_length(frames: int) -> int:
    """Bytes of `frames` frames stored raw: 10 bits per token."""
    return frames * FRAME_TOKENS * 10 // 8


def pack_raw(tokens: np.ndarray) -> bytes:
    """(T, 128) token ids 0..1023 -> 10 bits each, little-endian bit order."""
    bits = (tokens.reshape(-1, 1).astype(np.uint16) >> np.arange(10, dtype=np.uint16)) & 1
    return np.packbits(bits.astype(np.uint8).reshape(-1), bitorder="little").tobytes()


def unpack_raw(payload: bytes, frames: int) -> np.ndarray:
    """The inverse of `pack_raw`: (frames, 128) int64."""
    bits = np.unpackbits(np.frombuffer(payload, dtype=np.uint8), bitorder="little").reshape(-1, 10)
    return (bits.astype(np.int64) << np.arange(10)).sum(axis=1).reshape(frames, FRAME_TOKENS)


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
