"""Imagine speed: the engine against Hugging Face `transformers` generation and (with
`--gpt-fast`) a gpt-fast-style generator (`bench.gpt_fast`), same weights, same run.

    python -m bench.imagine --layers 4               # CPU: gpt2m width, 4 layers
    python -m bench.imagine --device cuda --gpt-fast # GPU: full-size gpt2m, random weights

Per frame every side prefills the last 19 frames (each behind BOS) plus the new BOS, then
samples 128 tokens one at a time: exactly commaVQ's generation loop.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script or with -m

import numpy as np  # noqa: E402
import torch  # noqa: E402

import models  # noqa: E402
from engine import Engine  # noqa: E402
from engine import fast_dtype, keep_freed_memory, resolve_device  # noqa: E402
from bench.gpt_fast import GptFast  # noqa: E402


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_imagine(generator: Engine | GptFast, drives: np.ndarray, frames: int) -> float:
    """Seconds per imagined frame (one call of `frames` frames, averaged over frames), for the
    engine or the gpt-fast-style baseline: both have `device` and `imagine(drives, n, seed=)`."""
    synchronize(generator.device)
    start = time.perf_counter()
    generator.imagine(drives, frames, seed=0)
    synchronize(generator.device)
    return (time.perf_counter() - start) / frames


def time_transformers(hf, drives: np.ndarray, config: models.GPTConfig, device: torch.device) -> float:
    """Seconds for one frame with `generate` (KV cache, sampling, BOS suppressed)."""
    bos = config.bos_token_id
    batch, frames = drives.shape[:2]
    context = np.concatenate([np.full((batch, frames, 1), bos), drives.reshape(batch, frames, -1)], axis=2)
    context = context[:, -(config.frames_per_window - 1) :].reshape(batch, -1)
    input_ids = torch.from_numpy(np.concatenate([context, np.full((batch, 1), bos)], axis=1)).to(device)
    synchronize(device)
    start = time.perf_counter()
    hf.generate(
        input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=config.frame_tokens,
        min_new_tokens=config.frame_tokens,
        do_sample=True,
        top_k=0,
        suppress_tokens=[bos],
        pad_token_id=0,
    )
    synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=24, help="gpt2m has 24; cut it for CPU runs")
    parser.add_argument("--device", help="default: cuda if available, else cpu")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="engine dtype (default: the engine's, bfloat16 where computed natively)")
    parser.add_argument("--hf-dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="transformers' dtype (default: its own, float32, on the CPU; the engine's on CUDA)")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--frames", type=int, default=3, help="frames timed per measurement")
    parser.add_argument("--batch", type=int, default=8, help="the larger batch for frames/s")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, help="default: the engine's (CUDA only)")
    parser.add_argument("--skip-transformers", action="store_true")
    parser.add_argument("--exact", action="store_true", help="also time exact (integer) numerics, side by side")
    parser.add_argument("--gpt-fast", action="store_true",
                        help="also time the gpt-fast-style baseline (static cache, SDPA, reduce-overhead decode)")
    parser.add_argument("--gpt-fast-compile", action=argparse.BooleanOptionalAction,
                        help="compile its decode step (default: on CUDA only)")
    args = parser.parse_args()
    kept = keep_freed_memory()  # as `python -m engine` does; one process, so every side runs under it
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else fast_dtype(device, args.backend)
    hf_dtype = getattr(torch, args.hf_dtype) if args.hf_dtype else (dtype if device.type == "cuda" else torch.float32)

    config = models.GPTConfig(n_layer=args.layers)
    torch.manual_seed(0)
    model = models.GPT(config)
    drives = np.random.default_rng(0).integers(0, 1024, (args.batch, config.frames_per_window - 1, 128))
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"gpt2m-width model, {args.layers} layers, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, "
          f"{str(dtype).removeprefix('torch.')}, {hardware}, torch {torch.__version__}, "
          f"allocator keeps freed memory: {kept}")

    hf = None
    if not args.skip_transformers:
        from bench.hf import import_transformers

        transformers = import_transformers()

        with tempfile.TemporaryDirectory() as directory:
            models.save_pretrained(model, directory)
            hf = transformers.GPT2LMHeadModel.from_pretrained(directory, dtype=hf_dtype).to(device).eval()

    # One engine per batch size: the torch backend runs every call at its engine's full
    # max_batch shape (batch independence), so batch 1 gets an engine of its own.
    start = time.perf_counter()
    engine = Engine(model, device=device, dtype=dtype, backend=args.backend, max_batch=1, compile=args.compile)
    engine.imagine(drives[:1], 1, seed=0)
    warm_one = time.perf_counter() - start
    start = time.perf_counter()
    engine_batch = Engine(model, device=device, dtype=dtype, backend=args.backend, max_batch=args.batch,
                          compile=args.compile)
    engine_batch.imagine(drives, 1, seed=0)
    warm_batch = time.perf_counter() - start
    print(f"engine: backend {engine.backend}, compiled {engine.compile}; "
          f"build + warm-up {warm_one:.1f} s (batch 1), {warm_batch:.1f} s (batch {args.batch})")

    per_frame = time_imagine(engine, drives[:1], args.frames)
    per_frame_batch = time_imagine(engine_batch, drives, args.frames)
    weight_bytes = sum(p.numel() * p.element_size() for p in engine.model.parameters())
    kv_bytes = 2 * config.n_layer * config.n_positions * config.n_embd * engine.cache.keys[0].element_size()
    gigabytes = config.frame_tokens * (weight_bytes + kv_bytes) / 1e9  # upper bound of bytes read per frame
    print(f"engine       batch 1: {per_frame * 1e3:9.1f} ms/frame  {config.frame_tokens / per_frame:8.1f} tokens/s"
          f"  ~{gigabytes / per_frame:.1f} GB/s")
    print(f"engine       batch {args.batch}: {per_frame_batch * 1e3:9.1f} ms/frame  "
          f"{args.batch * config.frame_tokens / per_frame_batch:8.1f} tokens/s  "
          f"{args.batch / per_frame_batch:.2f} frames/s")
    if args.exact:
        exact = Engine(model, device=device, max_batch=args.batch, numerics="exact")
        exact.imagine(drives[:1], 1, seed=0)  # warm-up
        exact_frame = time_imagine(exact, drives[:1], args.frames)
        exact_batch = time_imagine(exact, drives, args.frames)
        print(f"engine exact batch 1: {exact_frame * 1e3:9.1f} ms/frame  {config.frame_tokens / exact_frame:8.1f} "
              f"tokens/s ({per_frame / exact_frame:.2f}x float)")
        print(f"engine exact batch {args.batch}: {exact_batch * 1e3:9.1f} ms/frame  "
              f"{args.batch * config.frame_tokens / exact_batch:8.1f} tokens/s  {args.batch / exact_batch:.2f} frames/s "
              f"({per_frame_batch / exact_batch:.2f}x float)")
    if hf is not None:
        with torch.no_grad():
            time_transformers(hf, drives[:1], config, device)  # warm-up
            hf_frame = min(time_transformers(hf, drives[:1], config, device) for _ in range(args.frames))
            hf_batch = time_transformers(hf, drives, config, device)
        print(f"transformers ({str(hf_dtype).removeprefix('torch.')}) batch 1: {hf_frame * 1e3:9.1f} ms/frame  {config.frame_tokens / hf_frame:8.1f} tokens/s")
        print(f"transformers batch {args.batch}: {hf_batch * 1e3:9.1f} ms/frame  "
              f"{args.batch * config.frame_tokens / hf_batch:8.1f} tokens/s  {args.batch / hf_batch:.2f} frames/s")
        print(f"speed-up vs transformers: {hf_frame / per_frame:.2f}x per frame at batch 1, "
              f"{hf_batch / per_frame_batch:.2f}x at batch {args.batch}")
        if args.exact:
            print(f"speed-up vs transformers, exact numerics: {hf_frame / exact_frame:.2f}x per frame at batch 1, "
                  f"{hf_batch / exact_batch:.2f}x at batch {args.batch}")
    if args.gpt_fast:
        time_gpt_fast_side_by_side(model, drives, args, device, dtype, (per_frame, per_frame_batch))


def time_gpt_fast_side_by_side(model: models.GPT, drives: np.ndarray, args: argparse.Namespace, device: torch.device,
                               dtype: torch.dtype, engine_seconds: tuple[float, float]) -> None:
    """Build, warm up (compile, record the CUDA graph) and time the gpt-fast-style baseline at
    batch 1 and batch B in the engine's dtype; print it against the engine's seconds per frame."""
    tokens = model.config.frame_tokens
    start = time.perf_counter()
    # One generator per batch size: its static cache is built for one batch.
    one = GptFast(model, 1, device=device, dtype=dtype, compile=args.gpt_fast_compile)
    one.imagine(drives[:1], 1, seed=0)
    many = GptFast(model, args.batch, device=device, dtype=dtype, compile=args.gpt_fast_compile)
    many.imagine(drives, 1, seed=0)
    print(f"gpt-fast ({str(dtype).removeprefix('torch.')}, compiled {one.compile}): "
          f"build + warm-up {time.perf_counter() - start:.1f} s (batch 1 and {args.batch})")
    frame_one = time_imagine(one, drives[:1], args.frames)
    frame_many = time_imagine(many, drives, args.frames)
    print(f"gpt-fast     batch 1: {frame_one * 1e3:9.1f} ms/frame  {tokens / frame_one:8.1f} tokens/s")
    print(f"gpt-fast     batch {args.batch}: {frame_many * 1e3:9.1f} ms/frame  "
          f"{args.batch * tokens / frame_many:8.1f} tokens/s  {args.batch / frame_many:.2f} frames/s")
    print(f"speed-up vs gpt-fast: {frame_one / engine_seconds[0]:.2f}x per frame at batch 1, "
          f"{frame_many / engine_seconds[1]:.2f}x at batch {args.batch}")


if __name__ == "__main__":
    main()
