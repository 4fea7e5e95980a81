"""`encode` / `decode`: token arrays <-> compressed bytes, one segment or many at once."""
from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from engine import Engine, EngineError, Numerics, resolve_device
from models import CheckpointError

from .codec import CodecParams, Progress, check_engine, check_params, decode_lanes, encode_lanes, run_lanes
from .coder import PRECISION
from .errors import CompressError, ModelMismatchError, UnsupportedFormatError
from .format import DTYPE_PATTERN, LAYOUTS, Header, lane_bounds, pack, unpack

TOKEN_VALUES = 1024  # commaVQ token ids are 0..1023
DEFAULT_MAX_BATCH = 8


@dataclass(frozen=True)
class Encoded:
    data: bytes
    ideal_bits: float  # sum(-log2 p) of the tokens under the quantized tables


def default_engine(max_batch: int = DEFAULT_MAX_BATCH, model: str | os.PathLike | None = None) -> Engine:
    """The engine `encode` uses when given none: the shipped default model (or `model`),
    compiled only on CUDA (on the CPU, compiling costs more than it saves on a segment)."""
    device = resolve_device(None)
    numerics = Numerics.for_engine_options(device, dtype=coding_dtype(device.type == "cuda"),
                                           compile=device.type == "cuda")
    return _cached_engine(None if model is None else str(model), max_batch, numerics)


def coding_dtype(cuda: bool) -> torch.dtype | None:
    """float32 on the CPU: sharper probabilities, and the small default model is bound by
    per-step overhead, not by bandwidth. On CUDA, the engine's choice (bfloat16)."""
    return None if cuda else torch.float32


def engine_for(header: Header, model: str | os.PathLike | None = None, max_batch: int = DEFAULT_MAX_BATCH) -> Engine:
    """An engine whose numerics are the file's: backend, dtype, device kind, compilation,
    prefill chunk and, on the CPU, torch's thread count, which is process-wide: this sets it."""
    try:
        numerics = Numerics.from_dict(header.numerics)
    except EngineError as exc:
        raise UnsupportedFormatError(f"the file's numerics do not say how to rebuild its engine: {exc}") from exc
    if numerics.device == "cuda" and not torch.cuda.is_available():
        raise ModelMismatchError("the file was compressed on a CUDA GPU: decoding it needs one too")
    numerics.set_threads()  # a cached engine was built with them, but they are process-wide
    try:
        return _cached_engine(None if model is None else str(model), max(max_batch, header.batch), numerics)
    except (EngineError, CheckpointError) as exc:
        raise ModelMismatchError(f"cannot rebuild the engine this file needs: {exc}") from exc


@lru_cache(maxsize=2)
def _cached_engine(model: str | None, max_batch: int, numerics: Numerics) -> Engine:
    """Engines are loaded once per process (and numerics)."""
    return Engine.from_numerics(numerics, model, max_batch)


def fitted_batch(engine: Engine, segments: list[np.ndarray], lanes: int) -> int:
    """As many streams as there are lanes to code, up to max_batch: on the CPU every row of
    a batch costs time, used or not."""
    lanes = max(lanes, 1)  # invalid lanes are refused later, by check_params
    total = sum(len(lane_bounds(np.shape(tokens)[0] if np.ndim(tokens) else 0, lanes)) for tokens in segments)
    return max(1, min(engine.max_batch, total))


def _frame_tokens(tokens: np.ndarray) -> np.ndarray:
    """Check a token array and return it as (T, 128) int64."""
    if not isinstance(tokens, np.ndarray) or not DTYPE_PATTERN.fullmatch(tokens.dtype.str):
        raise CompressError(f"tokens must be a numpy integer array, got {type(tokens).__name__} "
                            f"{getattr(tokens, 'dtype', '')}")
    if tokens.ndim < 2 or tokens.shape[1:] not in LAYOUTS or tokens.shape[0] >= 2**32:
        raise CompressError(f"tokens must be shaped (T, 8, 16) or (T, 128), got {tokens.shape}")
    flat = tokens.reshape(len(tokens), 128).astype(np.int64)
    if flat.size and (flat.min() < 0 or flat.max() >= TOKEN_VALUES):
        raise CompressError(f"token ids must lie in 0..{TOKEN_VALUES - 1}, found {flat.min()}..{flat.max()}")
    return flat


def encode_many(arrays: list[np.ndarray], engine: Engine, params: CodecParams,
                progress: Progress | None = None) -> list[Encoded]:
    """Encode several segments, their lanes batched together."""
    check_params(params, engine)
    if engine.config.frame_tokens != 128 or engine.config.vocab_size != TOKEN_VALUES + 1:
        raise CompressError("the model must have 128 tokens per frame and a vocabulary of 1024 ids plus BOS")
    segments = [encode_lanes(_frame_tokens(array), params) for array in arrays]
    run_lanes(engine, [lane for lanes in segments for lane in lanes], params, progress)
    encoded = []
    for array, lanes in zip(arrays, segments):
        words = [lane.encoder.finish().astype("<u4") for lane in lanes]
        payload = b"".join(w.tobytes() for w in words)
        header = Header(
            fingerprint=engine.fingerprint, window=params.window, stride=params.stride, lanes=params.lanes,
            batch=params.batch,
            precision=PRECISION, numerics=engine.numerics.to_dict(), dtype=array.dtype.str, shape=array.shape,
            fortran_order=array.ndim > 1 and np.isfortran(array),
            token_crc=zlib.crc32(np.ascontiguousarray(array).tobytes()),
            lane_words=tuple(len(w) for w in words), payload_crc=zlib.crc32(payload),
        )
        encoded.append(Encoded(pack(header, payload), sum(lane.ideal_bits for lane in lanes)))
    return encoded


def encode(tokens: np.ndarray, *, engine: Engine | None = None, window: int | None = None, stride: int = 1,
           lanes: int = 1, progress: Progress | None = None) -> bytes:
    """Compress a (T, 8, 16) or (T, 128) integer array of token ids 0..1023."""
    engine = engine or default_engine()
    window = engine.config.frames_per_window if window is None else window
    params = CodecParams(window, stride, lanes, fitted_batch(engine, [tokens], lanes))
    return encode_many([tokens], engine, params, progress)[0].data


def read_header(data: bytes) -> Header:
    """The header of a compressed file, after checking the whole file's checksums."""
    return unpack(data)[0]


def decode_many(files: list[bytes], engine: Engine, progress: Progress | None = None) -> list[np.ndarray]:
    """Decode several files, their lanes batched together when their schedules agree."""
    parsed = [unpack(data) for data in files]
    for header, _ in parsed:
        check_engine(header, engine)
    segments = [decode_lanes(header, payload, engine.config.frame_tokens) for header, payload in parsed]
    # Only lanes with the same window schedule and batch shape can share a batch.
    schedule = [CodecParams(h.window, h.stride, batch=h.batch) for h, _ in parsed]
    for params in dict.fromkeys(schedule):
        lanes = [lane for p, ls in zip(schedule, segments) if p == params for lane in ls]
        run_lanes(engine, lanes, params, progress)
    return [_restore(header, lanes) for (header, _), lanes in zip(parsed, segments)]


def _restore(header: Header, lanes: list) -> np.ndarray:
    frames = np.concatenate([lane.frames for lane in lanes]) if lanes else np.zeros((0, 128), np.int64)
    array = frames.astype(np.dtype(header.dtype)).reshape(header.shape)
    if zlib.crc32(array.tobytes()) != header.token_crc:
        raise ModelMismatchError(
            "decoded tokens fail their checksum although the payload is intact: "
            "the model or numerics differ from the encoder's"
        )
    return np.asfortranarray(array) if header.fortran_order else array


def decode(data: bytes, *, engine: Engine | None = None, progress: Progress | None = None) -> np.ndarray:
    """Restore the exact array (dtype, byte order, shape) that `encode` compressed. Without
    an `engine`, the default model runs with the numerics the file records (`engine_for`)."""
    if engine is None:
        engine = engine_for(unpack(data)[0])
    return decode_many([data], engine, progress)[0]
