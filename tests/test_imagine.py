"""Imagine against an independent reference (the plain `models.GPT`) and batch independence at the defaults."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import models
from engine import Engine
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
