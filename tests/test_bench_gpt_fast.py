"""The gpt-fast-style baseline of `bench.imagine` against the plain reference model and the engine."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.gpt_fast import GptFast, sample
from engine import Engine
from models import GPTConfig
from test_engine import reference_greedy, tiny_model

# Real 129-token frames, a 3-frame window (so the history slides after two frames), a tiny width.
CONFIG = GPTConfig(vocab_size=1025, frame_tokens=128, n_positions=3 * 129, n_layer=1, n_head=2, n_embd=32, n_inner=64)


@pytest.fixture(scope="module")
def model():
    return tiny_model(CONFIG)


@pytest.mark.parametrize("context_frames", [0, 1, 4])
def test_greedy_matches_the_reference_and_the_engine(model, context_frames: int) -> None:
    drives = np.random.default_rng(context_frames).integers(0, 1024, (2, context_frames, 128))
    generator = GptFast(model, 2, device="cpu", compile=False)
    new = generator.imagine(drives, 3, temperature=0).numpy()
    assert new.shape == (2, 3, 128) and new.dtype == np.int64
    engine = Engine(model, backend="torch", compile=False, max_batch=2)
    assert np.array_equal(new, engine.imagine(drives, 3, temperature=0))
    for drive, frames in zip(drives, new):
        assert np.array_equal(frames, reference_greedy(model, drive, 3))


def test_sampling_draws_from_the_softmax_and_never_bos() -> None:
    torch.manual_seed(0)
    rows, temperature = 20000, 0.7
    logits = torch.full((rows, 1025), -30.0)
    logits[:, :4] = torch.tensor([0.0, 0.5, 1.0, 1.5])
    logits[:, 1024] = 10.0  # BOS: by far the likeliest, and never drawn
    counts = np.bincount(sample(logits, temperature).numpy(), minlength=1025)
    expected = np.exp(np.array([0.0, 0.5, 1.0, 1.5]) / temperature)
    expected /= expected.sum()
    assert counts[4:].sum() == 0
    assert np.abs(counts[:4] / rows - expected).max() < 0.015, (counts[:4] / rows, expected)
    assert torch.equal(sample(logits, 0), torch.full((rows,), 3))


def test_a_seed_fixes_the_sampled_frames(model) -> None:
    drives = np.random.default_rng(7).integers(0, 1024, (1, 2, 128))
    generator = GptFast(model, 1, device="cpu")
    first = generator.imagine(drives, 1, seed=3)
    assert torch.equal(first, generator.imagine(drives, 1, seed=3))
    assert not torch.equal(first, generator.imagine(drives, 1, seed=4))
    assert int(first.max()) < 1024


def test_bad_input_is_refused(model) -> None:
    generator = GptFast(model, 2, device="cpu")
    good = np.zeros((2, 1, 128), dtype=np.int64)
    for drives, n, temperature, message in [
        (good[:1], 1, 1.0, "must be \\[2, T, 128\\]"),
        (good[..., :8], 1, 1.0, "must be \\[2, T, 128\\]"),
        (good.astype(np.float32), 1, 1.0, "integer token ids"),
        (good + 1024, 1, 1.0, "0..1023"),
        (good, -1, 1.0, "non-negative"),
        (good, 1, -0.5, "temperature"),
    ]:
        with pytest.raises(ValueError, match=message):
            generator.imagine(drives, n, temperature=temperature)
    with pytest.raises(ValueError, match="batch"):
        GptFast(tiny_model(CONFIG), 0)
