"""Exact integer numerics against the float32 model, side by side in one process.

    python -m bench.exact rate [--holdout]   # bits/token, float32 vs exact (validation split)
    python -m bench.exact speed              # score (teacher forcing) tokens/s; decode ms a step, ops a step

`rate` scores each frame t of the default model's 2-frame windows [BOS, frame t-1, BOS,
frame t] (its 128 tokens, from the logits at positions 129..256, softmax over the first
1024 logits as the coder does) on the training drives' validation split: the last 15% of
frames of the training minute and the four 8-frame clips. `--holdout` adds the held-out
minute: report it, never tune on it.
"""
from __future__ import annotations

import argparse
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import models
from engine import Engine
from engine.exact_runner import ExactRunner
from engine.exact_score import score

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MINUTE = "3b41c0fa8959aea6c118e5714f412a2e_13.npy"
VAL_FRACTION = 0.15
STEP_ROWS = (1, 8, 32, 64)  # decode steps of this many streams in lockstep
CODED_FROM = 129  # a 2-frame window codes its second frame from the logits at positions 129..256


def windows(frames: np.ndarray, first: int, bos: int) -> np.ndarray:
    """int64 [n, 258]: [BOS, frame t-1, BOS, frame t] for t = first .. len(frames)-1."""
    flat = frames.reshape(len(frames), -1).astype(np.int64)
    col = np.full((len(flat) - first, 1), bos, dtype=np.int64)
    return np.concatenate([col, flat[first - 1 : -1], col, flat[first:]], axis=1)


def validation_windows(bos: int) -> np.ndarray:
    train = DATA / "train"
    parts = []
    for path in sorted(train.glob("*.npy")):
        frames = np.load(path)
        first = len(frames) - math.ceil(VAL_FRACTION * len(frames)) if path.name == MINUTE else 1
        parts.append(windows(frames, first, bos))
    return np.concatenate(parts)


def bits_per_token(logits: torch.Tensor, tokens: torch.Tensor, symbols: int) -> float:
    """Mean -log2 p of frame t's tokens (positions 130..257) under logits 129..256."""
    scored = logits[:, -129:-1, :symbols].double().log_softmax(-1)
    target = tokens[:, -128:]
    return float(-scored.gather(-1, target[..., None]).mean() / math.log(2))


def rate(model: models.GPT, runner: ExactRunner, tokens: np.ndarray, label: str) -> None:
    batch = torch.from_numpy(tokens)
    symbols = model.config.vocab_size - 1
    with torch.no_grad():
        float_logits = torch.cat([model(batch[i : i + 64]) for i in range(0, len(batch), 64)])
    exact_logits = score(runner, batch)
    ref, ours = bits_per_token(float_logits, batch, symbols), bits_per_token(exact_logits, batch, symbols)
    top = [logits[:, -129:-1, :symbols].argmax(-1) for logits in (float_logits, exact_logits)]
    agree = (top[0] == top[1]).float().mean()
    print(f"{label}: {len(batch)} windows, float32 {ref:.4f} bits/token, exact {ours:.4f} "
          f"({100 * (ours / ref - 1):+.3f}%), top-1 agreement {100 * float(agree):.2f}%")


def timed(fn, repeats: int) -> float:
    """Best of `repeats` wall times: the machine is shared, the minimum is the least disturbed."""
    fn()
    best = math.inf
    for _ in range(repeats):
        begin = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - begin)
    return best


class _OpCounter(TorchDispatchMode):
    """Counts the aten ops a call dispatches: on a CPU, a small op's cost is mostly dispatch."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def speed(model: models.GPT, windows_: np.ndarray, batch: int) -> None:
    tokens = torch.from_numpy(windows_[:batch])
    rows, length = tokens.shape
    runner = ExactRunner(model, max_batch=max(STEP_ROWS))
    with torch.no_grad():
        t_float = timed(lambda: model(tokens), 5)
    t_exact = timed(lambda: score(runner, tokens), 5)
    t_coded = timed(lambda: score(runner, tokens, first=CODED_FROM), 5)
    print(f"score, {rows} windows x {length} tokens: float32 {rows * length / t_float:,.0f} tokens/s, "
          f"exact {rows * length / t_exact:,.0f} tokens/s; exact, logits of positions {CODED_FROM}.. only "
          f"(a coder's frame): {rows * length / t_coded:,.0f} window tokens/s")
    for step_rows in (r for r in STEP_ROWS if r <= rows):  # each step row is one of the windows
        prompt, count = tokens[:step_rows, :129], 32
        ones = torch.ones(step_rows, dtype=torch.int32)
        runner.forward(prompt, torch.zeros(step_rows, dtype=torch.int32), ones * 129)
        with _OpCounter() as ops:
            runner.forward(tokens[:step_rows, 129:130], ones * 129, ones)
        begin = time.perf_counter()
        for p in range(130, 130 + count):
            runner.forward(tokens[:step_rows, p : p + 1], ones * p, ones)
        t_exact = (time.perf_counter() - begin) / count
        # The float baseline: the engine's torch ModelRunner (paged cache), eager.
        streams = Engine(model, backend="torch", compile=False, max_batch=step_rows).open_streams(step_rows)
        streams.prefill(prompt)
        begin = time.perf_counter()
        for p in range(129, 129 + count):
            streams.step(tokens[:step_rows, p])
        t_float = (time.perf_counter() - begin) / count
        print(f"decode, {step_rows} rows, positions 130..{129 + count}: float32 ModelRunner {1e3 * t_float:.3f} ms "
              f"a step ({step_rows / t_float:,.0f} tokens/s), exact {1e3 * t_exact:.3f} ms a step "
              f"({step_rows / t_exact:,.0f} tokens/s, {ops.count} aten ops)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("rate", "speed"))
    parser.add_argument("--holdout", action="store_true", help="also the held-out minute (report only)")
    parser.add_argument("--batch", type=int, default=64, help="windows per score call (speed)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = models.load_pretrained(models.DEFAULT_MODEL_DIR).float().eval()
    bos = model.config.bos_token_id
    val = validation_windows(bos)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.what == "rate":
        runner = ExactRunner(model, max_batch=1)
        print(f"exact fingerprint {runner.fingerprint[:16]}")
        rate(model, runner, val, "validation")
        if args.holdout:
            rate(model, runner, windows(np.load(DATA / "holdout" / "tacobell_example.npy"), 1, bos), "holdout")
    else:
        speed(model, val, args.batch)


if __name__ == "__main__":
    main()
