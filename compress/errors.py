"""The compressor's errors: every bad input raises a `CompressError` subclass."""


class CompressError(ValueError):
    """Input the compressor cannot encode or decode; the message says why."""


class CorruptFileError(CompressError):
    """The file is damaged: bad magic, truncated, checksum mismatch, or invalid fields."""


class UnsupportedFormatError(CompressError):
    """An intact file from a newer format: unknown version or a reserved flag set."""


class ModelMismatchError(CompressError):
    """The file is intact but needs another model or other numerics than the engine has."""
