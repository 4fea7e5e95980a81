"""`python -m engine imagine OUT.npy -n FRAMES [--context IN.npy]`: dream a drive forward.

OUT may be `-` for stdout (not a terminal). Errors are one line on stderr and exit status 1.
Input files are checked before torch is imported or the model is loaded, so bad input
fails in well under a second.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path

import numpy as np

from .host import MAX_THREADS

# Float numerics' threads. Measured on a busy 2-core CPU (docs/BENCHMARKS.md): a batch-1 decode
# step of the shipped model took 70 ms with 2 threads and 1.6 ms with 1; small batches do not
# feed more cores. Exact numerics take the usable CPUs (their steps run compiled, in one
# thread; threads serve the prefills' GEMMs, and change no bit).
FLOAT_CPU_THREADS = 1


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, unless there is none or its help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def parser() -> argparse.ArgumentParser:
    formatter = _Formatter
    main_parser = argparse.ArgumentParser(prog="python -m engine", description=__doc__, formatter_class=formatter)
    commands = main_parser.add_subparsers(dest="command", required=True)
    imagine = commands.add_parser("imagine", help="continue a drive (or start one) by n frames", formatter_class=formatter)
    imagine.add_argument("output", help=".npy file for the new frames, (n, 8, 16) int16 (or the context's layout); - for stdout")
    imagine.add_argument("-n", "--frames", type=int, required=True, help="frames to imagine")
    imagine.add_argument("--context", help=".npy token file to continue; none starts from nothing")
    imagine.add_argument("--model", help="checkpoint directory (default: the shipped model)")
    imagine.add_argument("--device", help="cpu or cuda (default: cuda if available, else cpu)")
    imagine.add_argument("--threads", type=int,
                         help=f"torch CPU threads (default: the usable CPUs for exact numerics, whose dreams do not "
                              f"depend on it; {FLOAT_CPU_THREADS} for float)")
    imagine.add_argument("--compile", action=argparse.BooleanOptionalAction,
                         help="torch.compile (default: on CUDA only; on the CPU it costs 30-90 s up front). "
                              "Compiled code rounds differently, so it changes the dream for a given seed")
    imagine.add_argument("--numerics", default="auto", choices=("auto", "float", "exact"),
                         help="exact: integer arithmetic, the same dream for a seed on any machine and thread "
                              "count, the int8 model's (its cross-entropy within 0.02%% of float32's on the shipped "
                              "model); float: the model's own arithmetic; auto: exact on the CPU, where it is the "
                              "faster (3x float and 5.5x transformers at gpt2m width with 4 layers, batch 1), "
                              "unless --compile; float on CUDA (default: %(default)s)")
    imagine.add_argument("--temperature", type=float, default=1.0, help="0 is greedy")
    imagine.add_argument("--top-k", type=int, help="sample among the k likeliest tokens (default: all)")
    imagine.add_argument("--seed", type=int, help="the same seed gives the same dream (default: a fresh one)")
    imagine.add_argument("-f", "--force", action="store_true", help="overwrite OUT")
    return main_parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return _imagine(args)
    except KeyboardInterrupt:
        print("python -m engine: interrupted", file=sys.stderr, flush=True)
        # Leave at once: an import torch did not finish must not run its exit handlers.
        os._exit(1)
    except _UserError as exc:
        print(f"python -m engine: error: {exc}", file=sys.stderr)
        return 1


class _UserError(Exception):
    """A problem found before the engine is imported (the engine's own errors join later)."""


def _imagine(args: argparse.Namespace) -> int:
    stdout = args.output == "-"
    output = Path(args.output)
    if stdout and sys.stdout.isatty():
        raise _UserError("refusing to write token data to a terminal: redirect stdout or name a file")
    if not stdout:
        if output.exists() and not args.force:
            raise _UserError(f"{output} exists (use -f to overwrite)")
        if not output.parent.is_dir():
            raise _UserError(f"{output}: directory {output.parent} does not exist")
    if args.frames < 0 or (args.threads is not None and not 1 <= args.threads <= MAX_THREADS):
        raise _UserError(f"-n must be >= 0 and --threads in 1..{MAX_THREADS}")
    if args.numerics == "exact" and args.compile:
        raise _UserError("--compile applies to --numerics float only: exact numerics run eagerly")
    context = np.zeros((0, 8, 16), np.int16) if args.context is None else _load(args.context)

    from .host import keep_freed_memory

    keep_freed_memory()  # before the first large allocations: long prefills fault less
    import torch  # slow: only after the cheap checks

    from models import CheckpointError

    from . import Engine, EngineError, resolve_device, usable_cpus

    try:
        device = resolve_device(args.device)
        numerics = args.numerics
        if numerics == "auto":
            numerics = "exact" if device.type == "cpu" and not args.compile else "float"
        if device.type == "cpu":
            torch.set_num_threads(args.threads or (usable_cpus() if numerics == "exact" else FLOAT_CPU_THREADS))
        engine = Engine.from_pretrained(args.model, device=device, max_batch=1, compile=args.compile,
                                        numerics=numerics)
        frames = engine.imagine(context, args.frames, temperature=args.temperature, top_k=args.top_k, seed=args.seed)
    except (EngineError, CheckpointError) as exc:
        raise _UserError(str(exc)) from exc
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(frames))
    _write(output, buffer.getvalue(), stdout)
    print(f"{args.output}: {args.frames} frames {frames.shape[1:]} {frames.dtype}, {numerics} numerics", file=sys.stderr)
    return 0


def _load(path: str) -> np.ndarray:
    """A token file, its header checked before its data is taken (`models.npy`)."""
    from models.npy import load_npy

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise _UserError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return np.array(load_npy(data, path, _UserError)[0])  # the caller's layout and dtype, writable


def _write(output: Path, data: bytes, stdout: bool) -> None:
    from models.atomic import atomic_write

    try:
        if stdout:
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
        else:
            atomic_write(output, data)
    except OSError as exc:
        raise _UserError(f"cannot write {'stdout' if stdout else output}: {exc.strerror or exc}") from exc


if __name__ == "__main__":
    sys.exit(main())
