"""A file encoded here (exact numerics, the CLI's defaults) decodes byte-identically in
fresh processes with another vector ISA, MKL's compatibility mode or another thread count."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import compress

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = [
    ({"ATEN_CPU_CAPABILITY": "avx2", "OMP_NUM_THREADS": "2"}, ["--threads", "2"]),
    ({"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"}, []),
]


@pytest.fixture(scope="module")
def encoded(tmp_path_factory) -> tuple[Path, bytes]:
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 1024, size=(2, 8, 16)).astype(np.int16)
    tokens = np.concatenate([frames, frames[::-1], frames])  # some structure, so that coding pays
    tokens[4, 2:5] = 17
    directory = tmp_path_factory.mktemp("portable")
    source = directory / "tokens.npy"
    np.save(source, tokens)
    data = compress.encode(tokens, lanes=2)
    assert compress.read_header(data).storage == 0  # range-coded, not stored raw
    (directory / "tokens.cvq").write_bytes(data)
    return directory, source.read_bytes()


@pytest.mark.parametrize("environment, options", SETTINGS, ids=["avx2-2-threads", "no-simd-mkl-compatible"])
def test_an_exact_file_decodes_identically_in_other_processes(encoded, environment, options):
    directory, original = encoded
    target = directory / f"restored-{len(options)}.npy"
    env = {**os.environ, **environment, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "compress", "decode", "-q", *options,
                             str(directory / "tokens.cvq"), str(target)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert target.read_bytes() == original
