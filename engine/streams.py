"""The step interface: B token streams that prefill a context, then feed one token each.

    streams = engine.open_streams(batch_size)
    logits = streams.prefill(tokens)   # [B, L] int64, positions 0..L-1  -> [B, vocab] float32
    logits = streams.step(next_tokens) # [B] int64, one more position    -> [B, vocab] float32

Imagine and the compressor both drive the model only through this class.

Shapes are static: every call runs `batch_size` rows (rows past the real batch are padding
that reads and writes nothing real), a decode step is `[batch_size, 1]`, and a prefill is
cut into chunks of at most `prefill_chunk` tokens whose lengths come from a fixed set of
buckets (powers of two up to 256, then multiples of 256), each padded to its bucket. So torch.compile sees a bounded set of
shapes, and on CUDA the decode step is captured once as a CUDA graph and replayed.

Determinism: with the Triton backend a row's logits are bit-identical for any batch size
and any other rows. With the torch backend they are identical for the same `batch_size`
(library GEMMs choose their algorithm by shape), whatever the other rows hold.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .model_runner import ChunkFn
from .errors import EngineError


@dataclass(frozen=True)
class StreamSpec:
    """What a set of streams needs from its engine."""

    device: torch.device
    vocab_size: int
    n_positions: int
    prefill_chunk: int
    forward: ChunkFn  # compiled chunk forward, any bucket
    decode: ChunkFn  # the decode step: a CUDA-graph replay on CUDA, else `forward`


class Streams:
    def __init__(self, spec: StreamSpec, batch_size: int) -> None:
        self.spec = spec
        self.batch_size = batch_size
        self.length = 0  # tokens fed so far; every stream advances in lockstep
        self._start = torch.zeros(batch_size, dtype=torch.int32, device=spec.device)
        self._one = torch.ones(batch_size, dtype=torch.int32, device=spec.device)
        self._closed = False

    def close(self) -> None:
        """Stop these streams: the engine calls this when it opens new ones (one cache)."""
        self._closed = True

    # --- the interface ---------------------------------------------------------------
    def prefill(self, tokens: torch.Tensor) -> torch.Tensor:
        """Reset every stream and feed `tokens [batch_size, L]`. Returns the next-token
        logits after position L-1."""
        self._check_open()
        tokens = self._as_tokens(tokens, (self.batch_size, None))
        length, spec = tokens.shape[1], self.spec
        if not 1 <= length <= spec.n_positions:
            raise EngineError(f"prefill length {length} must be in 1..{spec.n_positions}")
        self._start.zero_()
        for begin in range(0, length, spec.prefill_chunk):
            chunk = tokens[:, begin : begin + spec.prefill_chunk]
            real = chunk.shape[1]
            padded = torch.nn.functional.pad(chunk, (0, self._bucket(real) - real))
            kv_len = self._bucket(begin + real, spec.n_positions)
            logits = spec.forward(padded, self._start, torch.full_like(self._one, real), begin == 0, kv_len)
            self._start += real
        self.length = length
        return logits

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per stream, `tokens [batch_size]`. Returns the next-token logits.
        Values are checked when `tokens` is on the CPU; device tensors are trusted (a check
        would cost a host sync per token)."""
        self._check_open()
        if self.length == 0:
            raise EngineError("step() before prefill(): every stream needs a context first")
        if self.length >= self.spec.n_positions:
            raise EngineError(f"the streams are full: all {self.spec.n_positions} positions are used")
        tokens = self._as_tokens(tokens, (self.batch_size,))
        logits = self.spec.decode(tokens[:, None], self._start, self._one, kv_len=self._bucket(self.length + 1, self.spec.n_positions))
        self._start += 1
        self.length += 1
        return logits

    def reserve(self, steps: int) -> tuple[torch.Tensor, list[int]]:
        """For a caller that feeds the next `steps` tokens itself, on the device, with no
        per-step checks or host sync (imagine's frame loop, one CUDA graph on CUDA): checks
        that they fit and advances the bookkeeping now. Returns the first one's positions
        (int32 `[batch_size]`, a copy on the device) and each step's `kv_len` bound, as
        `step` would pass them."""
        self._check_open()
        if self.length == 0:
            raise EngineError("reserve() before prefill(): every stream needs a context first")
        if not 0 <= steps <= self.spec.n_positions - self.length:
            raise EngineError(f"cannot reserve {steps} steps: {self.spec.n_positions - self.length} positions are left")
        start = self._start.clone()
        kv_lens = [self._bucket(self.length + i + 1, self.spec.n_positions) for i in range(steps)]
        self._start += steps
        self.length += steps
        return start, kv_lens

    # --- helpers ---------------------------------------------------------------------
    def _bucket(self, length: int, limit: int | None = None) -> int:
        """The padded length of a prefill chunk (limit: `prefill_chunk`) or of the filled
        cache (limit: none; a bound on the keys attention reads)."""
        limit = self.spec.prefill_chunk if limit is None else limit
        if length > 256:  # fine steps for long prefills: gpt2m's 2452-token window pads to 2560
            return min(-(-length // 256) * 256, limit)
        bucket = 16
        while bucket < length:
            bucket *= 2
        return min(bucket, limit)

    def _check_open(self) -> None:
        if self._closed:
            raise EngineError("these streams were closed: the engine opened new ones (one set at a time)")

    def _as_tokens(self, tokens: torch.Tensor, shape: tuple[int | None, ...]) -> torch.Tensor:
        if not isinstance(tokens, torch.Tensor):
            raise EngineError(f"tokens must be a torch.Tensor, got {type(tokens).__name__}")
        if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
            raise EngineError(f"tokens must be integers, got {tokens.dtype}")
        if tokens.dim() != len(shape) or any(want not in (None, got) for want, got in zip(shape, tokens.shape)):
            want = ", ".join("L" if s is None else str(s) for s in shape)
            raise EngineError(f"tokens must have shape [{want}], got {list(tokens.shape)}")
        if tokens.device.type == "cpu" and tokens.numel():
            low, high = (int(t) for t in torch.aminmax(tokens))
            if low < 0 or high >= self.spec.vocab_size:
                raise EngineError(f"token values must be in 0..{self.spec.vocab_size - 1}, got {low}..{high}")
        return tokens.to(device=self.spec.device, dtype=torch.int64)
