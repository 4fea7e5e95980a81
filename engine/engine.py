"""`Engine`: the world model on a device, with a paged KV cache, ready to imagine or code."""
from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from models import DEFAULT_MODEL_DIR, GPT, fingerprint, load_pretrained

from .backends import BACKENDS
from .errors import EngineError
from .inputs import normalise_tokens, restore_layout
from .kv_cache import CacheShape, PagedKVCache
from .model_runner import ModelRunner
from .sampling import sample
from .streams import CudaGraphStep, Streams


class Engine:
    """Wraps a `models.GPT`. `backend`: "triton" (default on CUDA), "torch" (default on the
    CPU) or "auto". `compile` defaults to True except for Triton under the CPU interpreter."""

    def __init__(
        self,
        model: GPT,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        backend: str = "auto",
        max_batch: int = 8,
        prefill_chunk: int = 4096,
        compile: bool | None = None,
    ) -> None:
        self.device = resolve_device(device)
        if backend == "auto":
            backend = "triton" if self.device.type == "cuda" else "torch"
        # A model handed over keeps its own dtype on the CPU (the engine casts in place).
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else next(model.parameters()).dtype)
        if backend not in BACKENDS:
            raise EngineError(f"unknown backend {backend!r}: choose 'auto', 'torch' or 'triton'")
        if backend == "triton" and self.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise EngineError("the triton backend needs a CUDA device (or TRITON_INTERPRET=1 for tests)")
        if max_batch < 1 or prefill_chunk < 16 or prefill_chunk & (prefill_chunk - 1):
            raise EngineError("max_batch must be >= 1 and prefill_chunk a power of two >= 16")
        self.backend, self.max_batch, self.prefill_chunk = backend, max_batch, prefill_chunk
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        self.config = model.config
        self.compile = compile if compile is not None else not (backend == "triton" and self.device.type != "cuda")

        config = self.config
        shape = CacheShape(config.n_layer, max_batch, config.n_positions, config.n_head, config.head_dim)
        # On the CPU, ATen's attention over a bfloat16 cache is several times slower than over
        # a float32 one, so the torch backend keeps K/V (and does attention) in float32 there.
        cache_dtype = torch.float32 if backend == "torch" and self.device.type == "cpu" else self.dtype
        self.cache = PagedKVCache(shape, dtype=cache_dtype, device=self.device)
        self.runner = ModelRunner(self.model, self.cache, BACKENDS[backend](self.cache, config.head_dim**-0.5))
        self._forward = self.runner.forward
        if self.compile:
            _allow_recompiles_per_bucket()
            self._forward = torch.compile(self.runner.forward, dynamic=False)
        self._graphs: dict[int, CudaGraphStep] = {}
        self._stream_generation = 0

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike | None = None,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        backend: str = "auto",
        max_batch: int = 8,
        **options,
    ) -> Engine:
        """`path`: a local checkpoint directory (see `models.load_pretrained`); None is the
        small default model shipped in the package. `dtype` defaults to bfloat16 where the
        hardware computes in it natively (CUDA; CPUs with AVX512-BF16 or AMX under the torch
        backend), else float32."""
        device = resolve_device(device)
        dtype = dtype or fast_dtype(device, backend)
        model = load_pretrained(Path(path) if path is not None else DEFAULT_MODEL_DIR, dtype=dtype)
        return cls(model, device=device, dtype=dtype, backend=backend, max_batch=max_batch, **options)

    @cached_property
    def fingerprint(self) -> str:
        return fingerprint(self.model)

    @property
    def numerics(self) -> dict[str, str | int]:
        """Everything besides the weights that the bits of the logits depend on: equal
        dicts (same model) mean identical logits for identical calls.

        On the CPU that includes torch's thread count (GEMMs split work by thread) and the
        vector ISA ATen and inductor dispatch to; on CUDA the GPU architecture."""
        numerics: dict[str, str | int] = {
            "backend": self.backend,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": self.device.type,
            "prefill_chunk": self.prefill_chunk,
            "compiled": int(self.compile),
        }
        if self.device.type == "cpu":
            numerics["threads"] = torch.get_num_threads()
            numerics["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        elif self.device.type == "cuda":
            major, minor = torch.cuda.get_device_capability(self.device)
            numerics["gpu"] = f"sm_{major}{minor}"
        return numerics

    # --- the step interface ------------------------------------------------------------
    def open_streams(self, batch_size: int) -> Streams:
        """Start `batch_size` (1..max_batch) streams; streams opened earlier stop working."""
        if not 1 <= batch_size <= self.max_batch:
            raise EngineError(f"batch_size must be in 1..{self.max_batch}, got {batch_size}")
        self._stream_generation += 1
        decode = self._forward
        if self.device.type == "cuda":
            if batch_size not in self._graphs:
                self._graphs[batch_size] = CudaGraphStep(self._forward, batch_size, self.device)
            decode = self._graphs[batch_size]
        return Streams(self, batch_size, self._forward, decode)

    # --- imagine -----------------------------------------------------------------------
    @torch.no_grad()
    def imagine(
        self,
        tokens: np.ndarray | torch.Tensor,
        n: int,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        seed: int | Sequence[int] | None = None,
    ) -> np.ndarray | torch.Tensor:
        """Continue one drive `(T, 128)` / `(T, 8, 16)` or a batch `(B, T, ...)` by `n` frames.

        Each new frame sees the window's last `frames_per_window - 1` frames, each behind a
        BOS, then its own BOS; its tokens are sampled one at a time. `temperature=0` is
        greedy. `seed`: one int for every drive, one per drive, or None for fresh ones. A
        drive's frames depend only on its own tokens and seed, never on the batch.
        """
        config = self.config
        frames, layout = normalise_tokens(tokens, config.frame_tokens, config.vocab_size - 2)
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
            raise EngineError(f"n must be a non-negative integer, got {n!r}")
        if not (isinstance(temperature, (int, float)) and temperature >= 0):
            raise EngineError(f"temperature must be a number >= 0, got {temperature!r}")
        if top_k is not None and not (isinstance(top_k, int) and 1 <= top_k < config.vocab_size):
            raise EngineError(f"top_k must be None or an integer in 1..{config.vocab_size - 1}, got {top_k!r}")
        seeds = _drive_seeds(seed, frames.shape[0])

        results = []
        for begin in range(0, frames.shape[0], self.max_batch):
            chunk = frames[begin : begin + self.max_batch]
            results.append(self._imagine_batch(chunk, seeds[begin : begin + self.max_batch], int(n), temperature, top_k))
        new_frames = torch.cat(results) if results else torch.zeros(0, int(n), config.frame_tokens, dtype=torch.int64)
        return restore_layout(new_frames, layout)

    def _imagine_batch(
        self, frames: torch.Tensor, seeds: torch.Tensor, n: int, temperature: float, top_k: int | None
    ) -> torch.Tensor:
        config, device = self.config, self.device
        drives = frames.shape[0]
        streams = self.open_streams(drives)
        bos = torch.full((drives, frames.shape[1], 1), config.bos_token_id, dtype=torch.int64)
        history = torch.cat([bos, frames], dim=2).to(device)  # [B, T, tokens_per_frame]
        seeds, step = seeds.to(device), torch.zeros(1, dtype=torch.int64, device=device)
        out = torch.empty(drives, n, config.frame_tokens, dtype=torch.int64, device=device)
        for frame in range(n):
            context = history[:, history.shape[1] - (config.frames_per_window - 1) :].reshape(drives, -1)
            new_bos = torch.full((drives, 1), config.bos_token_id, dtype=torch.int64, device=device)
            logits = streams.prefill(torch.cat([context, new_bos], dim=1))
            for index in range(config.frame_tokens):
                token = sample(logits, seeds, step, temperature=temperature, top_k=top_k, banned_token=config.bos_token_id)
                out[:, frame, index] = token
                step += 1
                if index + 1 < config.frame_tokens:
                    logits = streams.step(token)
            new_frame = torch.cat([new_bos, out[:, frame]], dim=1)[:, None]
            history = torch.cat([history[:, 1 - config.frames_per_window :], new_frame], dim=1)
        return out.cpu()


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device asked for, or CUDA when there is one, else the CPU."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def fast_dtype(device: torch.device, backend: str = "auto") -> torch.dtype:
    """bfloat16 where it is computed natively, else float32."""
    if device.type == "cuda":
        return torch.bfloat16
    if device.type == "cpu" and backend in ("auto", "torch"):
        native = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)() or getattr(
            torch.cpu, "_is_amx_tile_supported", lambda: False
        )()
        return torch.bfloat16 if native else torch.float32
    return torch.float32


def _drive_seeds(seed: int | Sequence[int] | None, drives: int) -> torch.Tensor:
    if seed is None:
        values = [secrets.randbits(62) for _ in range(drives)]
    elif isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        values = [int(seed)] * drives
    elif isinstance(seed, Sequence) and len(seed) == drives and all(isinstance(s, (int, np.integer)) for s in seed):
        values = [int(s) for s in seed]
    else:
        raise EngineError(f"seed must be None, an int, or one int per drive ({drives}), got {seed!r}")
    if any(not -(2**63) <= v < 2**63 for v in values):
        raise EngineError("seeds must fit in 64 signed bits")
    return torch.tensor(values, dtype=torch.int64)


def _allow_recompiles_per_bucket() -> None:
    """One compiled graph per prefill bucket and batch size is by design, not a cache miss."""
    import torch._dynamo

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 64))
