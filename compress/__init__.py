"""Lossless neural compression of commaVQ token segments with the world model.

`encode(tokens) -> bytes` and `decode(data) -> numpy.ndarray`; every bad input raises a
`CompressError`. The container and the determinism contract are in docs/FORMAT.md.
"""
from .api import (
    Encoded,
    decode,
    decode_many,
    default_engine,
    encode,
    encode_many,
    engine_for,
    fitted_batch,
    read_header,
)
from .codec import CodecParams
from .errors import CompressError, CorruptFileError, ModelMismatchError, UnsupportedFormatError
from .format import Header

__all__ = [
    "CodecParams",
    "CompressError",
    "CorruptFileError",
    "Encoded",
    "Header",
    "ModelMismatchError",
    "UnsupportedFormatError",
    "decode",
    "decode_many",
    "default_engine",
    "engine_for",
    "encode",
    "encode_many",
    "fitted_batch",
    "read_header",
]
