"""`encode` / `decode`: token arrays <-> compressed bytes, one segment or many at once."""
from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from engine import Engine, EngineError, Numerics, resolve_device
from models import CheckpointError, load_pretrained
from models.tokens import FRAME_TOKENS, TOKEN_VALUES, frame_tokens

from .coder import PRECISION, TokenDecoder
from .errors import CompressError, CorruptFileError, ModelMismatchError, TokenChecksumError, UnsupportedFormatError
from .format import (CODED, MAX_BATCH, RAW, TABLES, Header, lane_bounds, pack, pack_raw, raw_length, read_header, unpack,
                     unpack_raw)
from .frequencies import TABLES_VERSION, TOTAL
from .defaults import DEFAULT_LANES, DEFAULT_MAX_BATCH
from .lanes import CodecParams, Progress, Segment, check_params, encode_teacher_forced
from .lockstep import run_lockstep
from .mixing import MixerConfig

# The cheapest a token can be: the 1023 other ids hold at least 1 of TOTAL each. It bounds
# the tokens (the work) a payload of a given size can claim.
MIN_BITS_PER_TOKEN = -np.log2(1 - (TOKEN_VALUES - 1) / TOTAL)
EXACT_CACHE_BYTES = 2**30  # exact numerics: int8 K/V for as many streams as fit (at most MAX_BATCH)


@dataclass(frozen=True)
class Encoded:
    data: bytes
    ideal_bits: float  # sum(-log2 p) of the tokens under the coded tables


def default_engine(max_batch: int | None = None, model: str | os.PathLike | None = None,
                   numerics: str = "exact", device: str | None = None) -> Engine:
    """The engine `encode` uses when given none: the shipped default model (or `model`).
    Exact numerics by default (files decode on any machine); "float" is the model's float
    arithmetic (float32 on the CPU, the engine's choice on CUDA), whose files decode only
    where the same numerics can be rebuilt."""
    device_ = resolve_device(device)
    if numerics == "exact":
        choice = Numerics.exact(device_)
    elif numerics == "float":
        cuda = device_.type == "cuda"
        choice = Numerics.for_engine_options(device_, dtype=None if cuda else torch.float32, compile=cuda)
    else:
        raise CompressError(f"numerics must be 'exact' or 'float', got {numerics!r}")
    return _cached_engine(None if model is None else str(model), max_batch, choice)


def engine_for(header: Header, model: str | os.PathLike | None = None, max_batch: int | None = None,
               device: str | None = None) -> Engine:
    """An engine whose numerics are the file's. Exact: on `device` (default: CUDA if there
    is one). Float: the device kind, backend, dtype, compilation, prefill chunk and, on the
    CPU, torch's thread count the file records (process-wide: this sets it)."""
    try:
        numerics = Numerics.from_dict(header.numerics)
    except EngineError as exc:
        raise UnsupportedFormatError(f"the file's numerics do not say how to rebuild its engine: {exc}") from exc
    if numerics.mode == "exact":
        numerics = Numerics.exact(resolve_device(device))
    elif numerics.device == "cuda" and not torch.cuda.is_available():
        raise ModelMismatchError("the file was compressed on a CUDA GPU in float numerics: decoding it needs one too")
    numerics.set_threads()  # a cached engine was built with them, but they are process-wide
    if numerics.mode == "float":
        max_batch = max(max_batch or DEFAULT_MAX_BATCH, header.batch)
    try:
        return _cached_engine(None if model is None else str(model), max_batch, numerics)
    except (EngineError, CheckpointError) as exc:
        raise ModelMismatchError(f"cannot rebuild the engine this file needs: {exc}") from exc


@lru_cache(maxsize=2)
def _cached_engine(model: str | None, max_batch: int | None, numerics: Numerics) -> Engine:
    """Engines are loaded once per process (and numerics)."""
    gpt = load_pretrained(model, dtype=numerics.torch_dtype)  # once: its config sizes the batch
    if max_batch is None:
        max_batch = DEFAULT_MAX_BATCH
        if numerics.mode == "exact":  # rows cost little there: as many as the cache allows
            config = gpt.config
            per_stream = 2 * config.n_layer * config.n_positions * config.n_embd
            max_batch = max(DEFAULT_MAX_BATCH, min(MAX_BATCH, EXACT_CACHE_BYTES // per_stream))
    return Engine.from_numerics(numerics, gpt, max_batch)


def fitted_batch(engine: Engine, segments: list[np.ndarray], lanes: int) -> int:
    """Float numerics: as many streams as there are lanes to code, up to max_batch (on the
    CPU every row of a batch costs time, used or not)."""
    lanes = max(lanes, 1)  # invalid lanes are refused later, by check_params
    total = sum(len(lane_bounds(np.shape(tokens)[0] if np.ndim(tokens) else 0, lanes)) for tokens in segments)
    return max(1, min(engine.max_batch, total))


def _exact(engine: Engine) -> bool:
    return engine.numerics.mode == "exact"


def _check_model(engine: Engine) -> None:
    config = engine.config
    if config.frame_tokens != FRAME_TOKENS or config.vocab_size != TOKEN_VALUES + 1:
        raise CompressError("the model must have 128 tokens per frame and a vocabulary of 1024 ids plus BOS")


def _runs(segments: list[Segment], rows: int) -> list[list[Segment]]:
    """Whole segments grouped into lockstep runs of at most `rows` lanes."""
    runs: list[list[Segment]] = [[]]
    used = 0
    for segment in segments:
        lanes = len(segment.bounds)
        if lanes > rows:
            raise CompressError(f"a segment of {lanes} lanes cannot run in a batch of {rows} streams")
        if used + lanes > rows:
            runs.append([])
            used = 0
        runs[-1].append(segment)
        used += lanes
    return runs


def encode_many(arrays: list[np.ndarray], engine: Engine, params: CodecParams,
                progress: Progress | None = None) -> list[Encoded]:
    """Encode several segments: teacher-forced in exact numerics, else lanes in lockstep."""
    check_params(params, engine)
    _check_model(engine)
    segments = [Segment(_tokens(array), params) for array in arrays]
    if _exact(engine):
        for segment in segments:
            encode_teacher_forced(engine, segment, progress)
    else:
        for run in _runs(segments, params.batch):
            run_lockstep(engine, run, params.batch, progress)
    return [_container(array, segment, engine) for array, segment in zip(arrays, segments)]


def _tokens(array: np.ndarray) -> np.ndarray:
    if not isinstance(array, np.ndarray):
        raise CompressError(f"tokens must be a numpy integer array, got {type(array).__name__}")
    if array.ndim >= 1 and array.shape[0] >= 2**32:
        raise CompressError(f"at most 2**32 - 1 frames, got {array.shape[0]}")
    return frame_tokens(array, CompressError)


def _container(array: np.ndarray, segment: Segment, engine: Engine) -> Encoded:
    params = segment.params
    payload = segment.encoder.finish().astype("<u4").tobytes()
    storage = CODED
    if len(payload) > raw_length(len(segment.frames)):  # coding does not pay: store 10 bits a token
        payload, storage = pack_raw(segment.frames), RAW
    header = Header(
        fingerprint=engine.fingerprint, window=params.window, stride=params.stride, lanes=params.lanes,
        batch=0 if _exact(engine) else params.batch, precision=PRECISION, numerics=engine.numerics.to_dict(),
        dtype=array.dtype.str, shape=array.shape, fortran_order=array.ndim > 1 and np.isfortran(array),
        token_crc=zlib.crc32(np.ascontiguousarray(array).tobytes()), payload_length=len(payload),
        payload_crc=zlib.crc32(payload), tables=TABLES_VERSION, storage=storage,
        mixer=segment.mixer_version,
    )
    return Encoded(pack(header, payload), segment.ideal_bits)


def encode(tokens: np.ndarray, *, engine: Engine | None = None, window: int | None = None, stride: int = 1,
           lanes: int = DEFAULT_LANES, mixing: bool = True, progress: Progress | None = None) -> bytes:
    """Compress a (T, 8, 16) or (T, 128) integer array of token ids 0..1023."""
    engine = engine or default_engine()
    window = engine.config.frames_per_window if window is None else window
    batch = fitted_batch(engine, [tokens], lanes)
    return encode_many([tokens], engine, CodecParams(window, stride, lanes, batch, mixing), progress)[0].data


def check_engine(header: Header, engine: Engine) -> None:
    """Refuse an engine whose tables could differ from the encoder's, and a header that
    asks this decoder for what it does not know or for more work than its payload can pay."""
    if header.tables not in TABLES:
        raise UnsupportedFormatError(f"frequency tables version {header.tables} (this decoder knows {TABLES})")
    if header.mixer not in ("", MixerConfig().version):
        raise UnsupportedFormatError(f"context mixer {header.mixer!r} (this decoder knows {MixerConfig().version!r})")
    if header.storage == RAW:
        return  # no model involved
    if header.fingerprint != engine.fingerprint:
        raise ModelMismatchError(
            f"model mismatch: the file was compressed with model {header.fingerprint[:16]}, "
            f"this engine has model {engine.fingerprint[:16]}"
        )
    ours = engine.numerics.to_dict()
    if header.numerics != ours:
        diff = sorted(k for k in header.numerics.keys() | ours.keys() if header.numerics.get(k) != ours.get(k))
        shown = ", ".join(f"{k}: file {header.numerics.get(k)!r} vs engine {ours.get(k)!r}" for k in diff)
        raise ModelMismatchError(f"numerics mismatch, the logits could differ from the encoder's ({shown})")
    if header.batch > engine.max_batch or (header.batch == 0) != _exact(engine):
        raise ModelMismatchError(f"the file was coded in batches of {header.batch} streams; "
                                 f"this engine's max_batch is {engine.max_batch}")
    if header.window > engine.config.frames_per_window:
        raise CorruptFileError(f"window {header.window} exceeds the model's {engine.config.frames_per_window} frames")
    if header.tokens * MIN_BITS_PER_TOKEN > 8 * header.payload_length + 64:
        raise CorruptFileError(f"header claims {header.frames} frames for a payload of {header.payload_length} bytes")


def decode_many(files: list[bytes], engine: Engine, progress: Progress | None = None) -> list[np.ndarray]:
    """Decode several files, the lanes of all of them in lockstep where their schedules agree."""
    parsed = [unpack(data) for data in files]
    for header, _ in parsed:
        check_engine(header, engine)
    frames: list[np.ndarray | None] = [None] * len(parsed)
    groups: dict[tuple, list[tuple[int, Segment]]] = {}
    for index, (header, payload) in enumerate(parsed):
        if header.storage == RAW:
            frames[index] = unpack_raw(bytes(payload), header.frames)
            continue
        params = CodecParams(header.window, header.stride, header.lanes, max(header.batch, 1), bool(header.mixer))
        words = np.frombuffer(payload, dtype="<u4")
        segment = Segment(np.zeros((header.frames, FRAME_TOKENS), np.int64), params, decoder=TokenDecoder(words))
        groups.setdefault((params, header.batch), []).append((index, segment))
        frames[index] = segment.frames
    for (params, batch), members in groups.items():
        rows = batch or engine.max_batch  # float: the file's batch shape; exact: any
        for run in _runs([segment for _, segment in members], rows):
            run_lockstep(engine, run, rows if batch else sum(len(s.bounds) for s in run), progress)
    return [_restore(header, tokens) for (header, _), tokens in zip(parsed, frames)]


def _restore(header: Header, frames: np.ndarray) -> np.ndarray:
    array = frames.astype(np.dtype(header.dtype)).reshape(header.shape)
    if zlib.crc32(array.tobytes()) != header.token_crc:
        raise TokenChecksumError()
    return np.asfortranarray(array) if header.fortran_order else array


def decode(data: bytes, *, engine: Engine | None = None, progress: Progress | None = None) -> np.ndarray:
    """Restore the exact array (dtype, byte order, shape) that `encode` compressed. Without
    an `engine`, the default model runs with the numerics the file records (`engine_for`)."""
    if engine is None:
        engine = engine_for(unpack(data)[0])
    return decode_many([data], engine, progress)[0]
