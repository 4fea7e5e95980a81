"""`python -m engine imagine OUT.npy -n FRAMES [--context IN.npy]`: dream a drive forward."""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np

from models import CheckpointError
from models.atomic import atomic_write

from .engine import Engine
from .errors import EngineError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    imagine = commands.add_parser("imagine", help="continue a drive (or start one) by n frames")
    imagine.add_argument("output", help=".npy file for the new frames, (n, 8, 16) int16 (or the context's layout)")
    imagine.add_argument("-n", "--frames", type=int, required=True, help="frames to imagine")
    imagine.add_argument("--context", help=".npy token file to continue; none starts from nothing")
    imagine.add_argument("--model", help="checkpoint directory (default: the shipped model)")
    imagine.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    imagine.add_argument("--compile", action=argparse.BooleanOptionalAction,
                         help="torch.compile (default: on; costs seconds up front, cached on disk)")
    imagine.add_argument("--temperature", type=float, default=1.0)
    imagine.add_argument("--top-k", type=int)
    imagine.add_argument("--seed", type=int)
    imagine.add_argument("-f", "--force", action="store_true", help="overwrite OUT")
    args = parser.parse_args(argv)
    try:
        output = Path(args.output)
        if output.exists() and not args.force:
            raise EngineError(f"{output} exists (use -f to overwrite)")
        context = np.zeros((0, 8, 16), np.int16) if args.context is None else _load(args.context)
        engine = Engine.from_pretrained(args.model, device=args.device, max_batch=1, compile=args.compile)
        frames = engine.imagine(context, args.frames, temperature=args.temperature, top_k=args.top_k, seed=args.seed)
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(frames))
        atomic_write(output, buffer.getvalue())
    except (EngineError, CheckpointError, OSError) as exc:
        print(f"python -m engine: error: {exc}", file=sys.stderr)
        return 1
    print(f"{output}: {args.frames} frames {frames.shape[1:]} {frames.dtype}", file=sys.stderr)
    return 0


def _load(path: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:  # numpy's error for a file that is not a plain .npy array
        raise EngineError(f"cannot read {path}: {exc}") from exc


if __name__ == "__main__":
    sys.exit(main())
