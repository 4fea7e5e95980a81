"""Measure the context mixer (compress/mixing.py): bits/token with and without it, and speed.

    python bench/mixing.py                 # validation: the training drives' held-back parts
    python bench/mixing.py --holdout       # also the held-out minute (report once, never tune)

The default model's teacher-forced tables (2-frame windows [BOS, frame t-1, BOS, frame t];
frame 0 alone) are cached under --cache as int32 [T, 128, 1024]. Validation: the last 15%
of the training minute (frames 1020..1199, never trained on) coded after the rest of the
minute (as the codec codes it) and coded alone, and the four 8-frame clips. Speed: the
encoder path (predict_frame + end_frame) per 1200-frame minute, and the decoder path
(predict + observe per token, end_frame per frame) per token for 1, 8 and 64 lanes.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import models  # noqa: E402
from compress.coder import PRECISION, frequencies  # noqa: E402
from compress.mixing import CONTEXTS, FRAME, ContextMixer, MixerConfig  # noqa: E402

BOS = 1024
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MINUTE = "3b41c0fa8959aea6c118e5714f412a2e_13"
TAIL = 1020  # the default model trained on the first 85% of the minute


def model_tables(model: models.GPT, frames: np.ndarray) -> np.ndarray:
    """Teacher-forced int32 tables [T, 128, 1024] of the model for one segment."""
    out = np.empty((len(frames), FRAME, 1024), dtype=np.int32)
    bos = np.array([BOS])
    with torch.no_grad():
        first = torch.from_numpy(np.concatenate([bos, frames[0]]))[None]
        out[0] = frequencies(model(first)[0, :FRAME].numpy(), 1024)
        for start in range(1, len(frames), 64):
            end = min(len(frames), start + 64)
            windows = np.stack([np.concatenate([bos, frames[t - 1], bos, frames[t]]) for t in range(start, end)])
            logits = model(torch.from_numpy(windows))[:, FRAME + 1 : 2 * FRAME + 1].reshape(-1, 1025).numpy()
            out[start:end] = frequencies(logits, 1024).reshape(end - start, FRAME, 1024)
    return out


def load(path: Path, model: models.GPT, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    frames = np.load(path).reshape(-1, FRAME).astype(np.int64)
    cached = cache / f"{path.stem}.freq.npy"
    if not cached.exists():
        np.save(cached, model_tables(model, frames))
    return frames, np.load(cached, mmap_mode="r")


def bits(frames: np.ndarray, tables: np.ndarray, config: MixerConfig | None) -> np.ndarray:
    """Code length in bits of each token [T, 128], with the mixer (or the model alone if None)."""
    mixer = ContextMixer(1, config) if config else None
    out = np.empty(frames.shape)
    for t in range(len(frames)):
        table = np.asarray(tables[t], dtype=np.int64)
        if mixer:
            table = mixer.predict_frame(table[None], frames[t][None])[0]
            mixer.end_frame(frames[t][None])
        out[t] = PRECISION - np.log2(table[np.arange(FRAME), frames[t]])
    return out


def report(name: str, segments: dict[str, tuple[np.ndarray, np.ndarray]], config: MixerConfig | None) -> None:
    frames, tables = segments[MINUTE]
    whole = bits(frames, tables, config)
    alone = bits(frames[TAIL:], tables[TAIL:], config)
    clips = np.concatenate([bits(f, q, config).ravel() for key, (f, q) in segments.items()
                            if key != MINUTE and key != "holdout"])
    parts = (whole[TAIL:].mean(), alone.mean(), clips.mean())
    # The score settings are chosen by: three regimes weighed equally (a new drive is
    # closest to the clips; the minute's tail is the most data).
    line = (f"{name:16s} minute {whole.mean():.4f}  tail-after-minute {parts[0]:.4f}  "
            f"tail-alone {parts[1]:.4f}  clips {parts[2]:.4f}  score {np.mean(parts):.4f}")
    if "holdout" in segments:
        held = bits(*segments["holdout"], config)
        line += f"  | HOLDOUT {held.mean():.4f} bits/token = {10 / held.mean():.3f}x"
    print(line, flush=True)


def speed(frames: np.ndarray, tables: np.ndarray, config: MixerConfig) -> None:
    mixer, warm, count = ContextMixer(1, config), 20, 100  # the first frames warm the allocator
    loaded = np.asarray(tables[: warm + count], dtype=np.int64)  # off the disk cache first
    for t in range(warm + count):
        if t == warm:
            start = time.perf_counter()
        mixer.predict_frame(loaded[t][None], frames[t][None])
        mixer.end_frame(frames[t][None])
    per_frame = (time.perf_counter() - start) / count
    print(f"encoder path: {per_frame * 1e3:.2f} ms/frame = {per_frame * 1200:.2f} s per 1200-frame minute")
    for lanes in (1, 8, 64):  # the decoder steps 1..64 lanes (of one or more segments) at once
        mixer, spent = ContextMixer(lanes, config), 0.0
        lane_frames = np.repeat(frames[:3, None], lanes, axis=1)
        for t in range(3):
            model = np.repeat(np.asarray(tables[t], dtype=np.int64)[None], lanes, axis=0)  # not timed
            start = time.perf_counter()
            for i in range(FRAME):
                mixer.predict(i, model[:, i], lane_frames[t])
                mixer.observe(i, lane_frames[t][:, i])
            mixer.end_frame(lane_frames[t])
            spent += time.perf_counter() - start
        per_token = spent / (3 * FRAME)
        print(f"decoder path, {lanes} lanes: {per_token * 1e6:.0f} us per predict+observe (all lanes)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--holdout", action="store_true", help="also measure the held-out minute (once, at the end)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/commavq-mixing-cache"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.cache.mkdir(parents=True, exist_ok=True)
    model = models.load_pretrained(models.DEFAULT_MODEL_DIR).eval()
    segments = {path.stem: load(path, model, args.cache) for path in sorted((DATA / "train").glob("*.npy"))}
    if args.holdout:
        segments["holdout"] = load(DATA / "holdout" / "tacobell_example.npy", model, args.cache)
    print(f"{platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}; bits/token")
    report("model alone", segments, None)
    chosen = MixerConfig()
    for context in CONTEXTS:
        report(f"model + {context}", segments, MixerConfig(contexts=(context,)))
    report(f"chosen: {chosen.version}", segments, chosen)
    speed(*segments[MINUTE], chosen)


if __name__ == "__main__":
    main()
