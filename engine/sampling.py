"""On-device sampling with counter-based noise: no generator state, no host sync.

A token is `argmax(logits / temperature - log(E))` with `E ~ Exp(1)` per vocabulary entry
(the exponential-race form of Gumbel-max). E comes from a hash of (seed, step, token id),
so a stream's samples depend only on its own seed and how many tokens it has drawn: not
on the batch it runs in, its row, or the device's random state. That is what makes a
drive's imagined future reproducible and independent of the other drives.
"""
from __future__ import annotations

import torch

# splitmix64 constants as signed int64 (torch has no uint64 arithmetic everywhere).
_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)
_MIX1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_MIX2 = 0x94D049BB133111EB - (1 << 64)
_STEP = 0xD1B54A32D192ED03 - (1 << 64)


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's `>>` is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def uniform_noise(seeds: torch.Tensor, step: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Uniform (0, 1) float32 noise `[B, vocab]` from int64 `seeds [B]` and int64 `step [1]`.
    Integer overflow wraps (two's complement), which the mixing relies on."""
    ids = torch.arange(vocab_size, device=seeds.device, dtype=torch.int64)
    x = seeds[:, None] * _GOLDEN + step * _STEP + (ids + 1) * _MIX2
    x = (x ^ _shift_right(x, 30)) * _MIX1
    x = (x ^ _shift_right(x, 27)) * _MIX2
    x = x ^ _shift_right(x, 31)
    return (_shift_right(x, 40).float() + 0.5) * (1.0 / (1 << 24))


def sample(
    logits: torch.Tensor,
    seeds: torch.Tensor,
    step: torch.Tensor,
    *,
    temperature: float,
    top_k: int | None,
    banned_token: int,
) -> torch.Tensor:
    """Draw one token per row of float32 `logits [B, vocab]`; `banned_token` (BOS) never wins.
    temperature 0 is greedy (argmax, lowest id on ties)."""
    logits = logits.clone()
    logits[:, banned_token] = float("-inf")
    if temperature == 0:
        return logits.argmax(dim=-1)
    if top_k is not None:
        kth_largest = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    noise = uniform_noise(seeds, step, logits.shape[-1])
    return (logits / temperature - torch.log(-torch.log(noise))).argmax(dim=-1)
