"""Imagine against an independent reference (the plain `models.GPT`), batch independence at
the defaults, and the frame loop (one CUDA graph per frame on CUDA) against the step-by-step path."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

import models
from engine import Engine, EngineError
from engine.cuda_graph import CudaGraphFrame
from engine.frame_loop import Sampling
from engine.sampling import sample
from engine.streams import Streams
from models import GPTConfig
from test_engine import tiny_model

# Real 128-token frames and a 6-frame window, so contexts shorter than the window happen;
# a tiny width keeps the token-by-token loop fast.
WINDOW = 6
CONFIG = GPTConfig(vocab_size=1025, frame_tokens=128, n_positions=WINDOW * 129, n_layer=1, n_head=2, n_embd=16, n_inner=32)


@pytest.fixture(scope="module")
def model() -> models.GPT:
    return tiny_model(CONFIG)


@torch.no_grad()
def assert_greedy_under_reference(model: models.GPT, context: np.ndarray, new: np.ndarray) -> None:
    """Every new token must be the reference model's argmax (BOS excluded) given the sliding
    window that commaVQ's generation loop builds: the last WINDOW - 1 frames of the history
    (all of them while it is shorter), each behind BOS, then BOS and the frame so far.
    By induction on the tokens this is greedy decoding, checked with one forward per frame."""
    bos = CONFIG.bos_token_id
    history = list(context)
    for frame in new:
        window = history[max(len(history) - (WINDOW - 1), 0) :]
        sequence = [t for f in window for t in [bos, *f]] + [bos, *frame]
        logits = model(torch.tensor([sequence]))[0, -CONFIG.frame_tokens - 1 : -1]
        logits[:, bos] = float("-inf")
        chosen = logits.argmax(dim=-1).numpy()
        assert np.array_equal(chosen, frame), f"frame {len(history) - len(context)} after {len(context)} context frames"
        history.append(frame)


def test_greedy_matches_a_sliding_window_reference_for_every_context_length(model: models.GPT) -> None:
    engine = Engine(model, backend="torch", compile=False, max_batch=1)
    rng = np.random.default_rng(0)
    for frames in range(WINDOW + 3):  # shorter than, equal to and longer than the window
        context = rng.integers(0, 1024, (frames, 128))
        new = engine.imagine(context, WINDOW + 1, temperature=0)
        assert new.shape == (WINDOW + 1, 128)
        assert_greedy_under_reference(model, context, new)


def test_a_drive_does_not_depend_on_its_batch_at_the_defaults() -> None:
    engine = Engine.from_pretrained()  # the shipped model, the default dtype, backend and max_batch
    drives = np.random.default_rng(1).integers(0, 1024, (3, 2, 8, 16)).astype(np.int16)
    for options in ({"temperature": 0}, {"seed": 5}):
        together = engine.imagine(drives, 2, **options)
        alone = engine.imagine(drives[1], 2, **options)
        assert np.array_equal(together[1], alone), options


def test_padding_drives_do_not_leak_into_real_ones(model: models.GPT) -> None:
    """At the fixed max_batch shape the torch backend runs, other rows' values change nothing."""
    engine = Engine(model, backend="torch", compile=False, max_batch=3)
    tokens = torch.randint(0, 1024, (3, 300))
    other = tokens.clone()
    other[[0, 2]] = torch.randint(0, 1024, (2, 300))
    results = []
    for batch in (tokens, other):
        streams = engine.open_streams(3)
        results.append(torch.stack([streams.prefill(batch[:, :290])] + [streams.step(batch[:, i]) for i in range(290, 300)]))
    assert torch.equal(results[0][:, 1], results[1][:, 1])


def test_a_backend_that_is_not_batch_invariant_runs_at_the_full_shape(model: models.GPT) -> None:
    """float32 GEMMs round differently for 1 and 3 rows on this CPU, so a drive alone must
    still run the engine's max_batch rows (the padding test above covers the other rows)."""
    engine = Engine(model, backend="torch", compile=False, max_batch=3)
    assert not engine.batch_invariant
    opened = []
    open_streams = engine.open_streams
    engine.open_streams = lambda batch_size: opened.append(batch_size) or open_streams(batch_size)  # type: ignore[method-assign]
    engine.imagine(np.zeros((1, 128), np.int64), 1, temperature=0)
    assert opened == [3]



# --- the frame loop (frame_loop.py): one function, uncaptured here, one CUDA graph on CUDA ---

def stepwise_frame(
    streams: Streams, logits: torch.Tensor, seeds: torch.Tensor, step: torch.Tensor, sampling: Sampling
) -> torch.Tensor:
    """imagine's loop before the frame loop: sample, then `Streams.step`, token by token."""
    step, tokens = step.clone(), []
    for index in range(CONFIG.frame_tokens):
        token = sample(logits, seeds, step, temperature=sampling.temperature, top_k=sampling.top_k,
                       banned_token=sampling.banned_token)
        tokens.append(token)
        step += 1
        if index + 1 < CONFIG.frame_tokens:
            logits = streams.step(token)
    return torch.stack(tokens, dim=1)


def stepwise_imagine(engine: Engine, drives: np.ndarray, n: int, sampling: Sampling, seeds: list[int]) -> np.ndarray:
    """`max_batch` drives `[B, T, 128]` imagined the old way: per frame a fresh prefill of
    the sliding window (each frame behind BOS, then BOS), then `stepwise_frame`."""
    rows, bos = drives.shape[0], CONFIG.bos_token_id
    history = [[list(frame) for frame in drive] for drive in drives]
    streams, step = engine.open_streams(rows), torch.zeros(1, dtype=torch.int64)
    for _ in range(n):
        windows = [h[max(len(h) - (WINDOW - 1), 0) :] for h in history]
        logits = streams.prefill(torch.tensor([[t for f in w for t in [bos, *f]] + [bos] for w in windows]))
        frame = stepwise_frame(streams, logits, torch.tensor(seeds), step, sampling)
        step += CONFIG.frame_tokens
        for h, tokens in zip(history, frame.tolist()):
            h.append(tokens)
    return np.array([h[drives.shape[1] :] for h in history])


SAMPLINGS = [Sampling(0.0, None, CONFIG.bos_token_id), Sampling(0.9, None, CONFIG.bos_token_id),
             Sampling(1.3, 50, CONFIG.bos_token_id)]


@pytest.mark.parametrize("sampling", SAMPLINGS, ids=["greedy", "seeded", "seeded-top-k"])
def test_imagine_is_bit_identical_to_the_step_by_step_loop(model: models.GPT, sampling: Sampling) -> None:
    """Across frames (so the sampler's counter and the window carry over), from a context
    that fills the window on the way, every drive with its own seed."""
    engine = Engine(model, backend="torch", compile=False, max_batch=2)
    drives = np.random.default_rng(2).integers(0, 1024, (2, WINDOW - 2, 128))
    seeds = [11, -(2**62)]
    new = engine.imagine(drives, 3, temperature=sampling.temperature, top_k=sampling.top_k, seed=seeds)
    assert np.array_equal(new, stepwise_imagine(engine, drives, 3, sampling, seeds))


@pytest.mark.parametrize("numerics", ["float", "exact"])
def test_the_frame_loop_leaves_the_streams_where_steps_would(model: models.GPT, numerics: str) -> None:
    """Same tokens as step by step, with the same bounds on the keys read, and afterwards
    the same cache and positions: the next step's logits are bit-identical."""
    options = {"backend": "torch", "compile": False} if numerics == "float" else {}
    engine = Engine(model, max_batch=3, numerics=numerics, **options)
    calls: list[tuple[int, int | None]] = []  # (start of row 0, kv_len) of every decode step
    forward = engine._forward

    def recording(tokens: torch.Tensor, start: torch.Tensor, lens: torch.Tensor, fresh: bool = False,
                  kv_len: int | None = None) -> torch.Tensor:
        if tokens.shape[1] == 1:
            calls.append((int(start[0]), kv_len))
        return forward(tokens, start, lens, fresh, kv_len)

    engine._forward = recording
    context, seeds, step = torch.randint(0, 1024, (3, 2 * 129 + 1)), torch.tensor([1, 2, 3]), torch.tensor([256])
    sampling, count = SAMPLINGS[1], CONFIG.frame_tokens
    streams = engine.open_streams(3)
    stepwise = stepwise_frame(streams, streams.prefill(context), seeds, step, sampling)
    after_steps = streams.step(stepwise[:, -1])
    loop = engine.frame_loop(3, sampling)
    logits = streams.prefill(context)
    start, kv_lens = streams.reserve(count - 1)
    tokens = loop(logits, seeds, step, start, torch.ones(3, dtype=torch.int32), kv_lens)
    assert torch.equal(tokens, stepwise)
    assert torch.equal(streams.step(tokens[:, -1]), after_steps)
    assert len(calls) == 2 * count and calls[:count] == calls[count:]


def test_reserve_and_the_loop_refuse_what_does_not_fit(model: models.GPT) -> None:
    engine = Engine(model, backend="torch", compile=False, max_batch=1)
    streams = engine.open_streams(1)
    with pytest.raises(EngineError, match="before prefill"):
        streams.reserve(1)
    streams.prefill(torch.zeros(1, CONFIG.n_positions - 5, dtype=torch.int64))
    with pytest.raises(EngineError, match="5 positions are left"):
        streams.reserve(6)
    start, kv_lens = streams.reserve(5)
    assert start.tolist() == [CONFIG.n_positions - 5] and streams.length == CONFIG.n_positions
    loop = engine.frame_loop(1, SAMPLINGS[0])
    with pytest.raises(EngineError, match="one kv_len per fed-back token"):
        loop(torch.zeros(1, CONFIG.vocab_size), torch.zeros(1, dtype=torch.int64), torch.zeros(1, dtype=torch.int64),
             start, torch.ones(1, dtype=torch.int32), kv_lens)
    with pytest.raises(EngineError, match="batch_size"):
        engine.frame_loop(2, SAMPLINGS[0])


class ReplayByRerunning:
    """Stands in for a CUDA graph on the CPU: a replay reruns the captured function on the
    static buffers as they are then and writes into the captured output's memory."""

    def __init__(self, run: Callable[[], torch.Tensor], output: torch.Tensor) -> None:
        self.run, self.output = run, output

    def replay(self) -> None:
        self.output.copy_(self.run())


def test_a_frame_graph_replays_the_loop_on_its_buffers(model: models.GPT, monkeypatch: pytest.MonkeyPatch) -> None:
    """Everything of `CudaGraphFrame` but the capture itself: its warm-up and capture runs
    (padding only) leave a prefilled cache alone, each replay reads the inputs copied into
    its buffers, and it gives the uncaptured loop's tokens (reading the whole cache)."""
    def capture(run: Callable[[], torch.Tensor], device: torch.device) -> tuple[ReplayByRerunning, torch.Tensor]:
        for _ in range(3):  # as many runs as two warm-ups and a capture
            output = run()
        return ReplayByRerunning(run, output), output

    monkeypatch.setattr("engine.cuda_graph._capture", capture)
    engine = Engine(model, backend="torch", compile=False, max_batch=3)
    count, live = CONFIG.frame_tokens, torch.ones(3, dtype=torch.int32)
    loop = engine.frame_loop(3, SAMPLINGS[2])
    streams, graph = engine.open_streams(3), None
    for frames, counter, seed_list in ((1, 0, [1, 2, 3]), (WINDOW - 1, 640, [4, -5, 6])):
        context, step = torch.randint(0, 1024, (3, frames * 129 + 1)), torch.tensor([counter])
        seeds = torch.tensor(seed_list)
        logits = streams.prefill(context)
        graph = graph or CudaGraphFrame(loop, 3, CONFIG.vocab_size, torch.device("cpu"))  # after the first prefill
        start, kv_lens = streams.reserve(count - 1)
        replayed = graph(logits, seeds, step, start, live, kv_lens)
        logits = streams.prefill(context)
        start, _ = streams.reserve(count - 1)
        assert torch.equal(replayed, loop(logits, seeds, step, start, live, [None] * (count - 1))), frames


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend, compile", [("triton", True), ("torch", False)])  # the defaults; a cheaper second
def test_the_replayed_frame_graph_is_bit_identical_to_the_uncaptured_loop(backend: str, compile: bool) -> None:
    """CUDA float numerics (bfloat16): a frame is one replay of a `CudaGraphFrame`. Its
    tokens must be the uncaptured loop's bit for bit (reading the whole cache, as the graph
    does) and the step-by-step path's (a `CudaGraphStep` per token). It is captured after a prefill, so the capture must leave the streams' cache
    alone, and replayed at a second context length and sampler counter."""
    engine = Engine(tiny_model(CONFIG), device="cuda", backend=backend, compile=compile, max_batch=3)  # .to() moves it
    device, count, sampling = engine.device, CONFIG.frame_tokens, SAMPLINGS[2]
    seeds, live = torch.tensor([5, 6, -7], device=device), torch.ones(3, dtype=torch.int32, device=device)
    generator = torch.Generator().manual_seed(3)
    for frames, counter in ((1, 0), (WINDOW - 1, 5 * count)):
        context = torch.randint(0, 1024, (3, frames * 129 + 1), generator=generator).to(device)
        step = torch.tensor([counter], device=device)
        streams = engine.open_streams(3)
        logits = streams.prefill(context)
        graph = engine.frame_loop(3, sampling)  # captured here the first time: after the prefill
        assert isinstance(graph, CudaGraphFrame) and engine.frame_loop(3, sampling) is graph
        start, kv_lens = streams.reserve(count - 1)
        replayed = graph(logits, seeds, step, start, live, kv_lens)
        logits = streams.prefill(context)
        start, _ = streams.reserve(count - 1)
        uncaptured = graph.loop(logits, seeds, step, start, live, [None] * (count - 1))
        stepwise = stepwise_frame(streams, streams.prefill(context), seeds, step, sampling)
        assert torch.equal(replayed, uncaptured), frames
        assert torch.equal(replayed, stepwise), frames


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_exact_numerics_dream_the_cpus_dream_on_cuda() -> None:
    """The determinism contract across devices: exact numerics on CUDA (the torch ops, the
    Triton int8 matmul) imagine the CPU's frames (numba steps, ATen's int8 GEMMs) for the same
    seeds, over a context long enough to reach the last positions of the window."""
    model = tiny_model(CONFIG)
    context = np.random.default_rng(8).integers(0, 1024, (2, WINDOW - 1, 128))
    dreams = [Engine(model, device=device, max_batch=2, numerics="exact").imagine(context, 2, seed=[3, 4])
              for device in ("cpu", "cuda")]
    assert np.array_equal(dreams[0], dreams[1])
