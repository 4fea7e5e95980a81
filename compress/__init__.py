"""Lossless neural compression of commaVQ token segments with the world model.

`encode(tokens) -> bytes` and `decode(data) -> numpy.ndarray`; every bad input raises a
`CompressError`. The container and the determinism contract are in docs/FORMAT.md.

The names are imported on first use, so `python -m compress` can answer Ctrl-C with one
line while torch (seconds to import) is still loading.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .api import Encoded, decode, decode_many, default_engine, encode, encode_many, engine_for, fitted_batch
    from .errors import CompressError, CorruptFileError, ModelMismatchError, UnsupportedFormatError
    from .format import Header, read_header
    from .lanes import CodecParams

_HOMES = {
    **dict.fromkeys(("Encoded", "decode", "decode_many", "default_engine", "encode", "encode_many", "engine_for",
                     "fitted_batch"), ".api"),
    **dict.fromkeys(("CompressError", "CorruptFileError", "ModelMismatchError", "UnsupportedFormatError"), ".errors"),
    **dict.fromkeys(("Header", "read_header"), ".format"),
    "CodecParams": ".lanes",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> object:
    if name not in _HOMES:
        raise AttributeError(f"module 'compress' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name], __name__), name)
