class CheckpointError(ValueError):
    """A checkpoint or model configuration that cannot be used; the message names the problem."""
