"""General-purpose compressors on token segments: the rates a neural coder has to beat.

Each runs on the tokens as int16 (10 significant bits in 16), both in the segment's own
order (frame by frame) and transposed to (128, T) (cell by cell, which puts each cell's
history side by side and is how lzma reaches 1.6x on the challenge set). A compressor that
is not installed is reported as missing, not skipped silently.
"""
from __future__ import annotations

import lzma
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Result:
    name: str
    size: int | None  # compressed bytes; None: not available here
    seconds: float


def _xz(data: bytes) -> bytes:
    return lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)


def _zstd(data: bytes) -> bytes | None:
    if shutil.which("zstd") is None:
        return None
    return subprocess.run(["zstd", "-19", "-q", "-c"], input=data, capture_output=True, check=True).stdout


def _zpaq(data: bytes) -> bytes | None:
    if shutil.which("zpaq") is None:
        return None
    with tempfile.TemporaryDirectory() as directory:
        source, archive = Path(directory, "tokens"), Path(directory, "tokens.zpaq")
        source.write_bytes(data)
        subprocess.run(["zpaq", "a", str(archive), str(source), "-m5"], capture_output=True, check=True, cwd=directory)
        return archive.read_bytes()


COMPRESSORS = {"xz -9e": _xz, "zstd -19": _zstd, "zpaq -m5": _zpaq}


def baselines(tokens: np.ndarray) -> list[Result]:
    """Every compressor on the segment as stored and transposed."""
    flat = np.asarray(tokens).reshape(len(tokens), -1).astype(np.int16)
    layouts = {"": flat.tobytes(), " (T)": np.ascontiguousarray(flat.T).tobytes()}
    results = []
    for name, compressor in COMPRESSORS.items():
        for suffix, data in layouts.items():
            start = time.perf_counter()
            out = compressor(data)
            results.append(Result(name + suffix, None if out is None else len(out), time.perf_counter() - start))
    return results
