"""File plumbing for the CLI: which inputs go to which outputs, reading, atomic writes.

Everything here runs before the model is loaded, so bad names and bad files fail in
milliseconds, not after the coding work."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from models.atomic import atomic_write, check_writable

from .errors import CompressError

SUFFIX = ".cvq"
NPY = ".npy"
STDIO = "-"


@dataclass(frozen=True)
class Job:
    source: str  # a path, or "-" for stdin
    target: str  # a path, or "-" for stdout


@dataclass(frozen=True)
class Plan:
    jobs: list[Job]
    new_directory: str | None = None  # an output directory named with a trailing "/", to make first


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
    """zstd/xz naming: encoding appends .cvq; decoding strips it and makes sure of .npy."""
    if not decoding:
        return name + SUFFIX
    if not name.endswith(SUFFIX) or Path(name).name == SUFFIX:
        raise CompressError(f"{name}: unknown suffix (expected {SUFFIX}); name the output")
    stem = name[: -len(SUFFIX)]
    return stem if stem.endswith(NPY) else stem + NPY


def into_directory(output: str, names: list[tuple[str, str]]) -> Plan:
    """Jobs (source, file name) writing into directory `output`: an existing one, or one
    named with a trailing "/" whose parent exists (it is made, and removed on failure)."""
    if output == STDIO:
        raise CompressError("several outputs cannot go to stdout: give an output directory")
    if not os.path.isdir(output) and not output.endswith(("/", os.sep)):
        raise CompressError(f"{output}: not a directory: several outputs need an existing directory "
                            "(or end the name with / to create it)")
    new = None if os.path.isdir(output) else output
    return Plan([Job(source, str(Path(output) / name)) for source, name in names], new)


def plan(inputs: list[str], output: str | None, decoding: bool) -> Plan:
    """One job per input file. Without `output`, each output goes beside its input (stdin
    to stdout); several inputs (or a directory) go into directory `output`."""
    sources = expand(inputs, SUFFIX if decoding else NPY)
    if not sources:
        raise CompressError(f"no input files in {' '.join(inputs)}")
    if output is None:
        return Plan([Job(s, STDIO if s == STDIO else output_name(s, decoding)) for s in sources])
    if output.endswith(NPY if not decoding else SUFFIX):  # `encode a.npy b.npy` meant two inputs
        raise CompressError(f"{output}: an output named like an input; give an output directory or name")
    several = len(sources) > 1 or any(Path(i).is_dir() for i in inputs if i != STDIO)
    if sources == [STDIO] or not (several or os.path.isdir(output)):
        return Plan([Job(sources[0], output)])
    return into_directory(output, [(s, Path(output_name(s, decoding)).name) for s in sources])


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


@dataclass
class Writer:
    """Writes outputs atomically (models.atomic) and, if the run fails later, removes the
    files and the directory it created."""

    created: list[Path] = field(default_factory=list)  # in creation order

    def prepare(self, plan: Plan, inputs: list[str], force: bool) -> None:
        """Check every target and that its directory takes new files, before the work."""
        targets = [job.target for job in plan.jobs]
        check_targets(targets, inputs, force)
        if plan.new_directory is not None:
            directory = Path(plan.new_directory)
            if not directory.parent.is_dir():
                raise CompressError(f"{directory.parent}: no such directory")
            directory.mkdir()
            self.created.append(directory)
        checked: set[Path] = set()
        for target in targets:
            if target != STDIO and Path(target).parent not in checked:
                check_writable(target)
                checked.add(Path(target).parent)

    def write(self, target: str, data: bytes) -> None:
        if target == STDIO:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
            return
        existed = os.path.lexists(target)
        atomic_write(target, data)
        if not existed:
            self.created.append(Path(target))

    def remove_created(self) -> None:
        for path in reversed(self.created):
            if path.is_dir():
                path.rmdir()
            else:
                path.unlink(missing_ok=True)
