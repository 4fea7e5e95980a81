"""The compressor's errors: every bad input raises a `CompressError` subclass."""


class CompressError(ValueError):
    """Input the compressor cannot encode or decode; the message says why."""


class CorruptFileError(CompressError):
    """The file is damaged: bad magic, truncated, checksum mismatch, or invalid fields."""


class UnsupportedFormatError(CompressError):
    """An intact file from a newer format: unknown version or a reserved flag set."""


class ModelMismatchError(CompressError):
    """The file is intact but needs another model or other numerics than the engine has."""


class TokenChecksumError(ModelMismatchError):
    """An intact payload decoded to tokens that fail their checksum: the decoder's logits
    differed from the encoder's although the header's model and numerics match. Float
    logits also depend on things no header records; the message lists what to check."""

    def __init__(self) -> None:
        super().__init__(
            "decoded tokens fail their checksum although the payload is intact: the logits differ from the "
            "encoder's. The model and numerics match the header, so check what it does not record: torch and "
            "BLAS versions, and settings that change float results, such as MKL_CBWR, MKL_ENABLE_INSTRUCTIONS, "
            "ATEN_CPU_CAPABILITY, OMP_NUM_THREADS and MKL_NUM_THREADS; decode with the encoder's setup"
        )
