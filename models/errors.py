"""The models package's exceptions; each message names the file, key or value at fault."""


class CheckpointError(ValueError):
    """A checkpoint or model configuration that cannot be used; the message names the problem."""


class DataError(ValueError):
    """A data file that is not a valid token segment; the message names the file."""
