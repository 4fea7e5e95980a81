"""Frequency tables and range coding: cost per row / token, and the rate cost of v2 tables.

    python -m bench.coder [--rows 4096] [--tokens 16384]

Prints, side by side in one process: logits -> tables per row (v1 numpy vs v2 torch, torch
threads 1 and 2, and v2 compiled, `table_kernels.frequency_rows`, at the rows of a decoder
step and in one call); encode (constriction) and decode (`range_decoder`, compiled) us/token
for B interleaved lanes in one stream (B = 1, 8, 32, 128); and the code length of v1 vs v2
tables on real logits (the default model, teacher-forced 2-frame windows over the last 180
frames of a training drive).
"""
from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from compress.coder import TokenDecoder, TokenEncoder, code_length, interleaved_rows
from compress.frequencies import SYMBOLS, frequencies, frequency_tables
from compress.table_kernels import frequency_rows
from models import DEFAULT_MODEL_DIR, load_pretrained

DRIVE = Path(__file__).resolve().parents[2] / "shared/data/train/3b41c0fa8959aea6c118e5714f412a2e_13.npy"


def best_of(run: Callable[[], object], repeats: int = 5) -> float:
    """Best wall time of `repeats` runs (the machine is shared: the minimum is the signal)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_tables(rows: int) -> None:
    logits = torch.randn(rows, SYMBOLS + 1, generator=torch.Generator().manual_seed(0)) * 4
    array = logits.numpy()
    print(f"logits -> tables, {rows} rows x {SYMBOLS}")
    print(f"  v1 numpy float64 polynomial: {best_of(lambda: frequencies(array, SYMBOLS)) / rows * 1e6:7.2f} us/row")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        cost = best_of(lambda: frequency_tables(logits))
        print(f"  v2 torch, {threads} thread(s):       {cost / rows * 1e6:7.2f} us/row")
    torch.set_num_threads(1)
    out = np.empty((rows, SYMBOLS), dtype=np.int64)
    print(f"  v2 compiled, one call:        {best_of(lambda: frequency_rows(array, out)) / rows * 1e6:7.2f} us/row")
    for step_rows in (1, 8):
        cost = best_of(lambda: [frequency_rows(array[r:r + step_rows], out[r:r + step_rows])
                                for r in range(0, 256, step_rows)])
        torch_cost = best_of(lambda: [frequency_tables(logits[r:r + step_rows]) for r in range(0, 256, step_rows)])
        print(f"  v2 at {step_rows} row(s) a call: compiled {cost / 256 * 1e6:6.2f}, torch {torch_cost / 256 * 1e6:6.2f} us/row")


def bench_coding(tokens: int) -> None:
    """B lanes of tokens // B steps: interleaved into one stream (one decode call per step),
    one stream per lane (B calls per step), and the floor of a numpy coder of our own."""
    generator = torch.Generator().manual_seed(1)
    print(f"range coding (encode: constriction; decode: ours, compiled), {tokens} tokens, V = {SYMBOLS}: us/token")
    print("  (an own vectorized coder would pay at least the cumsum + search of every row)")
    for lanes in (1, 8, 32, 128):
        steps = tokens // lanes
        logits = torch.randn(steps * lanes, SYMBOLS + 1, generator=generator) * 3
        freq = frequency_tables(logits).numpy()
        symbols = np.array([np.searchsorted(np.cumsum(row), r) for row, r in
                            zip(freq, np.random.default_rng(lanes).integers(0, 1 << 24, len(freq)))])
        lane, step = interleaved_rows([steps] * lanes, 0, steps)
        assert np.array_equal(step * lanes + lane, np.arange(len(freq)))  # rows are in stream order
        encode = best_of(lambda: TokenEncoder().encode(symbols, freq))
        words = _encoded(symbols, freq)
        lane_words = [_encoded(symbols[b::lanes], freq[b::lanes]) for b in range(lanes)]

        def interleaved() -> np.ndarray:
            decoder = TokenDecoder(words)
            return np.concatenate([decoder.decode(freq[s * lanes:(s + 1) * lanes]) for s in range(steps)])

        def per_lane() -> None:
            decoders = [TokenDecoder(w) for w in lane_words]
            for s in range(steps):
                for b, decoder in enumerate(decoders):
                    decoder.decode(freq[s * lanes + b:s * lanes + b + 1])

        def search_floor() -> None:
            """The least a numpy coder of our own must do per step: cumulate, find the slot."""
            slots = np.full((lanes, 1), 1 << 23)
            for s in range(steps):
                (np.cumsum(freq[s * lanes:(s + 1) * lanes], axis=1) <= slots).sum(axis=1)

        assert (interleaved() == symbols).all()
        n = steps * lanes
        costs = [best_of(run) / n * 1e6 for run in (interleaved, per_lane, search_floor)]
        print(f"  B = {lanes:3d}: encode {encode / n * 1e6:5.2f}; decode interleaved {costs[0]:5.2f}, "
              f"one stream per lane {costs[1]:5.2f}; numpy coder's search alone {costs[2]:5.2f}")


def _encoded(symbols: np.ndarray, freq: np.ndarray) -> np.ndarray:
    encoder = TokenEncoder()
    encoder.encode(symbols, freq)
    return encoder.finish()


def real_logits(frames: int = 180) -> tuple[torch.Tensor, np.ndarray]:
    """float32 logits [frames * 128, 1025] of the default model, teacher-forced on 2-frame
    windows [BOS, frame t-1, BOS, frame t] over the drive's last `frames` frames, and tokens."""
    model = load_pretrained(DEFAULT_MODEL_DIR, dtype=torch.float32)
    drive = np.load(DRIVE).reshape(-1, 128).astype(np.int64)[-frames - 1:]
    bos = model.config.vocab_size - 1
    windows = np.full((frames, 258), bos, dtype=np.int64)
    windows[:, 1:129], windows[:, 130:] = drive[:-1], drive[1:]
    with torch.no_grad():
        logits = torch.cat([model(torch.from_numpy(windows[i:i + 20]))[:, 129:257] for i in range(0, frames, 20)])
    return logits.reshape(-1, logits.shape[-1]).contiguous(), drive[1:].reshape(-1)


def bench_rate() -> None:
    logits, tokens = real_logits()
    x = logits[:, :SYMBOLS].double()
    exact = float(-(torch.log_softmax(x, dim=1)[torch.arange(len(tokens)), tokens]).sum() / np.log(2))
    v1 = code_length(frequencies(logits.numpy(), SYMBOLS), tokens)
    v2 = code_length(frequency_tables(logits).numpy(), tokens)
    n = len(tokens)
    print(f"rate on {n} real tokens (default model, last 180 frames of {DRIVE.stem}): bits/token")
    print(f"  cross-entropy {exact / n:.6f}, v1 tables {v1 / n:.6f}, v2 tables {v2 / n:.6f}, "
          f"v2 vs v1 {100 * (v2 / v1 - 1):+.5f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--tokens", type=int, default=16384)
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}")
    bench_tables(args.rows)
    bench_coding(args.tokens)
    bench_rate()


if __name__ == "__main__":
    main()
