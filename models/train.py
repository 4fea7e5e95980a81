"""`python -m models train DATA... --out DIR`: train a small world model on token segments.

The compressor codes frame t token by token given the previous `frames - 1` frames, so
training samples windows of `frames` consecutive frames and (by default) counts the loss
only on each window's last frame: exactly the quantity the compressor pays for. The
checkpoint with the lowest validation bits/token is the one kept in `--out`. Validation is
`--val-data` (other drives: frames 1.. of each segment, the training segments are then used
in full) or else the last `val_fraction` of every training segment's frames (their context
frames may come from the training part; the end of the same drive ranks models less like
new drives do).
"""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .checkpoint import save_pretrained
from .config import GPTConfig
from .data import FRAME_TOKENS, TOKEN_VALUES, load_segments
from .gpt import GPT


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters; the defaults are the recipe of the shipped `models/default`."""

    layers: int = 2
    width: int = 128
    heads: int = 4
    frames: int = 2  # frames per window: the target frame plus frames - 1 of context
    steps: int = 1000
    batch_size: int = 16
    lr: float = 3e-3
    warmup_steps: int = 100
    weight_decay: float = 0.1
    # Fraction of training windows whose token ids are relabelled by a random permutation
    # (the same one for every frame of the window). Ids are categorical, so a relabelled
    # window is still a valid clip in an unknown code book: the model can only predict it
    # by copying from the context, which pushes it to the mechanism that generalises to new
    # scenes rather than to memorising the training minute's id statistics.
    permute_fraction: float = 0.5
    # Sharing the input embedding with the output head makes "copy this id from the
    # previous frame" a near-identity map the model can find early, for every id alike.
    tie_embeddings: bool = True
    seed: int = 0
    val_fraction: float = 0.15  # ignored when validation segments are given (`--val-data`)
    eval_every: int = 100
    threads: int = 1


def model_config(config: TrainConfig) -> GPTConfig:
    return GPTConfig(
        frame_tokens=FRAME_TOKENS,
        n_positions=config.frames * (FRAME_TOKENS + 1),
        n_layer=config.layers,
        n_head=config.heads,
        n_embd=config.width,
        n_inner=4 * config.width,
        tie_word_embeddings=config.tie_embeddings,
    )


def new_model(config: TrainConfig) -> GPT:
    torch.manual_seed(config.seed)
    model = GPT(model_config(config))
    # Start every frame's position embeddings equal to the first frame's, so token i of the
    # target frame and token i of a context frame look alike from step one: the model finds
    # "copy the same grid cell from the previous frame" hundreds of steps sooner.
    per_frame = model.config.tokens_per_frame
    with torch.no_grad():
        wpe = model.transformer.wpe.weight
        wpe.copy_(wpe[:per_frame].repeat(model.config.frames_per_window, 1))
    return model


def with_bos(frames: np.ndarray, bos: int) -> np.ndarray:
    """`(..., F, 128)` frames -> `(..., F * 129)` sequence with BOS opening each frame."""
    bos_column = np.full(frames.shape[:-1] + (1,), bos, dtype=np.int64)
    sequence = np.concatenate([bos_column, frames], axis=-1)
    return sequence.reshape(*frames.shape[:-2], -1)


def permute_ids(frames: np.ndarray, fraction: float, generator: torch.Generator) -> np.ndarray:
    """Relabel the ids of a random `fraction` of the `[B, F, 128]` windows, one permutation each."""
    chosen = (torch.rand(len(frames), generator=generator) < fraction).tolist()
    frames = frames.copy()
    for b in (b for b, relabel in enumerate(chosen) if relabel):
        frames[b] = torch.randperm(TOKEN_VALUES, generator=generator).numpy()[frames[b]]
    return frames


def last_frame_logits(model: GPT, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits for the last frame's 128 tokens of each `[B, F * 129]` window, and those tokens.

    The input drops the final token (nothing is predicted from it), as the compressor does:
    its prefill ends at the last frame's BOS.
    """
    per_frame = model.config.tokens_per_frame
    first_target = windows.shape[1] - per_frame + 1
    hidden = model.hidden_states(windows[:, :-1])[:, first_target - 1 :]
    return model.lm_head(hidden), windows[:, first_target:]


def split_segments(
    segments: list[np.ndarray], val_fraction: float, frames: int
) -> tuple[list[np.ndarray], list[tuple[np.ndarray, int]]]:
    """Training parts and `(segment, first validation target frame)` for each segment."""
    train, val = [], []
    for tokens in segments:
        held_out = math.ceil(val_fraction * len(tokens)) if val_fraction > 0 else 0
        first_val = max(len(tokens) - held_out, frames - 1)
        if first_val >= frames:  # room for at least one training window
            train.append(tokens[:first_val])
        if first_val < len(tokens):
            val.append((tokens, first_val))
    if not train:
        raise ValueError(f"no segment has {frames} training frames; lower --frames or --val-fraction")
    return train, val


@torch.no_grad()
def segment_bits(model: GPT, tokens: np.ndarray, first_frame: int, batch_size: int = 32) -> tuple[float, int]:
    """Total bits and token count to code frames `first_frame..` of `tokens`, each given
    its previous frames within the model's window (fewer at the start of the segment)."""
    window = model.config.frames_per_window
    bos = model.config.bos_token_id
    targets = list(range(first_frame, len(tokens)))
    total_bits, count = 0.0, 0
    # Frames near the start have shorter contexts; batch only windows of equal length.
    for context in range(window):
        same_length = [t for t in targets if min(t, window - 1) == context]
        for i in range(0, len(same_length), batch_size):
            chunk = same_length[i : i + batch_size]
            frames = np.stack([tokens[t - context : t + 1] for t in chunk])
            logits, target = last_frame_logits(model, torch.from_numpy(with_bos(frames, bos)))
            nats = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum")
            total_bits += nats.item() / math.log(2)
            count += target.numel()
    return total_bits, count


def validation_bits_per_token(model: GPT, val: list[tuple[np.ndarray, int]]) -> float:
    model.eval()
    results = [segment_bits(model, tokens, first) for tokens, first in val]
    model.train()
    return sum(bits for bits, _ in results) / sum(count for _, count in results)


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(
    segments: list[np.ndarray], config: TrainConfig, out: str, val_segments: list[np.ndarray] | None = None
) -> float:
    """Train, keep the best-by-validation checkpoint in `out`, return its bits/token.

    With `val_segments`, validation codes their frames 1.. and `segments` are all training
    data; otherwise the last `config.val_fraction` of each segment is held out."""
    torch.set_num_threads(config.threads)
    model = new_model(config)
    if val_segments is None:
        train_parts, val = split_segments(segments, config.val_fraction, config.frames)
    else:
        train_parts = [tokens for tokens in segments if len(tokens) >= config.frames]
        val = [(tokens, 1) for tokens in val_segments if len(tokens) > 1]
        if not train_parts:
            raise ValueError(f"no training segment has {config.frames} frames; lower --frames")
    # Every (segment, start) pair of a whole training window, drawn with a seeded generator.
    starts = [(i, s) for i, part in enumerate(train_parts) for s in range(len(part) - config.frames + 1)]
    sampler = torch.Generator().manual_seed(config.seed)
    decayed = [p for p in model.parameters() if p.dim() >= 2]  # not LayerNorm gains or biases
    others = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decayed, "weight_decay": config.weight_decay}, {"params": others, "weight_decay": 0.0}],
        lr=config.lr,
        betas=(0.9, 0.95),
    )
    best = math.inf
    progress = tqdm(range(config.steps), desc="train", unit="step")
    for step in progress:
        picks = torch.randint(len(starts), (config.batch_size,), generator=sampler).tolist()
        frames = np.stack([train_parts[i][s : s + config.frames] for i, s in (starts[p] for p in picks)])
        if config.permute_fraction > 0:
            frames = permute_ids(frames, config.permute_fraction, sampler)
        logits, target = last_frame_logits(model, torch.from_numpy(with_bos(frames, model.config.bos_token_id)))
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        last = step + 1 == config.steps
        if val and ((step + 1) % config.eval_every == 0 or last):
            bits = validation_bits_per_token(model, val)
            if bits < best:
                best = bits
                save_pretrained(model, out)
            progress.write(f"step {step + 1}: train {loss.item() / math.log(2):.3f} val {bits:.3f} bits/token (best {best:.3f})")
    if not val:  # nothing to select by: keep the final weights
        save_pretrained(model, out)
    return best


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", nargs="+", help=".npy segments, directories of them, or webdataset .tar.gz shards")
    parser.add_argument("--out", required=True, help="checkpoint directory to write (best by validation)")
    parser.add_argument(
        "--val-data", nargs="+", metavar="PATH",
        help="validation-only segments (other drives); training data is then used in full and --val-fraction ignored",
    )
    defaults = TrainConfig()
    for field in fields(TrainConfig):
        flag, default = "--" + field.name.replace("_", "-"), getattr(defaults, field.name)
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        else:
            parser.add_argument(flag, type=type(default), default=default)


def run_training(args: argparse.Namespace) -> None:
    config = TrainConfig(**{field.name: getattr(args, field.name) for field in fields(TrainConfig)})
    segments = [tokens for _, tokens in load_segments(args.data)]
    val_segments = [tokens for _, tokens in load_segments(args.val_data)] if args.val_data else None
    print(f"training {asdict(config)} on {len(segments)} segments, {sum(map(len, segments))} frames")
    if val_segments is not None:
        print(f"validating on {len(val_segments)} separate segments, {sum(map(len, val_segments))} frames")
    started = time.monotonic()
    best = train(segments, config, args.out, val_segments)
    minutes = (time.monotonic() - started) / 60
    print(f"best validation {best:.4f} bits/token; wrote {args.out} in {minutes:.1f} min")
