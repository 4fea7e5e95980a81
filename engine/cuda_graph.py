"""`CudaGraphStep`: `ModelRunner.forward`'s decode step captured once as a CUDA graph."""
from __future__ import annotations

from typing import Callable

import torch

ChunkFn = Callable[..., torch.Tensor]  # ModelRunner.forward, compiled or captured


class CudaGraphStep:
    """The decode step `[batch_size, 1]` captured once as a CUDA graph and replayed.

    Inputs are copied into static buffers before each replay; the returned logits are a
    copy, so callers may keep them across steps."""

    def __init__(self, forward: ChunkFn, batch_size: int, device: torch.device) -> None:
        self.tokens = torch.zeros(batch_size, 1, dtype=torch.int64, device=device)
        self.start = torch.zeros(batch_size, dtype=torch.int32, device=device)
        # Zero query lengths make warm-up and capture padding-only: nothing real is written.
        # Replays read whatever the buffers hold then.
        self.query_lens = torch.zeros(batch_size, dtype=torch.int32, device=device)
        # Warm up (compiles, autotunes) on a side stream, as CUDA graph capture requires.
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):
                forward(self.tokens, self.start, self.query_lens)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = forward(self.tokens, self.start, self.query_lens)

    def __call__(
        self, tokens: torch.Tensor, start: torch.Tensor, query_lens: torch.Tensor, kv_len: int | None = None
    ) -> torch.Tensor:
        """`kv_len` is only a bound: the graph was captured reading the whole cache."""
        self.tokens.copy_(tokens)
        self.start.copy_(start)
        self.query_lens.copy_(query_lens)
        self.graph.replay()
        return self.logits.clone()
