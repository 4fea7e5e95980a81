"""File plumbing for the CLI: which inputs go to which outputs, reading, atomic writes."""
from __future__ import annotations

import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.atomic import atomic_write

from .errors import CompressError

SUFFIX = ".cvq"
STDIO = "-"


@dataclass(frozen=True)
class Job:
    source: str  # a path, or "-" for stdin
    target: str  # a path, or "-" for stdout


def expand(inputs: list[str], suffix: str) -> list[str]:
    """Inputs with directories replaced by their files ending in `suffix` (sorted, not recursive)."""
    files: list[str] = []
    for name in inputs:
        path = Path(name)
        if name != STDIO and path.is_dir():
            files.extend(str(p) for p in sorted(path.iterdir()) if p.is_file() and p.name.endswith(suffix))
        else:
            files.append(name)
    if STDIO in files and len(files) > 1:
        raise CompressError("stdin ('-') cannot be combined with other inputs")
    return files


def output_name(name: str, decoding: bool) -> str:
    """zstd/xz naming: encoding appends .cvq, decoding strips it."""
    if not decoding:
        return name + SUFFIX
    if not name.endswith(SUFFIX) or name == SUFFIX:
        raise CompressError(f"{name}: unknown suffix (expected {SUFFIX})")
    return name[: -len(SUFFIX)]


def plan(inputs: list[str], output: str, decoding: bool) -> list[Job]:
    """One job per input file; several inputs (or a directory) go into directory `output`."""
    sources = expand(inputs, SUFFIX if decoding else ".npy")
    if not sources:
        raise CompressError(f"no input files in {' '.join(inputs)}")
    to_directory = Path(output).is_dir() or any(Path(i).is_dir() for i in inputs if i != STDIO)
    if sources == [STDIO] or (not to_directory and len(sources) == 1):
        return [Job(sources[0], output)]
    if output == STDIO:
        raise CompressError("several outputs cannot go to stdout: give an output directory")
    return [Job(s, str(Path(output) / output_name(Path(s).name, decoding))) for s in sources]


def check_targets(targets: list[str], inputs: list[str], force: bool) -> None:
    """Refuse before doing any work: binary data to a terminal, overwriting an input (even
    with -f), an existing file without -f, or two outputs with one name."""
    sources = {os.path.realpath(name) for name in expand(inputs, "") if name != STDIO}
    seen: set[str] = set()
    for target in targets:
        if target == STDIO:
            if sys.stdout.isatty():
                raise CompressError("refusing to write binary data to a terminal (redirect stdout)")
            continue
        real = os.path.realpath(target)
        if real in sources:
            raise CompressError(f"{target}: refusing to overwrite an input file")
        if real in seen:
            raise CompressError(f"{target}: two inputs would write this same output")
        seen.add(real)
        if os.path.isdir(target):
            raise CompressError(f"{target}: is a directory")
        if os.path.lexists(target) and not force:
            raise CompressError(f"{target}: already exists (use -f to overwrite)")


def read_bytes(source: str) -> bytes:
    if source == STDIO:
        return sys.stdin.buffer.read()
    with open(source, "rb") as f:
        return f.read()


def load_npy(data: bytes, source: str) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise CompressError(f"{source}: not a readable .npy file ({exc})") from exc


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


class Writer:
    """Writes outputs atomically (temp file in the same directory, then os.replace) and, if
    the run fails later, removes the files it created."""

    def __init__(self) -> None:
        self.created: list[Path] = []  # files, then the directory they went into if made here

    def write(self, target: str, data: bytes) -> None:
        if target == STDIO:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
            return
        path = Path(target)
        existed = path.exists()
        if not path.parent.exists():
            path.parent.mkdir()
            self.created.insert(0, path.parent)
        atomic_write(path, data)
        if not existed:
            self.created.append(path)

    def remove_created(self) -> None:
        for path in reversed(self.created):
            if path.is_dir():
                path.rmdir()
            else:
                path.unlink(missing_ok=True)
