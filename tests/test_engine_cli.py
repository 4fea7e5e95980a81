"""`python -m engine imagine`: output, refusals, one-line errors."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import models
from models import GPTConfig


def imagine(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", "imagine", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("model")
    models.save_pretrained(models.GPT(GPTConfig(n_positions=3 * 129, n_layer=1, n_head=2, n_embd=16, n_inner=32)), directory)
    return directory


def test_imagine_continues_a_context(tmp_path: Path, model_dir: Path) -> None:
    context = tmp_path / "context.npy"
    np.save(context, np.random.default_rng(0).integers(0, 1024, (4, 128)).astype(np.int64))
    out = tmp_path / "dream.npy"
    options = ["--model", str(model_dir), "--no-compile", "--seed", "3"]
    result = imagine(str(out), "-n", "2", "--context", str(context), *options)
    assert result.returncode == 0, result.stderr
    frames = np.load(out)
    assert frames.shape == (2, 128) and frames.dtype == np.int64 and frames.max() < 1024
    again = imagine(str(out), "-n", "2", "--context", str(context), *options)
    assert again.returncode == 1 and "exists" in again.stderr and np.array_equal(np.load(out), frames)
    forced = imagine(str(out), "-n", "2", "--context", str(context), "-f", *options)
    assert forced.returncode == 0 and np.array_equal(np.load(out), frames)  # same seed, same dream


def test_errors_are_one_line(tmp_path: Path, model_dir: Path) -> None:
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((2, 100), np.int64))
    for args in (["--context", str(bad)], ["--context", str(tmp_path / "missing.npy")], ["--model", str(tmp_path)]):
        result = imagine(str(tmp_path / "out.npy"), "-n", "1", "--no-compile", *(["--model", str(model_dir)] if "--model" not in args else []), *args)
        assert result.returncode == 1 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
        assert not (tmp_path / "out.npy").exists()
