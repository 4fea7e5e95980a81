"""`python -m compress`: exit codes, one-line errors, atomic outputs, stdio, shards."""
import io
import json
import os
import subprocess
import sys
import stat
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from compress.cli import main

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


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
    assert main(["encode", str(npy), str(tmp_path / "bad.npy"), f"{out}/", *engine_args]) == 1
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
    assert main(["encode", str(source), f"{packed}/", *engine_args]) == 0
    assert sorted(p.name for p in packed.iterdir()) == ["x.npy.cvq", "y.npy.cvq"]
    assert main(["decode", *map(str, sorted(packed.iterdir())), f"{restored}/", *decode_args]) == 0
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
    assert main(["encode", "--dataset", str(shard), f"{out}/", "--batch", "4", *engine_args]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{key}.npy.cvq" for key in segments)
    assert main(["decode", str(out), f"{tmp_path / 'restored'}/", *decode_args]) == 0
    for key, tokens in segments.items():
        restored = np.load(tmp_path / "restored" / f"{key}.npy")  # the array as stored in the shard
        assert restored.dtype == tokens.dtype and restored.shape == tokens.shape and (restored == tokens).all()


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if the engine is loaded: bad options must be refused before."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("engine.Engine.from_pretrained", refuse)
    monkeypatch.setattr("compress.parallel.engine_for", refuse)


def one_line_error(capsys, match: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and match in err and ".tmp" not in err, err
    return err


@pytest.mark.parametrize("option, match", [
    (["--threads", "100000"], "--threads must be 1..512"), (["--threads", "0"], "--threads must be 1..512"),
    (["--batch", "65"], "--batch must be 1..64"), (["--batch", "0"], "--batch must be 1..64"),
    (["--device", "tpu"], "not a torch device: 'tpu'"), (["--device", "meta"], "not supported"),
    (["--compile"], "apply to --numerics float only"),
])
def test_bad_options_are_refused_before_the_model_loads(npy, engine_args, no_model, capsys, option, match):
    assert main(["encode", str(npy), str(npy.parent / "o.cvq"), *engine_args, *option]) == 1
    one_line_error(capsys, match)
    assert not (npy.parent / "o.cvq").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch without CUDA")
def test_cuda_on_a_cpu_only_torch_is_one_line(npy, engine_args, no_model, capsys):
    assert main(["encode", str(npy), str(npy.parent / "o.cvq"), *engine_args, "--device", "cuda"]) == 1
    one_line_error(capsys, "CUDA")


def test_decode_batch_is_bounded(npy, decode_args, no_model, capsys):
    assert main(["decode", str(npy), str(npy.parent / "o.npy"), *decode_args, "--batch", "100000"]) == 1
    one_line_error(capsys, "--batch must be 1..64")


@pytest.mark.parametrize("content, match", [
    (b"0,1,2\n3,4,5\n", "not a .npy file"),
    (b"\x93NUMPY\x01\x00v\x00{'descr': '<i2', 'fortran_order': False, 'shape': (1000000000, 8, 16), }" + b" " * 49
     + b"\n", "the .npy header says (1000000000, 8, 16)"),
])
def test_bad_npy_inputs_fail_in_one_line_before_the_model(tmp_path, engine_args, no_model, capsys, content, match):
    (tmp_path / "in.npy").write_bytes(content)
    start = time.perf_counter()
    assert main(["encode", str(tmp_path / "in.npy"), str(tmp_path / "o.cvq"), *engine_args]) == 1
    assert time.perf_counter() - start < 0.5
    one_line_error(capsys, match)


def test_uint64_ids_are_reported_as_they_are(tmp_path, engine_args, no_model, capsys):
    np.save(tmp_path / "in.npy", np.full((1, 128), 2**63, np.uint64))
    assert main(["encode", str(tmp_path / "in.npy"), str(tmp_path / "o.cvq"), *engine_args]) == 1
    one_line_error(capsys, "9223372036854775808..9223372036854775808")


def test_several_inputs_never_create_a_directory_named_like_a_file(npy, tmp_path, engine_args, no_model, capsys):
    other = tmp_path / "b.npy"
    other.write_bytes(npy.read_bytes())
    assert main(["encode", str(npy), str(other), str(tmp_path / "c.cvq"), *engine_args]) == 1
    one_line_error(capsys, "not a directory")
    assert main(["encode", str(npy), str(tmp_path / "missing" / "a.cvq"), *engine_args]) == 1
    one_line_error(capsys, "no such directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "b.npy"]


def test_an_unwritable_output_fails_before_the_coding_work(npy, tmp_path, engine_args, no_model, capsys):
    if os.geteuid() == 0:
        target = "/sys/a.npy.cvq"  # root may write anywhere but in sysfs
    else:
        (tmp_path / "ro").mkdir(mode=0o500)
        target = str(tmp_path / "ro" / "a.npy.cvq")
    assert main(["encode", str(npy), target, *engine_args]) == 1
    one_line_error(capsys, f"Permission denied: '{target}'")


@pytest.mark.skipif(os.geteuid() != 0, reason="making a device node needs root")
def test_force_writes_through_a_device_and_never_replaces_it(npy, engine_args, capsys):
    null = npy.parent / "null"
    os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    assert main(["encode", str(npy), str(null), *engine_args]) == 1  # exists: -f needed
    one_line_error(capsys, "already exists")
    assert main(["encode", "-f", str(npy), str(null), *engine_args]) == 0
    assert stat.S_ISCHR(os.stat(null).st_mode)


def test_a_directory_with_different_numerics_decodes_and_tests(tmp_path, npy, engine_args, decode_args, capsys):
    packed = tmp_path / "enc"
    packed.mkdir()
    other = tmp_path / "b.npy"
    np.save(other, np.random.default_rng(2).integers(0, 1024, size=(1, 128)).astype(np.int16))
    assert main(["encode", str(npy), str(packed / "a.npy.cvq"), *engine_args]) == 0
    assert main(["encode", str(other), str(packed / "b.npy.cvq"), *engine_args, "--threads", "2"]) == 0
    assert main(["decode", str(packed), f"{tmp_path / 'dec'}/", *decode_args]) == 0
    for source in (npy, other):
        assert (tmp_path / "dec" / source.name).read_bytes() == source.read_bytes()
    assert main(["test", str(packed / "a.npy.cvq"), str(packed / "b.npy.cvq"), *decode_args[:-1]]) == 0
    assert capsys.readouterr().out.count(": OK") == 2


@pytest.mark.parametrize("version", [(2, 0), (3, 0)])
def test_npy_format_2_and_3_come_back_byte_identical(tmp_path, engine_args, decode_args, version):
    source = tmp_path / "v.npy"
    with open(source, "wb") as file:
        np.lib.format.write_array(file, np.random.default_rng(3).integers(0, 1024, size=(1, 8, 16)).astype("<i2"),
                                  version=version)
    assert main(["encode", str(source), str(tmp_path / "v.cvq"), *engine_args]) == 0
    assert main(["decode", str(tmp_path / "v.cvq"), str(tmp_path / "r.npy"), *decode_args]) == 0
    assert (tmp_path / "r.npy").read_bytes() == source.read_bytes()


def test_lone_inputs_are_named_like_zstd_and_encode_ends_with_a_summary(npy, engine_args, decode_args, capsys):
    assert main(["encode", str(npy), *engine_args[:-1]]) == 0  # not quiet
    summary = capsys.readouterr().err.strip().splitlines()[-1]
    assert "encoded 1 file(s), 256 tokens in" in summary and "bits/token" in summary and "tokens/s" in summary
    packed = npy.with_name("a.npy.cvq")
    original = npy.read_bytes()
    assert main(["decode", str(packed), *decode_args]) == 1  # a.npy exists: -f needed
    one_line_error(capsys, "already exists")
    npy.unlink()
    assert main(["decode", str(packed), *decode_args]) == 0 and npy.read_bytes() == original


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["encode", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for default in ("(default: auto)", "threads, 1..512 (default: exact numerics", "(default: 1, best rate)", "(default: 8)"):
        assert default in text


def test_info_into_a_closed_pipe_is_quiet(npy, engine_args):
    packed = npy.with_name("a.npy.cvq")
    assert main(["encode", str(npy), str(packed), *engine_args]) == 0
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-m", "compress", "info", *[str(packed)] * 200],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    process.stdout.close()  # `| head -0`: the reader is gone before the first write
    assert process.stderr.read() == b""
    assert process.wait() == 1


def test_default_threads_follow_the_numerics(npy, model_dir, monkeypatch):
    """Exact numerics (their bits do not depend on it) take the usable CPUs; float numerics
    keep 1 thread, which their file records; an explicit --threads wins."""
    import torch

    from compress import cli

    seen = []
    monkeypatch.setattr(cli, "usable_cpus", lambda: 3)
    monkeypatch.setattr(torch, "set_num_threads", seen.append)
    packed = npy.with_name("a.npy.cvq")
    assert main(["encode", str(npy), str(packed), "--model", str(model_dir), "-q", "-f"]) == 0
    assert seen[0] == 3
    seen.clear()
    assert main(["encode", str(npy), str(packed), "--numerics", "float", "--backend", "torch", "--no-compile",
                 "--model", str(model_dir), "-q", "-f"]) == 0
    assert seen[0] == 1
    seen.clear()
    assert main(["encode", str(npy), str(packed), "--model", str(model_dir), "-q", "-f", "--threads", "2"]) == 0
    assert seen[0] == 2


def test_decode_and_test_share_the_cpus_among_their_jobs(npy, model_dir, monkeypatch):
    """Without --threads, `decode` and `test` give each worker process its share of the usable
    CPUs (not all of them to each); --threads wins."""
    import argparse

    import torch

    from compress import cli

    seen = []
    monkeypatch.setattr(cli, "usable_cpus", lambda: 4)
    monkeypatch.setattr(torch, "set_num_threads", seen.append)
    for threads, jobs, files, want in ((None, 2, 3, 2), (None, 4, 1, 4), (None, 3, 5, 1), (2, 4, 4, None)):
        seen.clear()
        cli.share_threads(argparse.Namespace(threads=threads, jobs=jobs), files)
        assert seen == ([] if want is None else [want])
    packed = npy.with_name("a.npy.cvq")
    assert main(["encode", str(npy), str(packed), "--model", str(model_dir), "-q", "-f"]) == 0
    shared = []
    monkeypatch.setattr(cli, "share_threads", lambda args, files: shared.append(files))
    assert main(["test", str(packed), "--model", str(model_dir), "-q"]) == 0
    assert main(["decode", str(packed), str(npy.with_name("b.npy")), "--model", str(model_dir), "-q"]) == 0
    assert shared == [1, 1]


NO_TORCH = """
import sys
sys.modules["torch"] = None  # `import torch` now raises ImportError
from compress.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_help_info_and_bad_input_answer_without_torch(tmp_path, npy, engine_args):
    """Options, headers and bad files are checked before torch is imported (a second or two),
    so `--help`, `info` and refusals answer at once; torch is blocked in the child process."""
    good = tmp_path / "a.cvq"
    assert main(["encode", str(npy), str(good), *engine_args]) == 0

    def no_torch(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", NO_TORCH, *args], capture_output=True, text=True, cwd=REPO,
                              timeout=60)

    assert no_torch("--help").returncode == 0
    info = no_torch("info", str(good))
    assert info.returncode == 0 and "shape (2, 8, 16)" in info.stdout, info.stderr
    (tmp_path / "bad.cvq").write_bytes(b"not a compressed file")
    for args, message in ((["decode", str(tmp_path / "bad.cvq"), str(tmp_path / "out.npy")], "bad magic"),
                          (["test", str(tmp_path / "bad.cvq")], "bad magic"),
                          (["encode", str(tmp_path / "missing.npy"), str(tmp_path / "x.cvq")], "missing.npy"),
                          (["decode", str(good), str(tmp_path / "o.npy"), "--jobs", "0"], "--jobs must be")):
        refused = no_torch(*args)
        assert refused.returncode == 1 and message in refused.stderr and "Traceback" not in refused.stderr, args
    assert not (tmp_path / "out.npy").exists() and not (tmp_path / "x.cvq").exists()
    # A good file gets as far as torch, which this child cannot import: the test's own check.
    assert "Traceback" in no_torch("test", str(good)).stderr


def test_ctrl_c_during_startup_is_one_line(tmp_path):
    """SIGINT while torch and the model load: one line, exit 130, no output file."""
    import signal

    minute = tmp_path / "minute.npy"  # long enough to be running still when a late signal comes
    np.save(minute, np.random.default_rng(0).integers(0, 1024, size=(1200, 8, 16)).astype(np.int16))
    process = subprocess.Popen([sys.executable, "-m", "compress", "encode", str(minute), str(tmp_path / "a.cvq")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    time.sleep(0.6)  # past the argument checks, while torch is importing
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and err == "python -m compress: interrupted\n", err
    assert not (tmp_path / "a.cvq").exists()
