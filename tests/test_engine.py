"""The engine against the plain reference model, its backends against each other, its input checks."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import models
from engine import Engine, EngineError
from engine.backends import packs_weights
from models import GPTConfig
from conftest import interpreter_dot_depends_on_row_position

# 8-token frames keep token-by-token loops short; 3-frame windows make sliding happen early.
TINY = GPTConfig(vocab_size=1025, frame_tokens=8, n_positions=27, n_layer=2, n_head=2, n_embd=32, n_inner=64)


def tiny_model(config: GPTConfig = TINY, seed: int = 0) -> models.GPT:
    torch.manual_seed(seed)
    model = models.GPT(config).eval()
    with torch.no_grad():  # sharper distributions than GPT-2's init, so greedy paths are well separated
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.3)
    return model


@torch.no_grad()
def reference_greedy(model: models.GPT, frames: np.ndarray, n: int) -> np.ndarray:
    """Greedy continuation by full recomputation over the sliding window, no cache."""
    config = model.config
    bos = config.bos_token_id
    history = [list(map(int, f)) for f in frames.reshape(-1, config.frame_tokens)]
    for _ in range(n):
        context = history[max(len(history) - (config.frames_per_window - 1), 0) :]
        sequence = [t for frame in context for t in [bos, *frame]] + [bos]
        new = []
        for _ in range(config.frame_tokens):
            logits = model(torch.tensor([sequence]))[0, -1]
            logits[bos] = float("-inf")
            new.append(int(logits.argmax()))
            sequence.append(new[-1])
        history.append(new)
    return np.array(history[len(history) - n :], dtype=np.int64).reshape(n, config.frame_tokens)


@pytest.fixture(scope="module")
def model() -> models.GPT:
    return tiny_model()


@pytest.fixture(scope="module")
def engine(model: models.GPT) -> Engine:
    return Engine(model, backend="torch", compile=False, max_batch=3)


@pytest.mark.parametrize("frames", [0, 1, 2, 5])
def test_greedy_matches_reference(engine: Engine, model: models.GPT, frames: int) -> None:
    drive = np.random.default_rng(frames).integers(0, 1024, (frames, 8))
    expected = reference_greedy(model, drive, 3)
    assert np.array_equal(engine.imagine(drive, 3, temperature=0), expected)


def test_layouts_and_array_types(engine: Engine) -> None:
    drive = np.random.default_rng(1).integers(0, 1024, (4, 8)).astype(np.int16)
    expected = engine.imagine(drive, 2, temperature=0)
    assert expected.dtype == np.int16 and expected.shape == (2, 8)
    grid = engine.imagine(drive.reshape(4, 2, 4), 2, temperature=0)
    assert grid.shape == (2, 2, 4) and np.array_equal(grid.reshape(2, 8), expected)
    tensor = engine.imagine(torch.from_numpy(drive).to(torch.int32), 2, temperature=0)
    assert tensor.dtype == torch.int32 and torch.equal(tensor, torch.from_numpy(expected).to(torch.int32))
    batch = engine.imagine(drive[None].repeat(2, 0).astype(np.uint16), 2, temperature=0)
    assert batch.shape == (2, 2, 8) and batch.dtype == np.uint16
    assert engine.imagine(drive, 0).shape == (0, 8)
    assert engine.imagine(np.zeros((0, 3, 8), np.int64), 2).shape == (0, 2, 8)


def test_batched_equals_one_at_a_time(engine: Engine) -> None:
    # 5 drives with max_batch 3: chunks of 3 and 2, so chunking is exercised too.
    drives = np.random.default_rng(2).integers(0, 1024, (5, 4, 8))
    for options in ({"temperature": 0}, {"temperature": 1.0, "seed": 7}, {"temperature": 0.8, "top_k": 5, "seed": 3}):
        together = engine.imagine(drives, 2, **options)
        for i, drive in enumerate(drives):
            assert np.array_equal(together[i], engine.imagine(drive, 2, **options)), (options, i)
    seeds = [11, 12, 13, 14, 15]
    together = engine.imagine(drives, 2, seed=seeds)
    assert all(np.array_equal(together[i], engine.imagine(drives[i], 2, seed=s)) for i, s in enumerate(seeds))


def test_seeds(engine: Engine) -> None:
    drive = np.random.default_rng(3).integers(0, 1024, (2, 8))
    a = engine.imagine(drive, 2, seed=1)
    assert np.array_equal(a, engine.imagine(drive, 2, seed=1))
    assert not np.array_equal(a, engine.imagine(drive, 2, seed=2))
    assert not np.array_equal(engine.imagine(drive, 2), engine.imagine(drive, 2))  # fresh seeds
    assert (a < 1024).all() and (engine.imagine(drive, 3, temperature=5.0, seed=4) < 1024).all()


def test_top_k_one_is_greedy(engine: Engine) -> None:
    drive = np.random.default_rng(4).integers(0, 1024, (3, 8))
    assert np.array_equal(engine.imagine(drive, 2, top_k=1, seed=5), engine.imagine(drive, 2, temperature=0))


@pytest.mark.parametrize(
    "tokens, n, options, message",
    [
        (np.zeros((2, 8), np.float32), 1, {}, "integer"),
        (np.full((2, 8), 1024), 1, {}, "0..1023"),
        (np.full((2, 8), -1), 1, {}, "0..1023"),
        (np.zeros((2, 7), np.int64), 1, {}, "frames of 8 tokens"),
        (np.zeros((2, 2, 3, 8), np.int64), 1, {}, "frames of 8 tokens"),
        (np.zeros(8, np.int64), 1, {}, "frames of 8 tokens"),
        ([[0] * 8], 1, {}, "numpy array or a torch tensor"),
        (np.zeros((2, 8), np.int64), -1, {}, "non-negative"),
        (np.zeros((2, 8), np.int64), 1.5, {}, "non-negative"),
        (np.zeros((2, 8), np.int64), 1, {"temperature": -1}, "temperature"),
        (np.zeros((2, 8), np.int64), 1, {"top_k": 0}, "top_k"),
        (np.zeros((2, 8), np.int64), 1, {"top_k": 1025}, "top_k"),
        (np.zeros((2, 2, 8), np.int64), 1, {"seed": [1, 2, 3]}, "one int per drive"),
        (np.zeros((2, 8), np.int64), 1, {"seed": "x"}, "seed"),
    ],
)
def test_bad_input(engine: Engine, tokens, n, options, message) -> None:
    with pytest.raises(EngineError, match=message):
        engine.imagine(tokens, n, **options)
    assert issubclass(EngineError, ValueError)


# --- the step interface -------------------------------------------------------------------


@torch.no_grad()
def test_streams_logits_match_reference(model: models.GPT) -> None:
    engine = Engine(model, backend="torch", compile=False, max_batch=2, prefill_chunk=16)
    tokens = torch.randint(0, 1025, (2, 26))
    streams = engine.open_streams(2)
    # 20 tokens with 16-token chunks: one full chunk, then a 4-token chunk padded to 16.
    logits = streams.prefill(tokens[:, :20])
    torch.testing.assert_close(logits, model(tokens[:, :20])[:, -1], rtol=0, atol=1e-5)
    for position in range(20, 26):
        logits = streams.step(tokens[:, position])
        torch.testing.assert_close(logits, model(tokens[:, : position + 1])[:, -1], rtol=0, atol=1e-5)
    streams.step(tokens[:, 0])  # position 26, the last one
    with pytest.raises(EngineError, match="full"):
        streams.step(tokens[:, 0])


def test_streams_misuse(engine: Engine) -> None:
    streams = engine.open_streams(2)
    with pytest.raises(EngineError, match="before prefill"):
        streams.step(torch.zeros(2, dtype=torch.int64))
    with pytest.raises(EngineError, match=r"shape \[2, L\]"):
        streams.prefill(torch.zeros(3, 4, dtype=torch.int64))
    with pytest.raises(EngineError, match="0..1024"):
        streams.prefill(torch.full((2, 4), 1025))
    with pytest.raises(EngineError, match="1..27"):
        streams.prefill(torch.zeros(2, 28, dtype=torch.int64))
    with pytest.raises(EngineError, match="batch_size"):
        engine.open_streams(4)
    engine.open_streams(1)
    with pytest.raises(EngineError, match="closed"):
        streams.prefill(torch.zeros(2, 4, dtype=torch.int64))


def test_engine_options() -> None:
    model = tiny_model()
    with pytest.raises(EngineError, match="backend"):
        Engine(model, backend="jax")
    with pytest.raises(EngineError, match="prefill_chunk"):
        Engine(model, prefill_chunk=100)


# --- backends and compilation ---------------------------------------------------------------


@torch.no_grad()
def test_triton_backend_matches_torch_backend(model: models.GPT) -> None:
    """Under TRITON_INTERPRET=1 on the CPU (see conftest.py)."""
    torch_engine = Engine(model, backend="torch", compile=False, max_batch=2, prefill_chunk=16)
    triton_engine = Engine(model, backend="triton", compile=False, max_batch=2, prefill_chunk=16)
    tokens = torch.randint(0, 1025, (2, 22))
    torch_streams, triton_streams = torch_engine.open_streams(2), triton_engine.open_streams(2)
    torch.testing.assert_close(triton_streams.prefill(tokens[:, :19]), torch_streams.prefill(tokens[:, :19]), rtol=0, atol=1e-4)
    for position in range(19, 22):
        torch.testing.assert_close(
            triton_streams.step(tokens[:, position]), torch_streams.step(tokens[:, position]), rtol=0, atol=1e-4
        )
    drive = np.random.default_rng(5).integers(0, 1024, (2, 8))
    assert np.array_equal(triton_engine.imagine(drive, 1, temperature=0), torch_engine.imagine(drive, 1, temperature=0))


@pytest.mark.skipif(interpreter_dot_depends_on_row_position(),
                    reason="numpy's BLAS rounds a row by its index in the tile: the interpreter cannot show batch invariance")
def test_triton_backend_is_batch_invariant(model: models.GPT) -> None:
    engine = Engine(model, backend="triton", compile=False, max_batch=3, prefill_chunk=16)
    tokens = torch.randint(0, 1025, (3, 12))
    together = engine.open_streams(3)
    batch_logits = [together.prefill(tokens), together.step(tokens[:, 0])]
    alone = engine.open_streams(1)
    assert torch.equal(alone.prefill(tokens[1:2]), batch_logits[0][1:2])
    assert torch.equal(alone.step(tokens[1:2, 0]), batch_logits[1][1:2])


def test_compiled_engine_matches_eager_and_does_not_recompile(model: models.GPT) -> None:
    from torch._dynamo.utils import counters

    eager = Engine(model, backend="torch", compile=False, max_batch=1)
    compiled = Engine(model, backend="torch", compile=True, max_batch=1)
    drive = np.random.default_rng(6).integers(0, 1024, (4, 8))
    assert np.array_equal(compiled.imagine(drive, 1, temperature=0), eager.imagine(drive, 1, temperature=0))
    graphs = counters["stats"]["unique_graphs"]
    assert np.array_equal(compiled.imagine(drive, 2, temperature=0), eager.imagine(drive, 2, temperature=0))
    assert counters["stats"]["unique_graphs"] == graphs, "a warmed-up engine compiled again"


@torch.no_grad()
def test_bfloat16_engine_tracks_float32(model: models.GPT) -> None:
    """The fast CPU path: bfloat16 weights, a float32 cache and float32 attention."""
    import copy

    engine = Engine(copy.deepcopy(model), backend="torch", compile=False, dtype=torch.bfloat16, max_batch=1)
    assert engine.cache.keys[0].dtype == torch.float32
    tokens = torch.randint(0, 1025, (1, 20))
    streams = engine.open_streams(1)
    logits = [streams.prefill(tokens[:, :12])] + [streams.step(tokens[:, i]) for i in range(12, 20)]
    expected = model(tokens)[0, 11:20]
    assert (torch.cat(logits) - expected).abs().max() < 0.1 * expected.abs().max()
    drive = np.random.default_rng(7).integers(0, 1024, (2, 8))
    assert (engine.imagine(drive, 2, seed=0) < 1024).all()


@pytest.mark.skipif(not packs_weights(torch.device("cpu"), torch.bfloat16), reason="no oneDNN packing in this torch")
def test_packed_bfloat16_weights_give_the_same_bits(model: models.GPT, monkeypatch) -> None:
    """oneDNN-packed weights (the CPU bfloat16 engine's) change the speed, not a bit: the
    logits of prefill and steps, at batch 1 and 3, equal F.linear's."""
    import copy

    import engine.engine as engine_module

    tokens = torch.randint(0, 1025, (3, 20))
    results = []
    for packing in (True, False):
        monkeypatch.setattr(engine_module, "packs_weights", lambda device, dtype: packing)
        engine = Engine(copy.deepcopy(model), backend="torch", compile=False, dtype=torch.bfloat16, max_batch=3)
        assert len(engine.runner.ops._packed) == (9 if packing else 0)  # 2 layers x 4 + the head
        logits = []
        for rows in (1, 3):
            streams = engine.open_streams(rows)
            logits += [streams.prefill(tokens[:rows, :12])] + [streams.step(tokens[:rows, i]) for i in range(12, 20)]
        results.append(logits)
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_from_pretrained_picks_the_fast_dtype(model: models.GPT, tmp_path) -> None:
    from engine import fast_dtype

    models.save_pretrained(model, tmp_path)
    engine = Engine.from_pretrained(tmp_path, device="cpu", compile=False, max_batch=1)
    assert engine.dtype == fast_dtype(torch.device("cpu")) and engine.model.lm_head.weight.dtype == engine.dtype
    assert fast_dtype(torch.device("cpu"), "triton") == torch.float32  # the interpreter's reference path
