class EngineError(ValueError):
    """Bad input to the engine (tokens, shapes, options); the message names the problem."""
