"""`python -m compress encode|decode|info|test`, with the conventions of zstd and xz."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from engine import Engine, EngineError
from engine.engine import resolve_device
from models import CheckpointError

from .api import DEFAULT_MAX_BATCH, coding_dtype, decode_many, encode_many, engine_for, fitted_batch, read_header
from .codec import CodecParams
from .errors import CompressError
from .files import STDIO, Job, Writer, check_targets, load_npy, npy_bytes, plan, read_bytes
from .format import VERSION, Header

PROG = "python -m compress"


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 1 (not argparse's usage and 2)
        raise CompressError(message)


def build_parser() -> Parser:
    common = Parser(add_help=False)
    common.add_argument("--model", metavar="DIR", help="model checkpoint directory (default: the shipped model)")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bar or messages")
    # Only the encoder chooses numerics; the decoder rebuilds them from the file's header.
    numerics = Parser(add_help=False)
    numerics.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    numerics.add_argument("--backend", default="auto", choices=("auto", "torch", "triton"))
    numerics.add_argument("--compile", action=argparse.BooleanOptionalAction,
                          help="torch.compile the model (default: on CUDA only)")
    numerics.add_argument("--threads", type=int, default=1,
                          help="torch CPU threads (default 1); recorded, and the decoder uses the same")
    files = Parser(add_help=False)
    files.add_argument("inputs", nargs="+", metavar="IN", help="files, directories, or - for stdin")
    files.add_argument("output", metavar="OUT", help="file, directory (for several inputs), or - for stdout")
    files.add_argument("-f", "--force", action="store_true", help="overwrite existing output files")

    parser = Parser(prog=PROG, description="Lossless compression of commaVQ token segments with the world model.")
    commands = parser.add_subparsers(dest="command", required=True)
    encode = commands.add_parser("encode", parents=[files, common, numerics], help="compress .npy token arrays")
    encode.add_argument("--dataset", action="store_true",
                        help="inputs are commaVQ webdataset shards (data-XXXX.tar.gz): one output per segment key")
    encode.add_argument("--window", type=int, help="frames per model window (default: the model's)")
    encode.add_argument("--stride", type=int, default=1, help="frames coded per window (default 1: best rate)")
    encode.add_argument("--lanes", type=int, default=1, help="independent runs per segment, to fill a batch")
    encode.add_argument("--batch", type=int, default=DEFAULT_MAX_BATCH,
                        help="streams per engine call, at most (fewer if there are fewer lanes)")
    decode = commands.add_parser("decode", parents=[files, common], help="restore the exact .npy files")
    decode.add_argument("--batch", type=int, help="engine max_batch (default: what the files need)")
    commands.add_parser("info", help="print the header").add_argument("files", nargs="+", metavar="FILE")
    test = commands.add_parser("test", parents=[common], help="decode and verify without writing")
    test.add_argument("files", nargs="+", metavar="FILE")
    return parser


def load_engine(args: argparse.Namespace, max_batch: int) -> Engine:
    """The encoder's engine, from the command line."""
    if max_batch < 1:
        raise CompressError(f"batch must be at least 1, got {max_batch}")
    if args.threads < 1:
        raise CompressError(f"threads must be at least 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    cuda = resolve_device(args.device).type == "cuda"
    try:
        return Engine.from_pretrained(args.model, device=args.device, backend=args.backend, max_batch=max_batch,
                                      dtype=coding_dtype(cuda), compile=cuda if args.compile is None else args.compile)
    except RuntimeError as exc:  # torch's error for a bad or unavailable device
        raise CompressError(f"cannot load the model: {exc}") from exc


def decode_all(files: list[bytes], headers: list[Header], args: argparse.Namespace, progress) -> list[np.ndarray]:
    """Decode files with engines rebuilt from their headers, a batch of files at a time."""
    arrays: list[np.ndarray] = []
    for start in range(0, len(files), DEFAULT_MAX_BATCH):
        batch = files[start : start + DEFAULT_MAX_BATCH]
        engine = engine_for(headers[start], args.model, args.batch or DEFAULT_MAX_BATCH)
        arrays += decode_many(batch, engine, progress)
    return arrays


def progress_bar(total: int, quiet: bool) -> tqdm:
    """Shown only on a terminal; tqdm's rate is the coding speed in tokens/s."""
    return tqdm(total=total, unit="tok", unit_scale=True, dynamic_ncols=True,
                disable=quiet or not sys.stderr.isatty())


def run_encode(args: argparse.Namespace, writer: Writer) -> None:
    if args.dataset:
        from models.data import DataError, load_segments

        if STDIO in args.inputs:
            raise CompressError("--dataset reads shard files, not stdin")
        try:
            segments = load_segments(args.inputs, as_stored=True)
        except DataError as exc:
            raise CompressError(str(exc)) from exc
        jobs = [Job(key, str(Path(args.output) / f"{key}.npy.cvq")) for key, _ in segments]
        arrays = [tokens for _, tokens in segments]
    else:
        jobs = plan(args.inputs, args.output, decoding=False)
        arrays = None
    check_targets([job.target for job in jobs], args.inputs, args.force)
    if arrays is None:
        arrays = [load_npy(read_bytes(job.source), job.source) for job in jobs]
    engine = load_engine(args, args.batch)
    window = engine.config.frames_per_window if args.window is None else args.window
    params = CodecParams(window, args.stride, args.lanes, fitted_batch(engine, arrays, args.lanes))
    with progress_bar(sum(a.size for a in arrays), args.quiet) as bar:
        for start in range(0, len(jobs), params.batch):  # a batch of segments at a time bounds memory
            encoded = encode_many(arrays[start : start + params.batch], engine, params, bar.update)
            for job, result in zip(jobs[start : start + params.batch], encoded):
                writer.write(job.target, result.data)


def run_decode(args: argparse.Namespace, writer: Writer) -> None:
    jobs = plan(args.inputs, args.output, decoding=True)
    check_targets([job.target for job in jobs], args.inputs, args.force)
    files = [read_bytes(job.source) for job in jobs]
    headers = [read_header(data) for data in files]
    with progress_bar(sum(header.frames * 128 for header in headers), args.quiet) as bar:
        for job, array in zip(jobs, decode_all(files, headers, args, bar.update)):
            writer.write(job.target, npy_bytes(array))


def describe(name: str, header: Header, size: int) -> str:
    tokens = header.frames * 128
    rate = f"rate {tokens * 10 / 8 / size:.3f}, {8 * size / tokens:.3f} bits/token" if tokens else "empty"
    numerics = " ".join(f"{k}={v}" for k, v in sorted(header.numerics.items()))
    order = "Fortran" if header.fortran_order else "C"
    return "\n".join((
        f"{name}: format version {VERSION}, {size} bytes ({header.payload_length} payload), {rate}",
        f"  array: shape {header.shape}, dtype {header.dtype}, {order} order",
        f"  model: {header.fingerprint}",
        f"  coding: window {header.window}, stride {header.stride}, lanes {header.lanes}, "
        f"batch {header.batch}, precision {header.precision} bits",
        f"  numerics: {numerics}",
    ))


def run_info(args: argparse.Namespace) -> None:
    for name in args.files:
        data = read_bytes(name)
        print(describe(name, read_header(data), len(data)))


def run_test(args: argparse.Namespace) -> None:
    files = [read_bytes(name) for name in args.files]
    headers = [read_header(data) for data in files]
    args.batch = None
    with progress_bar(sum(header.frames * 128 for header in headers), args.quiet) as bar:
        decode_all(files, headers, args, bar.update)
        if not args.quiet:
            for name in args.files:
                bar.write(f"{name}: OK", file=sys.stdout)


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
    except (CompressError, EngineError, CheckpointError, OSError) as exc:
        writer.remove_created()
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        writer.remove_created()
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    return 0
