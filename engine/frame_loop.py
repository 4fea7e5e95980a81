"""A frame's token loop as one function over device tensors: sample, feed back, repeat.

`FrameLoop` samples `count` tokens per stream from the prefill's logits, feeding all but the
last back through the model's decode forward (`count - 1` steps), with positions advanced
on the device: no tensor is read on the host, no shape changes between iterations, so the
same call can be captured once as a CUDA graph (`cuda_graph.CudaGraphFrame`) and replayed
per frame. On the CPU, and in exact numerics, it runs as it is: one code path, captured or
not.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .errors import EngineError
from .model_runner import ChunkFn
from .sampling import sample


@dataclass(frozen=True)
class Sampling:
    """How tokens are drawn; fixed for a loop, so a captured graph bakes it in (hashable:
    the engine keeps one graph per batch size and `Sampling`)."""

    temperature: float  # 0 is greedy
    top_k: int | None
    banned_token: int  # never drawn (BOS)


class FrameLoop:
    """`count` tokens per stream, sampled and fed back on the device (see the module doc)."""

    def __init__(self, forward: ChunkFn, sampling: Sampling, count: int) -> None:
        if count < 1:
            raise EngineError(f"a frame loop draws at least one token, got count={count}")
        self.forward, self.sampling, self.count = forward, sampling, count

    def __call__(
        self,
        logits: torch.Tensor,
        seeds: torch.Tensor,
        step: torch.Tensor,
        start: torch.Tensor,
        query_lens: torch.Tensor,
        kv_lens: Sequence[int | None],
    ) -> torch.Tensor:
        """float32 `logits [B, vocab]` (the prefill's), int64 `seeds [B]`, int64 `step [1]` (the
        sampler's counter at the first token), int32 `start [B]` (the position of the first
        fed-back token) and int32 `query_lens [B]` (ones; zeros make every step padding that
        writes nothing real, for a graph's warm-up and capture) -> int64 tokens `[B, count]`.
        `kv_lens[i]` bounds the keys step i reads (host ints, as `Streams.reserve` gives them;
        None reads the whole cache, as a captured graph must). The inputs are not modified."""
        if len(kv_lens) != self.count - 1:
            raise EngineError(f"need one kv_len per fed-back token ({self.count - 1}), got {len(kv_lens)}")
        sampling = self.sampling
        tokens = torch.empty(logits.shape[0], self.count, dtype=torch.int64, device=logits.device)
        for index in range(self.count):
            token = sample(logits, seeds, step + index, temperature=sampling.temperature, top_k=sampling.top_k,
                           banned_token=sampling.banned_token)
            tokens[:, index] = token
            if index + 1 < self.count:  # the last token needs no logits
                logits = self.forward(token[:, None], start + index, query_lens, kv_len=kv_lens[index])
        return tokens
