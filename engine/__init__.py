"""Static-shape paged inference for the commaVQ world model.

`Engine.imagine(tokens, n)` continues drives; `Engine.open_streams(b)` is the step
interface (prefill, then one token per stream per step) that imagine and the compressor
share.
"""
from .engine import Engine
from .errors import EngineError
from .streams import Streams

__all__ = ["Engine", "EngineError", "Streams"]
