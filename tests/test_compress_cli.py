"""`python -m compress`: exit codes, one-line errors, atomic outputs, stdio, shards."""
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from compress.cli import main
from models import GPT, GPTConfig, save_pretrained

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("tiny")
    save_pretrained(GPT(GPTConfig(n_positions=2 * 129, n_layer=1, n_head=2, n_embd=16, n_inner=32)), directory)
    return directory


@pytest.fixture
def engine_args(model_dir):
    return ["--model", str(model_dir), "--backend", "torch", "--no-compile", "-q"]


@pytest.fixture
def decode_args(model_dir):
    """The decoder takes its numerics from the file; only the model is named."""
    return ["--model", str(model_dir), "-q"]


@pytest.fixture
def npy(tmp_path):
    path = tmp_path / "a.npy"
    np.save(path, np.random.default_rng(0).integers(0, 1024, size=(2, 8, 16)).astype(">i2"))
    return path


def run(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "compress", *args], input=stdin, capture_output=True, env=env)


def test_round_trip_through_stdin_and_stdout(npy, model_dir):
    options = ["--model", str(model_dir), "--backend", "torch", "--no-compile"]
    encoded = run("encode", "-", "-", *options, stdin=npy.read_bytes())
    assert encoded.returncode == 0, encoded.stderr
    decoded = run("decode", "-", "-", *options[:2], stdin=encoded.stdout)
    assert decoded.returncode == 0 and decoded.stdout == npy.read_bytes()


def test_errors_exit_1_with_one_line_and_no_traceback(tmp_path):
    result = run("decode", str(tmp_path / "missing.cvq"), str(tmp_path / "out.npy"))
    assert result.returncode == 1 and result.stdout == b""
    assert result.stderr.decode().count("\n") == 1 and b"Traceback" not in result.stderr
    assert not (tmp_path / "out.npy").exists()


def test_file_round_trip_info_and_test(npy, engine_args, decode_args, capsys):
    packed, restored = npy.with_suffix(".npy.cvq"), npy.parent / "b.npy"
    assert main(["encode", str(npy), str(packed), *engine_args]) == 0
    assert main(["decode", str(packed), str(restored), *decode_args]) == 0
    assert restored.read_bytes() == npy.read_bytes()
    assert main(["info", str(packed)]) == 0
    assert "shape (2, 8, 16), dtype >i2" in capsys.readouterr().out
    assert main(["test", str(packed), *decode_args[:-1]]) == 0  # not quiet
    assert f"{packed}: OK" in capsys.readouterr().out


def test_refuses_to_overwrite_without_force_and_never_the_input(npy, engine_args, capsys):
    target = npy.parent / "out.cvq"
    target.write_bytes(b"keep")
    assert main(["encode", str(npy), str(target), *engine_args]) == 1
    assert target.read_bytes() == b"keep" and "already exists" in capsys.readouterr().err
    assert main(["encode", str(npy), str(npy), "-f", *engine_args]) == 1
    assert "input" in capsys.readouterr().err
    assert main(["encode", str(npy), str(target), "-f", *engine_args]) == 0
    assert target.read_bytes() != b"keep"


def test_refuses_compressed_bytes_to_a_terminal(npy, engine_args, monkeypatch, capsys):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stdout", Terminal())
    assert main(["encode", str(npy), "-", *engine_args]) == 1
    assert "terminal" in capsys.readouterr().err


def test_failures_leave_no_output(npy, tmp_path, engine_args, decode_args):
    (tmp_path / "bad.npy").write_bytes(b"not an array")
    out = tmp_path / "out"
    assert main(["encode", str(npy), str(tmp_path / "bad.npy"), str(out), *engine_args]) == 1
    assert not out.exists()
    corrupt = tmp_path / "c.npy.cvq"
    corrupt.write_bytes(b"\xfeCVQ garbage")
    assert main(["decode", str(corrupt), str(tmp_path / "c.npy"), *decode_args]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "bad.npy", "c.npy.cvq"]


def test_a_directory_goes_to_an_output_directory(tmp_path, engine_args, decode_args):
    source, packed, restored = tmp_path / "in", tmp_path / "packed", tmp_path / "restored"
    source.mkdir()
    rng = np.random.default_rng(1)
    for name, shape, dtype in (("x", (1, 128), np.int64), ("y", (2, 8, 16), np.uint16)):
        np.save(source / f"{name}.npy", rng.integers(0, 1024, size=shape).astype(dtype))
    assert main(["encode", str(source), str(packed), *engine_args]) == 0
    assert sorted(p.name for p in packed.iterdir()) == ["x.npy.cvq", "y.npy.cvq"]
    assert main(["decode", *map(str, sorted(packed.iterdir())), str(restored), *decode_args]) == 0
    for name in ("x.npy", "y.npy"):
        assert (restored / name).read_bytes() == (source / name).read_bytes()


@pytest.mark.skipif(not (SHARED_DATA / "train").is_dir(), reason="needs ../shared/data")
def test_dataset_shard_gives_one_file_per_segment_key(tmp_path, engine_args, decode_args):
    segments = {p.name[: -len(".npy")]: np.load(p)[:2] for p in sorted((SHARED_DATA / "train").glob("*_first8frames.npy"))}
    shard = tmp_path / "data-0000.tar.gz"
    with tarfile.open(shard, "w:gz") as tar:
        for key, tokens in segments.items():
            buffer = io.BytesIO()
            np.save(buffer, tokens)
            pose = io.BytesIO()
            np.save(pose, np.zeros((len(tokens), 6), np.float32))
            for member, data in ((f"{key}.token.npy", buffer.getvalue()), (f"{key}.pose.npy", pose.getvalue()),
                                 (f"{key}.json", json.dumps({"file_name": key}).encode())):
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    out = tmp_path / "out"
    assert main(["encode", "--dataset", str(shard), str(out), "--batch", "4", *engine_args]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{key}.npy.cvq" for key in segments)
    assert main(["decode", str(out), str(tmp_path / "restored"), *decode_args]) == 0
    for key, tokens in segments.items():
        restored = np.load(tmp_path / "restored" / f"{key}.npy")  # the array as stored in the shard
        assert restored.dtype == tokens.dtype and restored.shape == tokens.shape and (restored == tokens).all()
