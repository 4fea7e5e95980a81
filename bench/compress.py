"""Benchmark the compressor on real segments, side by side with general-purpose compressors.

    python -m bench.compress ../shared/data/train/*.npy --frames 200
    python -m bench.compress SEGMENT --lanes 1 8 16 --numerics exact float --mixing on off

Per segment: for each configuration (numerics x mixing x lanes) the rate (T*128*10/8 /
compressed bytes, as in the commaVQ challenge), bits per token, the range coder's overhead
against the ideal code length of the coded tables, and encode and decode speed in tokens/s
(one process, the engine built once and warmed up off the clock); then xz -9e, zstd -19 and
zpaq -m5 on the int16 tokens as stored and transposed (bench/baselines.py).
"""
from __future__ import annotations

import argparse
import itertools
import platform
import time
from pathlib import Path

import numpy as np
import torch

from bench.baselines import baselines
from compress import CodecParams, decode_many, default_engine, encode_many, read_header
from engine import keep_freed_memory


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def rate(tokens: int, size: int | None) -> str:
    return f"{tokens * 10 / 8 / size:6.3f}" if size else "     -"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help=".npy token segments")
    parser.add_argument("--frames", type=int, help="code only the first N frames of each segment")
    parser.add_argument("--model", help="checkpoint directory (default: the shipped model)")
    parser.add_argument("--lanes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--numerics", nargs="+", default=["exact"], choices=("exact", "float"))
    parser.add_argument("--mixing", nargs="+", default=["on", "off"], choices=("on", "off"))
    parser.add_argument("--device")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1, as the CLI)")
    parser.add_argument("--no-baselines", dest="baselines", action="store_false")
    args = parser.parse_args()
    keep_freed_memory()  # as `python -m compress` does
    torch.set_num_threads(args.threads)
    hardware = torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else cpu_name()
    print(f"{hardware}, {args.threads} thread(s), torch {torch.__version__}")
    engines = {mode: default_engine(None, args.model, mode, args.device) for mode in args.numerics}
    for mode, engine in engines.items():
        print(f"{mode}: model {engine.fingerprint[:16]}, window {engine.config.frames_per_window}, "
              f"max_batch {engine.max_batch}, numerics {engine.numerics.to_dict()}")
    header = (f"{'segment':28} {'frames':>6} {'coder':28} {'rate':>6} {'bits/tok':>8} {'overhead':>8} "
              f"{'enc tok/s':>9} {'dec tok/s':>9}")
    for path in args.paths:
        tokens = np.load(path)[: args.frames]
        count, name = tokens.shape[0] * 128, Path(path).stem[:28]
        print(header)
        for mode, mixing, lanes in itertools.product(args.numerics, args.mixing, args.lanes):
            engine = engines[mode]
            window = engine.config.frames_per_window
            batch = 1 if mode == "exact" else min(lanes, engine.max_batch)
            params = CodecParams(window, 1, lanes, batch, mixing == "on")
            warm = encode_many([tokens[: 2 * window]], engine, params)[0].data  # warm up off the clock
            decode_many([warm], engine)
            start = time.perf_counter()
            encoded = encode_many([tokens], engine, params)[0]
            encode_seconds = time.perf_counter() - start
            start = time.perf_counter()
            restored = decode_many([encoded.data], engine)[0]
            decode_seconds = time.perf_counter() - start
            assert restored.tobytes() == tokens.tobytes(), "round trip failed"
            size, payload = len(encoded.data), read_header(encoded.data).payload_length
            overhead = 8 * payload / encoded.ideal_bits - 1 if encoded.ideal_bits else 0.0
            label = f"{mode}, mixing {mixing}, lanes {lanes}"
            print(f"{name:28} {len(tokens):6} {label:28} {rate(count, size)} {8 * size / count:8.3f} "
                  f"{overhead:8.4%} {count / encode_seconds:9.0f} {count / decode_seconds:9.0f}")
        if args.baselines:
            for result in baselines(tokens):
                bits = f"{8 * result.size / count:8.3f}" if result.size else "       -"
                print(f"{name:28} {len(tokens):6} {result.name:28} {rate(count, result.size)} {bits} "
                      f"{'':8} {count / result.seconds:9.0f} {'':>9}")


if __name__ == "__main__":
    main()
