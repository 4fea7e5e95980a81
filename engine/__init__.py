"""Static-shape paged inference for the commaVQ world model.

`Engine.imagine(tokens, n)` continues drives; `Engine.open_streams(b)` is the step
interface (prefill, then one token per stream per step) that imagine and the compressor
share; `Numerics` is the determinism contract a compressed file records.

The names are imported on first use, so `python -m engine` can check its arguments and
answer Ctrl-C with one line before torch (seconds to import) is loaded.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .host import keep_freed_memory, usable_cpus
    from .engine import Engine
    from .errors import EngineError
    from .numerics import Numerics, fast_dtype, resolve_device
    from .streams import Streams

_HOMES = {"Engine": ".engine", "EngineError": ".errors", "keep_freed_memory": ".host", "usable_cpus": ".host",
          "Numerics": ".numerics", "fast_dtype": ".numerics", "resolve_device": ".numerics", "Streams": ".streams"}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> object:
    if name not in _HOMES:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name], __name__), name)
