"""`python -m models convert DIR` and `python -m models train ...`."""
from __future__ import annotations

import argparse
import sys

from .checkpoint import convert_bin_to_safetensors
from .errors import CheckpointError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser("convert", help="write model.safetensors beside a pytorch_model.bin")
    convert.add_argument("directory")
    convert.add_argument("-f", "--force", action="store_true", help="replace an existing model.safetensors")
    train = commands.add_parser("train", help="train a small world model on token segments")
    from .train import add_train_arguments, run_training

    add_train_arguments(train)
    args = parser.parse_args(argv)
    try:
        if args.command == "convert":
            print(convert_bin_to_safetensors(args.directory, overwrite=args.force))
        else:
            run_training(args)
    except (CheckpointError, OSError) as exc:
        print(f"python -m models: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
