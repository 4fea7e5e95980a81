"""`Engine`: the world model on a device with a paged KV cache: construction, numerics, and
the step interface that imagine (`imagine.py`) and the compressor drive."""
from __future__ import annotations

import dataclasses
import os
from functools import cached_property

import torch

from models import GPT, fingerprint, load_pretrained

from .backends import BACKENDS, TorchOps, packs_weights
from .cuda_graph import CudaGraphFrame, CudaGraphStep
from .errors import EngineError
from .exact_runner import ExactRunner
from .exact_score import score as exact_score
from .frame_loop import FrameLoop, Sampling
from .imagine import imagine as _imagine
from .kv_cache import CacheShape, PagedKVCache
from .model_runner import ChunkFn, ModelRunner
from .numerics import Numerics, fast_dtype, resolve_device
from .streams import StreamSpec, Streams


class Engine:
    """Wraps a `models.GPT`. `numerics`: "float" (the model's float arithmetic, fastest on a
    GPU; its bits depend on the machine) or "exact" (integer arithmetic, `exact_runner.py`:
    the same bits on any machine, batch and call pattern). Float only: `backend` "triton"
    (default on CUDA), "torch" (default on the CPU) or "auto"; defaults of dtype and
    `compile`: see `Numerics.for_engine_options`."""

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
        numerics: str = "float",
    ) -> None:
        device = resolve_device(device)
        if numerics not in ("float", "exact"):
            raise EngineError(f"numerics must be 'float' or 'exact', got {numerics!r}")
        if numerics == "exact":
            if compile or dtype not in (None, torch.float32) or backend not in ("auto", "torch"):
                raise EngineError("exact numerics run eagerly in their own integer arithmetic: "
                                  "they take no dtype, backend or compile option")
            self._build(model.float(), device, Numerics.exact(device), max_batch)
            return
        numerics_ = Numerics.for_engine_options(
            device, dtype=dtype, backend=backend, compile=compile, prefill_chunk=prefill_chunk,
            model_dtype=next(model.parameters()).dtype,
        )
        self._build(model, device, numerics_, max_batch)

    def _build(self, model: GPT, device: torch.device, numerics: Numerics, max_batch: int) -> None:
        if not isinstance(max_batch, int) or max_batch < 1:
            raise EngineError(f"max_batch must be an integer >= 1, got {max_batch!r}")
        self.device, self.max_batch, self._numerics = device, max_batch, numerics
        self.backend, self.dtype = numerics.backend, numerics.torch_dtype
        self.prefill_chunk, self.compile = numerics.prefill_chunk, numerics.compiled
        self.model = model.to(device=device, dtype=self.dtype).eval()
        self.config = config = model.config
        self._graphs: dict[int, CudaGraphStep] = {}
        self._frame_graphs: dict[tuple[int, Sampling], CudaGraphFrame] = {}
        self._streams: Streams | None = None
        if numerics.mode == "exact":  # integer weights and an int8 cache of its own
            self.runner = ExactRunner(self.model, max_batch=max_batch, device=device)
            self._forward = self.runner.forward
            self.batch_invariant = True
            return
        shape = CacheShape(config.n_layer, max_batch, config.n_positions, config.n_head, config.head_dim)
        self.cache = PagedKVCache(shape, dtype=numerics.cache_dtype, device=device)
        ops = BACKENDS[numerics.backend](self.cache, config.head_dim**-0.5)
        self.batch_invariant = ops.batch_invariant
        self.runner: ModelRunner | ExactRunner = ModelRunner(self.model, self.cache, ops)
        if isinstance(ops, TorchOps) and not self.compile and packs_weights(device, self.dtype):
            ops.pack_weights([m.weight for m in self.model.modules() if isinstance(m, torch.nn.Linear)])
        self._forward = self._runner_forward(numerics)

    def _runner_forward(self, numerics: Numerics) -> ChunkFn:
        """The float chunk forward, compiled or not."""
        if not numerics.compiled:
            return self.runner.forward
        _allow_recompiles_per_bucket()
        return torch.compile(self.runner.forward, dynamic=False)

    @classmethod
    def from_numerics(cls, numerics: Numerics, model: GPT | str | os.PathLike | None = None, max_batch: int = 8) -> Engine:
        """An engine computing with `numerics` (as a compressed file records them). `model`:
        a `GPT`, a checkpoint directory, or None for the shipped model. On the CPU this sets
        torch's thread count, which is process-wide, to the numerics' own. Machine facts
        (CPU ISA, GPU architecture) cannot be chosen: the engine's `numerics` report this
        machine's, so comparing them with `numerics` tells whether the logits can match."""
        device = resolve_device(numerics.device)
        numerics.set_threads()
        if not isinstance(model, GPT):
            model = load_pretrained(model, dtype=numerics.torch_dtype)  # exact numerics: float32
        if numerics.mode == "exact":
            return cls(model, device=device, max_batch=max_batch, numerics="exact")
        here = Numerics.for_engine_options(
            device, dtype=numerics.torch_dtype, backend=numerics.backend, compile=numerics.compiled,
            prefill_chunk=numerics.prefill_chunk, mode=numerics.mode,
        )
        engine = cls.__new__(cls)
        engine._build(model, device, here, max_batch)
        return engine

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
        small default model shipped in the package. `dtype` defaults to `fast_dtype`."""
        device = resolve_device(device)
        if options.get("numerics") == "exact":
            dtype = dtype or torch.float32
        dtype = dtype or fast_dtype(device, backend)
        model = load_pretrained(path, dtype=dtype)
        return cls(model, device=device, dtype=dtype, backend=backend, max_batch=max_batch, **options)

    @cached_property
    def fingerprint(self) -> str:
        """SHA-256 of what the logits are computed from: the weights (float), or the integers
        and tables they were quantized to (exact)."""
        if isinstance(self.runner, ExactRunner):
            return self.runner.fingerprint
        return fingerprint(self.model)

    @property
    def numerics(self) -> Numerics:
        """Everything besides the weights that the bits of the logits depend on, as of now:
        torch's thread count is process-wide and read at each call."""
        if self.device.type == "cpu" and self._numerics.mode == "float":
            return dataclasses.replace(self._numerics, threads=torch.get_num_threads())
        return self._numerics

    # --- the step interface ------------------------------------------------------------
    def open_streams(self, batch_size: int) -> Streams:
        """Start `batch_size` (1..max_batch) streams; streams opened earlier stop working."""
        if not 1 <= batch_size <= self.max_batch:
            raise EngineError(f"batch_size must be in 1..{self.max_batch}, got {batch_size}")
        if self._streams is not None:
            self._streams.close()  # one cache: the new streams overwrite the old ones' K/V
        decode = self._forward
        if self.device.type == "cuda" and self._numerics.mode == "float":
            decode = self._graph_step(batch_size)
        config = self.config
        spec = StreamSpec(self.device, config.vocab_size, config.n_positions, self.prefill_chunk, self._forward, decode)
        self._streams = Streams(spec, batch_size)
        return self._streams

    def _graph_step(self, batch_size: int) -> ChunkFn:
        """The decode step as a CUDA graph, captured at its first use (imagine never steps,
        so it never pays for one). Capture feeds zero query lengths: nothing real is written,
        so capturing after a prefill is safe."""

        def decode(tokens, start, query_lens, kv_len=None):
            if batch_size not in self._graphs:
                self._graphs[batch_size] = CudaGraphStep(self._forward, batch_size, self.device)
            return self._graphs[batch_size](tokens, start, query_lens, kv_len)

        return decode

    def frame_loop(self, batch_size: int, sampling: Sampling) -> FrameLoop | CudaGraphFrame:
        """The token loop of one frame for `batch_size` streams (`frame_loop.FrameLoop`): on
        CUDA in float numerics captured once per batch size and sampling settings as a CUDA
        graph and replayed; elsewhere it runs uncaptured (exact numerics run eagerly)."""
        if not 1 <= batch_size <= self.max_batch:
            raise EngineError(f"batch_size must be in 1..{self.max_batch}, got {batch_size}")
        loop = FrameLoop(self._forward, sampling, self.config.frame_tokens)
        if self.device.type != "cuda" or self._numerics.mode != "float":
            return loop
        key = (batch_size, sampling)
        if key not in self._frame_graphs:
            self._frame_graphs[key] = CudaGraphFrame(loop, batch_size, self.config.vocab_size, self.device)
        return self._frame_graphs[key]

    def score(self, tokens: torch.Tensor, first: int = 0) -> torch.Tensor:
        """Teacher forcing, exact numerics only: int64 `tokens [B, L]` from position 0 ->
        float32 logits `[B, L - first, vocab]` for positions first..L-1, bit-identical to
        what a prefill of the first t+1 tokens (or a prefill and steps) gives at position t."""
        if not isinstance(self.runner, ExactRunner):
            raise EngineError("score() needs exact numerics: float logits depend on the call's shape")
        return exact_score(self.runner, tokens.to(self.device), first)

    # `engine.imagine(tokens, n, ...)`: imagine.py's function, a client of the streams above.
    imagine = _imagine


def _allow_recompiles_per_bucket() -> None:
    """One compiled graph per prefill bucket, filled-cache bucket and batch size is by
    design (about 30 per batch size for gpt2m), not a cache miss."""
    import torch._dynamo

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 256))
