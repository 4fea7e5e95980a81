"""A gpt-fast-style generator for `models.GPT` weights: the baseline `bench.imagine` sets beside the engine.

The recipe of pytorch-labs/gpt-fast, nothing more: a static KV cache of `n_positions` per
layer, `input_pos` a device tensor, `F.scaled_dot_product_attention` with an explicit causal
mask over the whole static cache, one prefill and one one-token decode function, the decode
compiled with `torch.compile(mode="reduce-overhead", fullgraph=True)` (CUDA graphs on
CUDA; on the CPU that mode captures no graph, so compiling defaults to CUDA only), and
sampling on the device (the exponential race `argmax(p / Exp(1))`), so no token needs a
host sync.

Frames are generated as `engine.imagine` generates them: each new frame prefills the last
`frames_per_window - 1` frames (fewer while the history is shorter), each behind BOS, plus
its own BOS, then decodes its 128 tokens one by one; BOS is never sampled. Positions are
absolute, so every frame starts a fresh prefill over the same static cache: the causal mask
hides whatever the previous frame left beyond the current position.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import models


class KVCache(nn.Module):
    """One layer's static cache, `[batch, heads, n_positions, head_dim]` for K and for V."""

    def __init__(self, shape: tuple[int, int, int, int], dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device))
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device))

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k[:, :, input_pos] = k
        self.v[:, :, input_pos] = v
        return self.k, self.v


class StaticCacheGPT(nn.Module):
    """`forward(tokens [B, L], input_pos [L]) -> float32 logits [B, vocab]` of the last position,
    writing K/V of positions `input_pos` into the static cache and attending over all of it."""

    def __init__(self, model: models.GPT, batch: int) -> None:
        super().__init__()
        config = model.config
        weight = model.lm_head.weight
        self.model = model
        self.caches = nn.ModuleList(
            KVCache((batch, config.n_head, config.n_positions, config.head_dim), weight.dtype, weight.device)
            for _ in range(config.n_layer)
        )
        # Row p of the mask: which cache positions position p may see.
        causal = torch.ones(config.n_positions, config.n_positions, dtype=torch.bool, device=weight.device)
        self.register_buffer("causal", causal.tril())

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        transformer, config = self.model.transformer, self.model.config
        batch, length = tokens.shape
        x = transformer.wte(tokens) + transformer.wpe(input_pos)
        mask = self.causal[None, None, input_pos]  # [1, 1, L, n_positions]
        for block, cache in zip(transformer.h, self.caches):
            q, k, v = block.attn.c_attn(block.ln_1(x)).split(config.n_embd, dim=-1)
            q, k, v = (t.view(batch, length, config.n_head, config.head_dim).transpose(1, 2) for t in (q, k, v))
            k, v = cache.update(input_pos, k, v)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            x = x + block.attn.c_proj(y.transpose(1, 2).reshape(batch, length, config.n_embd))
            x = x + block.mlp(block.ln_2(x))
        return self.model.lm_head(transformer.ln_f(x[:, -1])).float()


def sample(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """One token per row of `logits [B, vocab]`, BOS (the last entry) excluded; 0 is greedy.
    The exponential race `argmax(p / E)`, `E ~ Exp(1)`, draws from `p` with no host sync."""
    logits = logits[:, :-1]
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    return (probs / torch.empty_like(probs).exponential_(1)).argmax(dim=-1)


def decode_one_token(net: StaticCacheGPT, token: torch.Tensor, input_pos: torch.Tensor, temperature: float
                     ) -> torch.Tensor:
    """The step that is compiled: one position's forward and its sample, `[B, 1] -> [B]`."""
    return sample(net(token, input_pos), temperature)


class GptFast:
    """Imagine commaVQ frames for a fixed batch with a copy of `model`'s weights.

    `dtype`: the weights' and cache's (default: `model`'s); `compile`: compile the decode
    step with reduce-overhead (default: on CUDA only)."""

    def __init__(self, model: models.GPT, batch: int, *, device: str | torch.device | None = None,
                 dtype: torch.dtype | None = None, compile: bool | None = None) -> None:
        if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
            raise ValueError(f"batch must be a positive integer, got {batch!r}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.compile = self.device.type == "cuda" if compile is None else bool(compile)
        self.config, self.batch = model.config, batch
        weights = copy.deepcopy(model).to(device=self.device, dtype=dtype or model.lm_head.weight.dtype)
        self.net = StaticCacheGPT(weights.eval().requires_grad_(False), batch)
        # The prefill stays eager, as gpt-fast's default: its length changes with the history.
        # Static shapes (dynamic=False): gpt-fast runs one batch size per process, so a second
        # generator at another batch gets its own specialised graph, not a dynamic-shape one.
        self.decode = (torch.compile(decode_one_token, mode="reduce-overhead", fullgraph=True, dynamic=False)
                       if self.compile else decode_one_token)

    @torch.no_grad()
    def imagine(self, drives: np.ndarray | torch.Tensor, n: int, *, temperature: float = 1.0,
                seed: int | None = None) -> torch.Tensor:
        """Continue `drives` int `[batch, T, frame_tokens]` (ids 0..vocab-2) by `n` frames:
        int64 `[batch, n, frame_tokens]` on the CPU. `seed` seeds torch's global generator."""
        config, device = self.config, self.device
        bos = config.bos_token_id
        frames = torch.as_tensor(np.asarray(drives) if not isinstance(drives, torch.Tensor) else drives)
        if frames.dim() != 3 or frames.shape[0] != self.batch or frames.shape[2] != config.frame_tokens:
            raise ValueError(f"drives must be [{self.batch}, T, {config.frame_tokens}], got {tuple(frames.shape)}")
        if frames.dtype.is_floating_point or frames.dtype == torch.bool or frames.dtype.is_complex:
            raise ValueError(f"drives must hold integer token ids, got {frames.dtype}")
        if frames.numel() and not (0 <= int(frames.min()) and int(frames.max()) < bos):
            raise ValueError(f"token ids must lie in 0..{bos - 1}")
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        if not (isinstance(temperature, (int, float)) and temperature >= 0):
            raise ValueError(f"temperature must be a number >= 0, got {temperature!r}")
        if seed is not None:
            torch.manual_seed(seed)
        temperature = float(temperature)
        keep = config.frames_per_window - 1
        bos_column = torch.full((self.batch, 1), bos, dtype=torch.int64, device=device)
        history = torch.cat([bos_column[:, None].expand(-1, frames.shape[1], -1),
                             frames.to(device=device, dtype=torch.int64)], dim=2)  # [B, T, tokens_per_frame]
        out = torch.empty(self.batch, n, config.frame_tokens, dtype=torch.int64, device=device)
        for frame in range(n):
            context = history[:, max(history.shape[1] - keep, 0) :].reshape(self.batch, -1)
            prompt = torch.cat([context, bos_column], dim=1)
            token = sample(self.net(prompt, torch.arange(prompt.shape[1], device=device)), temperature)
            out[:, frame, 0] = token
            input_pos = torch.tensor([prompt.shape[1]], device=device)
            for index in range(1, config.frame_tokens):
                # A CUDA graph's output is overwritten by its next replay: keep a copy.
                token = self.decode(self.net, token[:, None], input_pos, temperature).clone()
                out[:, frame, index] = token
                input_pos += 1
            new_frame = torch.cat([bos_column, out[:, frame]], dim=1)[:, None]
            history = torch.cat([history[:, max(history.shape[1] - keep + 1, 0) :], new_frame], dim=1)
        return out.cpu()
