"""CUDA graphs of the decode path, captured once and replayed:

- `CudaGraphStep`: `ModelRunner.forward`'s decode step (the step interface's `Streams.step`);
- `CudaGraphFrame`: a whole frame's token loop (`frame_loop.FrameLoop`: sampling and 127
  decode steps), so imagine costs one prefill and one replay per frame.

Both copy their inputs into static buffers before a replay and return a copy of the output,
so callers may keep it across replays.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Callable

import torch

from .model_runner import ChunkFn

if TYPE_CHECKING:
    from .frame_loop import FrameLoop


def _capture(run: Callable[[], torch.Tensor], device: torch.device) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """Warm `run` up (compiles, autotunes) on a side stream, as capture requires, then
    capture it; returns the graph and the output tensor its replays write."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(2):
            run()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        output = run()
    return graph, output


class CudaGraphStep:
    """The decode step `[batch_size, 1]` captured once as a CUDA graph and replayed."""

    def __init__(self, forward: ChunkFn, batch_size: int, device: torch.device) -> None:
        self.tokens = torch.zeros(batch_size, 1, dtype=torch.int64, device=device)
        self.start = torch.zeros(batch_size, dtype=torch.int32, device=device)
        # Zero query lengths make warm-up and capture padding-only: nothing real is written.
        # Replays read whatever the buffers hold then.
        self.query_lens = torch.zeros(batch_size, dtype=torch.int32, device=device)
        self.graph, self.logits = _capture(lambda: forward(self.tokens, self.start, self.query_lens), device)

    def __call__(
        self, tokens: torch.Tensor, start: torch.Tensor, query_lens: torch.Tensor, kv_len: int | None = None
    ) -> torch.Tensor:
        """`kv_len` is only a bound: the graph was captured reading the whole cache."""
        self.tokens.copy_(tokens)
        self.start.copy_(start)
        self.query_lens.copy_(query_lens)
        self.graph.replay()
        return self.logits.clone()


class CudaGraphFrame:
    """A frame loop for `batch_size` streams captured once as a CUDA graph and replayed;
    called like the `FrameLoop` it captures, whose sampling settings it bakes in."""

    def __init__(self, loop: FrameLoop, batch_size: int, vocab_size: int, device: torch.device) -> None:
        self.loop = loop
        self.logits = torch.zeros(batch_size, vocab_size, device=device)
        self.seeds = torch.zeros(batch_size, dtype=torch.int64, device=device)
        self.step = torch.zeros(1, dtype=torch.int64, device=device)
        self.start = torch.zeros(batch_size, dtype=torch.int32, device=device)
        # Zeros while warming up and capturing: every step is padding, so a capture never
        # overwrites the cache of streams in use. Replays run with the caller's (ones).
        self.query_lens = torch.zeros(batch_size, dtype=torch.int32, device=device)
        whole_cache = [None] * (loop.count - 1)  # one graph serves every position: no key bound
        self.graph, self.tokens = _capture(
            lambda: loop(self.logits, self.seeds, self.step, self.start, self.query_lens, whole_cache), device
        )

    def __call__(
        self,
        logits: torch.Tensor,
        seeds: torch.Tensor,
        step: torch.Tensor,
        start: torch.Tensor,
        query_lens: torch.Tensor,
        kv_lens: Sequence[int | None],
    ) -> torch.Tensor:
        """`FrameLoop.__call__`; `kv_lens` are only bounds: the graph reads the whole cache."""
        for buffer, value in ((self.logits, logits), (self.seeds, seeds), (self.step, step), (self.start, start),
                              (self.query_lens, query_lens)):
            buffer.copy_(value)
        self.graph.replay()
        return self.tokens.clone()
