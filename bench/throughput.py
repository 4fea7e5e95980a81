"""What more cores buy the decoder, side by side in one run: a directory decoded by 1 and by
N worker processes (`--jobs`).

    python -m bench.throughput ../shared/data/train/3b41c0fa8959aea6c118e5714f412a2e_13.npy
    python -m bench.throughput SEGMENT --segments 32 --frames 40 --jobs 1 2

The directory is `--segments` clips of `--frames` frames cut from the segment at spread-out
offsets, encoded at the defaults and decoded through the CLI's own path (`--jobs`).
Timings on shared cores swing: each configuration runs `--repeat` times, alternating.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bench.compress import cpu_name
from compress import CodecParams, default_engine, encode_many, read_header
from engine import usable_cpus
from compress.parallel import decode_in_processes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", help="a .npy token segment")
    parser.add_argument("--segments", type=int, default=32, help="clips in the decoded directory")
    parser.add_argument("--frames", type=int, default=40, help="frames per clip")
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{cpu_name()}, {usable_cpus()} usable CPUs, 1 torch thread, "
          f"torch {torch.__version__}")
    engine = default_engine()
    tokens = np.load(args.path).reshape(-1, 128).astype(np.int64)
    params = CodecParams(engine.config.frames_per_window)
    offsets = np.linspace(0, len(tokens) - args.frames, args.segments).astype(int)
    clips = [tokens[offset : offset + args.frames].astype(np.int16) for offset in offsets]
    files = [result.data for result in encode_many(clips, engine, params)]
    headers = [read_header(data) for data in files]
    total = sum(header.tokens for header in headers)
    for _ in range(args.repeat):
        for jobs in args.jobs:
            start = time.perf_counter()
            restored = dict(decode_in_processes(files, headers, None, None, None, jobs, None))
            seconds = time.perf_counter() - start
            assert all(np.array_equal(restored[i].reshape(-1, 128), clip) for i, clip in enumerate(clips))
            print(f"decode {args.segments} segments x {args.frames} frames, jobs {jobs}: {total / seconds:8.0f} tok/s "
                  f"({seconds:.1f} s, worker start-up included)")


if __name__ == "__main__":
    main()
