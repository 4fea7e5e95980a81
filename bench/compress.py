"""Benchmark the compressor on real segments against lzma (and zstd when installed).

    python bench/compress.py ../shared/data/train/*.npy --frames 20

Per segment: the compression rate (T*128*10/8 / compressed bytes, as in the commaVQ
challenge) of our file and of lzma on the tokens transposed to (128, T) int16; bits per
token; the range coder's overhead against the ideal code length sum(-log2 p) of the
quantized model probabilities; and encode and decode speed in tokens/s.
"""
from __future__ import annotations

import argparse
import lzma
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from compress import CodecParams, decode_many, encode_many, fitted_batch, read_header  # noqa: E402
from compress.api import coding_dtype  # noqa: E402
from engine import Engine  # noqa: E402
from engine.engine import resolve_device  # noqa: E402


def zstd_compress(data: bytes) -> bytes | None:
    try:
        import zstandard
    except ImportError:
        return None
    return zstandard.ZstdCompressor(level=19).compress(data)


def rate(tokens: int, size: int | None) -> str:
    return f"{tokens * 10 / 8 / size:6.3f}" if size else "     -"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help=".npy token segments")
    parser.add_argument("--frames", type=int, help="code only the first N frames of each segment")
    parser.add_argument("--model", help="checkpoint directory (default: the shipped model)")
    parser.add_argument("--window", type=int, help="frames per window (default: the model's)")
    parser.add_argument("--stride", type=int, default=1)
    parser.add_argument("--lanes", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, help="default: on CUDA only, as the CLI")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1, as the CLI)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cuda = resolve_device(args.device).type == "cuda"

    engine = Engine.from_pretrained(args.model, device=args.device, backend=args.backend,
                                    max_batch=args.batch, dtype=coding_dtype(cuda),
                                    compile=cuda if args.compile is None else args.compile)
    window = args.window or engine.config.frames_per_window
    hardware = torch.cuda.get_device_name() if engine.device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()})"
    print(f"model {engine.fingerprint[:16]}, window {window}, stride {args.stride}, lanes {args.lanes}, numerics {engine.numerics}, {hardware}, torch {torch.__version__}")
    print("segment                                   frames   rate   lzma   zstd  bits/tok  overhead  "
          "header  enc tok/s  dec tok/s")
    for path in args.paths:
        tokens = np.load(path)[: args.frames]
        params = CodecParams(window, args.stride, args.lanes, fitted_batch(engine, [tokens], args.lanes))  # as the CLI
        count = tokens.shape[0] * 128
        encode_many([tokens[: params.window]], engine, params)  # warm up (compiles) off the clock
        start = time.perf_counter()
        encoded = encode_many([tokens], engine, params)[0]
        encode_seconds = time.perf_counter() - start
        start = time.perf_counter()
        restored = decode_many([encoded.data], engine)[0]
        decode_seconds = time.perf_counter() - start
        assert restored.tobytes() == tokens.tobytes(), "round trip failed"
        payload = read_header(encoded.data).payload_length
        transposed = tokens.reshape(len(tokens), 128).T.astype(np.int16).tobytes()
        print(f"{Path(path).stem[:40]:40} {len(tokens):7} {rate(count, len(encoded.data))} "
              f"{rate(count, len(lzma.compress(transposed, preset=9 | lzma.PRESET_EXTREME)))} "
              f"{rate(count, len(zstd_compress(transposed) or b''))} "
              f"{8 * len(encoded.data) / count:9.3f} {8 * payload / encoded.ideal_bits - 1:9.4%} "
              f"{len(encoded.data) - payload:7} {count / encode_seconds:10.0f} {count / decode_seconds:10.0f}")


if __name__ == "__main__":
    main()
