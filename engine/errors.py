"""The engine package's one exception."""


class EngineError(ValueError):
    """Bad input to the engine (tokens, shapes, options, numerics); the message names the problem."""
