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


# --- checked before the model loads: main(argv) in-process, one line each ------------------


def run_main(capsys, *args: str) -> tuple[int, str]:
    from engine.__main__ import main

    code = main(["imagine", *args])
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return code, err


def npy_header_only(path: Path, shape: tuple[int, ...]) -> Path:
    with open(path, "wb") as file:
        np.lib.format.write_array_header_1_0(file, {"descr": "<i2", "fortran_order": False, "shape": shape})
    return path


def test_bad_context_files_fail_before_the_model_loads(tmp_path: Path, capsys) -> None:
    huge = npy_header_only(tmp_path / "huge.npy", (10**12 // 128, 128))  # 10^12 elements, no data
    empty = tmp_path / "empty.npy"
    empty.write_bytes(b"")
    text = tmp_path / "text.npy"
    text.write_text("hello\n")
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((2, 100), np.int16))
    missing_model = str(tmp_path / "no-model")  # loading it would fail: it must not be reached
    for context, reason in ((huge, "huge.npy"), (empty, "empty.npy"), (text, "text.npy"), (wrong, "(T, 8, 16)")):
        code, err = run_main(capsys, str(tmp_path / "out.npy"), "-n", "1", "--context", str(context), "--model", missing_model)
        assert code == 1 and reason in err and "no-model" not in err
    assert not (tmp_path / "out.npy").exists()


@pytest.mark.parametrize("threads", ["0", "513", "100000"])  # torch segfaults on absurd counts
def test_thread_counts_are_bounded(tmp_path: Path, capsys, threads: str) -> None:
    code, err = run_main(capsys, str(tmp_path / "out.npy"), "-n", "1", "--threads", threads, "--model",
                         str(tmp_path / "no-model"))
    assert code == 1 and "--threads in 1..512" in err and "no-model" not in err


def test_output_checks(tmp_path: Path, capsys, monkeypatch) -> None:
    code, err = run_main(capsys, str(tmp_path / "missing" / "out.npy"), "-n", "1")
    assert code == 1 and "does not exist" in err and not (tmp_path / "missing").exists()
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    code, err = run_main(capsys, "-", "-n", "1")
    assert code == 1 and "terminal" in err


@pytest.mark.parametrize("device", ["cuda", "tpu", "nonsense:x"])
def test_unusable_devices_are_one_line(tmp_path: Path, capsys, device: str) -> None:
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, err = run_main(capsys, str(tmp_path / "out.npy"), "-n", "1", "--device", device)
    assert code == 1 and "device" in err


def test_help_shows_defaults_and_what_compile_changes(capsys) -> None:
    from engine.__main__ import main

    with pytest.raises(SystemExit):
        main(["imagine", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "torch CPU threads (default: the usable CPUs for exact numerics" in text and "1 for float" in text
    assert "changes the dream" in text and "temperature" in text and "(default: auto)" in text


# --- the process as a user runs it ---------------------------------------------------------


def test_dash_writes_to_stdout(model_dir: Path) -> None:
    import io

    result = subprocess.run([sys.executable, "-m", "engine", "imagine", "-", "-n", "1", "--seed", "1", "--model", str(model_dir)],
                            capture_output=True)
    assert result.returncode == 0, result.stderr
    frames = np.load(io.BytesIO(result.stdout))
    assert frames.shape == (1, 8, 16) and not Path("-").exists()


def test_ctrl_c_during_startup_is_one_line() -> None:
    import signal
    import time

    # A long dream: on a loaded machine the signal may come late, and must still find it running
    # (a 1-frame exact dream of the shipped model can be done, its .npy on stdout, within a second).
    process = subprocess.Popen([sys.executable, "-m", "engine", "imagine", "-", "-n", "1000"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)  # past interpreter start-up, while torch is importing
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 1 and err == "python -m engine: interrupted\n", err


def test_exact_numerics_dream_the_same_on_any_thread_count(tmp_path: Path, model_dir: Path) -> None:
    context = tmp_path / "context.npy"
    np.save(context, np.random.default_rng(1).integers(0, 1024, (3, 8, 16)).astype(np.int16))
    options = ["-n", "2", "--context", str(context), "--model", str(model_dir), "--seed", "5", "--numerics", "exact"]
    one, two = tmp_path / "one.npy", tmp_path / "two.npy"
    assert imagine(str(one), *options, "--threads", "1").returncode == 0
    assert imagine(str(two), *options, "--threads", "2").returncode == 0
    from engine import Engine

    engine = Engine.from_pretrained(model_dir, max_batch=1, numerics="exact")
    expected = engine.imagine(np.load(context), 2, seed=5)
    assert np.array_equal(np.load(one), expected) and np.array_equal(np.load(two), expected)
    refused = imagine(str(tmp_path / "x.npy"), *options, "--compile")
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1 and "--compile" in refused.stderr


def test_the_default_numerics_are_exact_on_the_cpu_and_float_on_request(tmp_path: Path, model_dir: Path) -> None:
    """`--numerics auto` (the default) dreams in exact numerics on the CPU, the faster there;
    `--numerics float` gives the float engine's dream, each as the API gives it."""
    from engine import Engine

    context = tmp_path / "context.npy"
    np.save(context, np.random.default_rng(2).integers(0, 1024, (3, 8, 16)).astype(np.int16))
    options = ["-n", "1", "--context", str(context), "--model", str(model_dir), "--seed", "4", "--device", "cpu"]
    default, floats = tmp_path / "default.npy", tmp_path / "float.npy"
    result = imagine(str(default), *options)
    assert result.returncode == 0 and "exact numerics" in result.stderr, result.stderr
    assert imagine(str(floats), *options, "--numerics", "float").returncode == 0
    for path, numerics in ((default, "exact"), (floats, "float")):
        engine = Engine.from_pretrained(model_dir, device="cpu", max_batch=1, compile=False, numerics=numerics)
        assert np.array_equal(np.load(path), engine.imagine(np.load(context), 1, seed=4)), numerics
