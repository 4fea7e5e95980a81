"""The lockstep decoder's two per-frame paths, the compiled frame (`frame_kernel`, exact
numerics on the CPU) and the Python loop, decode the same tokens: for several segments of
different lengths side by side, lanes, strides, with and without mixing. And the kernels
behind them against their references: tables, contexts."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from compress import CodecParams, ModelMismatchError, lockstep
from compress.coder import TokenDecoder
from compress.lanes import Segment, encode_teacher_forced
from compress.lockstep import run_lockstep
from compress.frequencies import SYMBOLS, frequency_tables
from compress.mixing import CONTEXTS, ContextMixer, MixerConfig
from compress.table_kernels import frame_contexts, frequency_rows
from engine import Engine
from models import GPT, GPTConfig, save_pretrained

WINDOW = 3


@pytest.fixture(scope="module")
def exact_engine(tmp_path_factory) -> Engine:
    torch.manual_seed(3)
    directory = tmp_path_factory.mktemp("lockstep")
    save_pretrained(GPT(GPTConfig(n_positions=WINDOW * 129, n_layer=2, n_head=2, n_embd=16, n_inner=32)), directory)
    return Engine.from_pretrained(directory, max_batch=8, numerics="exact")


def drives(rng: np.random.Generator, lengths: list[int]) -> list[np.ndarray]:
    """Segments whose frames often repeat the previous one (the mixer's counts matter)."""
    out = []
    for length in lengths:
        frames = rng.integers(0, 1024, size=(length, 128))
        for t in range(1, length):
            keep = rng.random(128) < 0.5
            frames[t, keep] = frames[t - 1, keep]
        out.append(frames.astype(np.int16))
    return out


def decoding(segments: list[np.ndarray], params: CodecParams, engine: Engine) -> list[Segment]:
    """Segments ready to decode the streams the teacher-forced encoder wrote for `segments`
    (straight from the coder: a random model's file would be stored raw)."""
    out = []
    for tokens in segments:
        encoded = Segment(tokens.reshape(-1, 128).astype(np.int64), params)
        encode_teacher_forced(engine, encoded)
        out.append(Segment(np.zeros_like(encoded.frames), params, decoder=TokenDecoder(encoded.encoder.finish())))
    return out


@pytest.mark.parametrize("stride, lanes, mixing", [(1, 1, True), (2, 3, True), (1, 2, False)])
def test_compiled_frames_decode_what_the_python_loop_decodes(exact_engine, monkeypatch, stride, lanes, mixing):
    rng = np.random.default_rng(stride * 10 + lanes)
    segments = drives(rng, [5, 2, 7])
    params = CodecParams(WINDOW, stride, lanes, 1, mixing)
    compiled, counted = decoding(segments, params, exact_engine), []
    run_lockstep(exact_engine, compiled, 8, counted.append)
    assert sum(counted) == sum(segment.size for segment in segments)
    monkeypatch.setattr(lockstep._CompiledFrames, "for_run", classmethod(lambda cls, *args: None))
    looped = decoding(segments, params, exact_engine)
    run_lockstep(exact_engine, looped, 8)
    for tokens, a, b in zip(segments, compiled, looped):
        assert np.array_equal(a.frames, tokens.reshape(-1, 128)) and np.array_equal(b.frames, a.frames)
        assert np.array_equal(a.decoder.state, b.decoder.state)  # the streams read to the same point


def test_the_compiled_frame_runs_where_it_should(exact_engine) -> None:
    segments = decoding(drives(np.random.default_rng(1), [2]), CodecParams(WINDOW), exact_engine)
    assert lockstep._CompiledFrames.for_run(exact_engine, segments, np.zeros(1, dtype=np.int64)) is not None
    encoding = [Segment(np.zeros((2, 128), dtype=np.int64), CodecParams(WINDOW))]  # encoders: the Python loop
    assert lockstep._CompiledFrames.for_run(exact_engine, encoding, np.zeros(1, dtype=np.int64)) is None


def test_a_stream_of_another_model_decodes_to_other_tokens(exact_engine, tmp_path) -> None:
    """Wrong logits: the compiled frame decodes garbage (the file's token checksum catches
    it) or reports a stream its tables cannot read, never crashes."""
    tokens = drives(np.random.default_rng(0), [3])
    torch.manual_seed(4)
    save_pretrained(GPT(GPTConfig(n_positions=WINDOW * 129, n_layer=2, n_head=2, n_embd=16, n_inner=32)), tmp_path)
    other = Engine.from_pretrained(tmp_path, max_batch=8, numerics="exact")
    segments = decoding(tokens, CodecParams(WINDOW), exact_engine)
    try:
        run_lockstep(other, segments, 8)
    except ModelMismatchError:
        return
    assert not np.array_equal(segments[0].frames, tokens[0].reshape(-1, 128))


def test_compiled_tables_equal_the_torch_tables() -> None:
    """`frequency_rows` and the torch ops of `frequency_tables` agree on hard logits: ties,
    -inf, overflowing differences, denormals, one-hot, flat."""
    rng = np.random.default_rng(5)
    rows = 300
    logits = (rng.normal(size=(rows, SYMBOLS + 1)) * rng.choice([1e-3, 1, 8, 1e4], size=(rows, 1))).astype(np.float32)
    logits[0, :2] = 3e38, -3e38
    logits[1] = 1e-40
    logits[2, ::3] = -np.inf
    logits[3, 10:20] = logits[3].max()
    logits[4] = 0.0
    logits[5, 7] = 1e4
    torch_tables = frequency_tables(torch.from_numpy(logits)).numpy()
    out = np.empty((rows, SYMBOLS), dtype=np.int64)
    assert frequency_rows(logits, out) == -1
    assert np.array_equal(out, torch_tables)
    for bad in (np.nan, np.inf):
        logits[9, 100] = bad
        assert frequency_rows(logits, out) == 9
    logits[9] = -np.inf
    assert frequency_rows(logits, out) == 9


def reference_context(kind: str, previous: np.ndarray, frame: np.ndarray, cell: int) -> int:
    """The contexts as the mixer defines them (-1: none): the token at the cell in frame t-1
    or t-2 (-1 before there is one), the token above or left of it in the frame being coded
    (cells come in raster order, 16 to a row), or the cell itself."""
    row, column = divmod(cell, 16)
    if kind in ("prev", "prev2"):
        return int(previous[0 if kind == "prev" else 1, cell])
    if kind == "above":
        return int(frame[cell - 16]) if row else -1
    if kind == "left":
        return int(frame[cell - 1]) if column else -1
    return cell


@pytest.mark.parametrize("contexts", [CONTEXTS, ("left", "above"), ("prev2",)])
def test_the_mixer_counts_and_reads_the_contexts_as_defined(contexts) -> None:
    """`frame_contexts` (what `end_frame` counts under) and the count rows `mix_rows` reads
    follow the definitions, after one frame (t-2 still missing) and after two."""
    rng = np.random.default_rng(len(contexts))
    mixer = ContextMixer(2, MixerConfig(contexts=contexts))
    model = np.full((2 * 128, SYMBOLS), 1, dtype=np.int64)
    model[:, 0] += 2**24 - SYMBOLS
    lanes, cells = np.repeat([0, 1], 128), np.tile(np.arange(128), 2)
    for _ in range(2):  # frame t-1 becomes known, then t-2
        mixer.predict_frame(model.reshape(2, 128, SYMBOLS), rng.integers(0, 1024, (2, 128)))
        mixer.end_frame(mixer._token.copy())
        current = rng.integers(0, 1024, (2, 128))
        expected = np.array([[[reference_context(kind, mixer._prev[lane], current[lane], cell) for cell in range(128)]
                              for kind in contexts] for lane in range(2)])
        got = np.empty_like(expected)
        frame_contexts(np.arange(2), current, mixer._prev, mixer._kinds, 16, got)
        assert np.array_equal(got, expected)
        _, _, flat, _, _, _ = mixer._mix(lanes, cells, lanes, current, model)
        assert np.array_equal(flat, expected.transpose(0, 2, 1).reshape(256, -1) + mixer._offset)
