"""`python -m compress encode|decode|info|test`, with the conventions of zstd and xz.

Options, paths and headers are checked before torch and the model are imported (a second or
two): `--help`, `info` and bad arguments answer at once."""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import TYPE_CHECKING

from engine.errors import EngineError
from engine.host import keep_freed_memory, usable_cpus
from models.errors import CheckpointError
from models.npy import load_npy, npy_bytes

from .errors import CompressError
from .files import STDIO, Job, Writer, into_directory, plan, read_bytes
from .format import MAX_BATCH, MAX_FRAMES, PREFIX, RAW, read_header, repack
from .options import PROG, build_parser, check_options

if TYPE_CHECKING:
    from tqdm import tqdm

    from engine import Engine

def in_and_out(paths: list[str]) -> tuple[list[str], str | None]:
    return (paths[:-1], paths[-1]) if len(paths) > 1 else (paths, None)


def start_torch(args: argparse.Namespace) -> None:
    """Import torch (a second or two: only once the inputs are read and checked), set its
    threads and refuse an unknown or unavailable device (the engine's EngineError)."""
    keep_freed_memory()  # a gpt2m-sized model's windows: fewer page faults (this is our process)
    import torch

    from engine import resolve_device

    torch.set_num_threads(args.threads or (usable_cpus() if getattr(args, "numerics", "exact") == "exact" else 1))
    resolve_device(args.device)


def load_engine(args: argparse.Namespace, max_batch: int) -> Engine:
    """The encoder's engine, from the (checked) command line."""
    import torch

    from engine import Engine, resolve_device

    from .api import default_engine

    cuda = resolve_device(args.device).type == "cuda"
    try:
        if args.numerics == "exact":
            return default_engine(None, args.model, "exact", args.device)
        return Engine.from_pretrained(args.model, device=args.device, backend=args.backend, max_batch=max_batch,
                                      dtype=None if cuda else torch.float32,
                                      compile=cuda if args.compile is None else args.compile)
    except RuntimeError as exc:  # torch's error for a device that fails to start
        raise CompressError(f"cannot load the model: {exc}") from exc


def share_threads(args: argparse.Namespace, files: int) -> None:
    """Decoding without --threads: the usable CPUs shared among the worker processes (exact
    files do not depend on it; a float file's engine sets the threads it records)."""
    if args.threads is None:
        import torch

        torch.set_num_threads(max(1, usable_cpus() // max(1, min(args.jobs, files))))


def progress_bar(total: int, quiet: bool) -> tqdm:
    """Shown only on a terminal; tqdm's rate is the coding speed in tokens/s."""
    from tqdm import tqdm

    return tqdm(total=total, unit="tok", unit_scale=True, dynamic_ncols=True,
                disable=quiet or not sys.stderr.isatty())


def rate(tokens: int, size: int) -> str:
    """The project's rate (raw 10-bit tokens / compressed size) and bits per token."""
    return f"rate {tokens * 10 / 8 / size:.3f}, {8 * size / tokens:.3f} bits/token" if tokens else "empty"


def run_encode(args: argparse.Namespace, writer: Writer) -> None:
    check_options(args)
    inputs, output = in_and_out(args.paths)
    if args.dataset:
        from models.data import DataError, load_segments

        if STDIO in inputs or output is None:
            raise CompressError("--dataset reads shard files (not stdin) into an output directory: give one")
        try:
            segments = load_segments(inputs, as_stored=True)
        except DataError as exc:
            raise CompressError(str(exc)) from exc
        work = into_directory(output, [(key, f"{key}.npy.cvq") for key, _ in segments])
        arrays, versions = [tokens for _, tokens in segments], [(1, 0)] * len(segments)
    else:
        work = plan(inputs, output, decoding=False)
    writer.prepare(work, inputs, args.force)
    jobs: list[Job] = work.jobs
    if not args.dataset:
        loaded = (load_npy(read_bytes(job.source), job.source, CompressError, MAX_FRAMES) for job in jobs)
        arrays, versions = map(list, zip(*loaded))
    start_torch(args)
    from .api import encode_many, fitted_batch
    from .lanes import CodecParams

    engine = load_engine(args, args.batch)
    window = engine.config.frames_per_window if args.window is None else args.window
    params = CodecParams(window, args.stride, args.lanes, fitted_batch(engine, arrays, args.lanes), args.mixing)
    tokens, size, start = sum(a.size for a in arrays), 0, time.perf_counter()
    with progress_bar(tokens, args.quiet) as bar:
        for first in range(0, len(jobs), MAX_BATCH):  # a batch of segments at a time bounds memory
            chunk = slice(first, first + MAX_BATCH)
            for job, version, result in zip(jobs[chunk], versions[chunk],
                                            encode_many(arrays[chunk], engine, params, bar.update)):
                data = result.data if version == (1, 0) else repack(result.data, npy_version=version)
                writer.write(job.target, data)
                size += len(data)
    if not args.quiet:
        seconds = time.perf_counter() - start
        print(f"{PROG}: encoded {len(jobs)} file(s), {tokens} tokens in {size} bytes: {rate(tokens, size)}, "
              f"{tokens / max(seconds, 1e-9):.0f} tokens/s", file=sys.stderr)


def run_decode(args: argparse.Namespace, writer: Writer) -> None:
    check_options(args)
    inputs, output = in_and_out(args.paths)
    work = plan(inputs, output, decoding=True)
    writer.prepare(work, inputs, args.force)
    files = [read_bytes(job.source) for job in work.jobs]
    headers = [read_header(data) for data in files]
    start_torch(args)
    share_threads(args, len(files))
    from .parallel import decode_in_processes

    with progress_bar(sum(header.tokens for header in headers), args.quiet) as bar:
        for index, array in decode_in_processes(files, headers, args.model, args.batch, args.device, args.jobs,
                                                bar.update):
            writer.write(work.jobs[index].target, npy_bytes(array, headers[index].npy_version))


def describe(name: str, data: bytes) -> str:
    header, version = read_header(data), PREFIX.unpack_from(data)[1]
    numerics = " ".join(f"{k}={v}" for k, v in sorted(header.numerics.items()))
    order = "Fortran" if header.fortran_order else "C"
    major, minor = header.npy_version
    return "\n".join((
        f"{name}: format version {version}, {len(data)} bytes ({header.payload_length} payload), "
        f"{rate(header.tokens, len(data))}",
        f"  array: shape {header.shape}, dtype {header.dtype}, {order} order, .npy format {major}.{minor}",
        f"  model: {header.fingerprint}",
        f"  coding: {'stored raw (10 bits per token)' if header.storage == RAW else 'range-coded'}, "
        f"window {header.window}, stride {header.stride}, lanes {header.lanes}, batch {header.batch or 'any'}, "
        f"tables v{header.tables}, precision {header.precision} bits, mixer {header.mixer or 'off'}",
        f"  numerics: {numerics}",
    ))


def run_info(args: argparse.Namespace) -> None:
    for name in args.files:
        print(describe(name, read_bytes(name)))


def run_test(args: argparse.Namespace) -> None:
    check_options(args)
    files = [read_bytes(name) for name in args.files]
    headers = [read_header(data) for data in files]
    start_torch(args)
    share_threads(args, len(files))
    from .parallel import decode_in_processes

    with progress_bar(sum(header.tokens for header in headers), args.quiet) as bar:
        for index, _ in decode_in_processes(files, headers, args.model, None, args.device, args.jobs, bar.update):
            if not args.quiet:
                bar.write(f"{args.files[index]}: OK", file=sys.stdout)


def main(argv: list[str] | None = None) -> int:
    writer = Writer()
    try:
        args = build_parser().parse_args(argv)
        if args.command == "encode":
            run_encode(args, writer)
        elif args.command == "decode":
            run_decode(args, writer)
        elif args.command == "info":
            run_info(args)
        else:
            run_test(args)
        sys.stdout.flush()  # here, not at exit, so that a closed pipe is handled below
    except (CompressError, EngineError, CheckpointError, OSError) as exc:
        writer.remove_created()
        if isinstance(exc, BrokenPipeError):  # `... | head`: stop quietly, as gzip and xz do
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        writer.remove_created()
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    return 0
