"""`Numerics`: the determinism contract, everything besides the weights that the logits' bits
depend on. Equal numerics (same model) mean identical logits for identical calls.

It is also the one owner of the choices behind it: the default backend, dtype and
compilation for a device, and the KV cache's dtype. `to_dict`/`from_dict` are the form a
compressed file's header stores; `from_dict` reads untrusted files, so it checks every field
before anything is allocated.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import torch

from .errors import EngineError
from .host import MAX_THREADS

MODES = ("float", "exact")
# The exact mode's arithmetic (`exact_ops`, `exact_attention`, `quantize`): bump it with any
# change that could move a bit of its logits. A file records it; the integers' fingerprint records the weights.
EXACT_VERSION = 1
BACKENDS = ("torch", "triton")
DEVICES = ("cpu", "cuda")
_MAX_TEXT = 64


@dataclass(frozen=True)
class Numerics:
    backend: str
    dtype: str  # a floating torch dtype's name: "float32", "bfloat16", ...
    device: str  # the device type
    compiled: bool
    prefill_chunk: int = 4096
    mode: str = "float"
    threads: int | None = None  # CPU: torch's thread count (GEMMs split work by thread)
    cpu_capability: str | None = None  # CPU: the vector ISA ATen and inductor dispatch to
    gpu: str | None = None  # CUDA: the architecture, e.g. "sm_90"

    def __post_init__(self) -> None:
        _check(self)

    @classmethod
    def for_engine_options(
        cls,
        device: torch.device,
        *,
        dtype: torch.dtype | None = None,
        backend: str = "auto",
        compile: bool | None = None,
        prefill_chunk: int = 4096,
        model_dtype: torch.dtype | None = None,
        mode: str = "float",
    ) -> Numerics:
        """Resolve an engine's options on this machine. Without `dtype`: `model_dtype` (a
        model handed over keeps its own dtype on the CPU), else `fast_dtype`. `compile`
        defaults to on for CUDA only: on the CPU it cost 30-90 s before the first frame and
        paid back only after ~190 frames of the shipped model (docs/BENCHMARKS.md)."""
        if backend == "auto":
            backend = "triton" if device.type == "cuda" else "torch"
        if backend not in BACKENDS:
            raise EngineError(f"unknown backend {backend!r}: choose 'auto', 'torch' or 'triton'")
        if backend == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise EngineError("the triton backend needs a CUDA device (or TRITON_INTERPRET=1 for tests)")
        if dtype is None:
            dtype = model_dtype if model_dtype is not None and device.type == "cpu" else fast_dtype(device, backend)
        compiled = compile if compile is not None else device.type == "cuda"
        machine: dict[str, object] = {}
        if device.type == "cpu":
            machine = {"threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability()}
        elif device.type == "cuda":
            major, minor = torch.cuda.get_device_capability(device)
            machine = {"gpu": f"sm_{major}{minor}"}
        return cls(backend=backend, dtype=_dtype_name(dtype), device=device.type, compiled=bool(compiled),
                   prefill_chunk=prefill_chunk, mode=mode, **machine)  # type: ignore[arg-type]

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def cache_dtype(self) -> torch.dtype:
        """On the CPU, ATen's attention over a bfloat16 cache is several times slower than
        over a float32 one, so the torch backend keeps K/V (and attention) in float32 there."""
        return torch.float32 if self.backend == "torch" and self.device == "cpu" else self.torch_dtype

    def set_threads(self) -> None:
        """Make torch's (process-wide) CPU thread count the one these numerics name."""
        if self.device == "cpu" and self.threads is not None and self.threads != torch.get_num_threads():
            torch.set_num_threads(self.threads)

    @classmethod
    def exact(cls, device: torch.device) -> Numerics:
        """Exact integer numerics on `device`: the same bits on any machine, so nothing about
        the machine (threads, ISA, device, batch) is part of the contract."""
        return cls(backend="torch", dtype="float32", device=device.type, compiled=False, mode="exact")

    def to_dict(self) -> dict[str, str | int]:
        """The header form. Float: the keys files have always had (machine facts only where
        they apply). Exact: the mode and the version of its arithmetic, nothing else."""
        if self.mode == "exact":
            return {"mode": "exact", "version": EXACT_VERSION}
        out: dict[str, str | int] = {"backend": self.backend, "dtype": self.dtype, "device": self.device,
                                     "prefill_chunk": self.prefill_chunk, "compiled": int(self.compiled)}
        for name in ("threads", "cpu_capability", "gpu"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out

    @classmethod
    def from_dict(cls, d: object) -> Numerics:
        """The inverse of `to_dict`, for untrusted input: every key and value is checked."""
        if not isinstance(d, dict):
            raise EngineError(f"numerics must be a dict, got {type(d).__name__}")
        if d.get("mode") == "exact":
            if d != {"mode": "exact", "version": EXACT_VERSION}:
                raise EngineError(f"exact numerics {_shown(d)} are not version {EXACT_VERSION}, the one this engine computes")
            return cls.exact(resolve_device(None))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(map(str, d.keys() - known))
        if unknown:
            raise EngineError(f"unknown numerics field(s) {', '.join(repr(k[:_MAX_TEXT]) for k in unknown)}")
        missing = sorted({"backend", "dtype", "device", "compiled", "prefill_chunk"} - d.keys())
        if missing:
            raise EngineError(f"numerics lack field(s) {', '.join(missing)}")
        compiled = d["compiled"]
        if type(compiled) is not int or compiled not in (0, 1):
            raise EngineError(f"numerics 'compiled' must be 0 or 1, got {_shown(compiled)}")
        return cls(**{**d, "compiled": bool(compiled)})


def fast_dtype(device: torch.device, backend: str = "auto") -> torch.dtype:
    """bfloat16 where it is computed natively (CUDA; CPUs with AVX512-BF16 or AMX under the
    torch backend), else float32."""
    if device.type == "cuda":
        return torch.bfloat16
    if device.type == "cpu" and backend in ("auto", "torch"):
        native = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)() or getattr(
            torch.cpu, "_is_amx_tile_supported", lambda: False
        )()
        return torch.bfloat16 if native else torch.float32
    return torch.float32


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device asked for, or CUDA when there is one, else the CPU. Refuses device types
    the engine cannot run on, and CUDA on a torch without it, with an `EngineError`."""
    try:
        resolved = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except (RuntimeError, TypeError) as exc:
        raise EngineError(f"not a torch device: {device!r}") from exc
    if resolved.type not in DEVICES:
        raise EngineError(f"device {resolved.type!r} is not supported: choose {' or '.join(DEVICES)}")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise EngineError("CUDA was asked for, but this torch has no CUDA device")
    return resolved


def _dtype_name(dtype: torch.dtype) -> str:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise EngineError(f"dtype must be a floating torch dtype, got {dtype!r}")
    return str(dtype).removeprefix("torch.")


def _shown(value: object) -> str:
    return repr(value)[:_MAX_TEXT]


def _check(n: Numerics) -> None:
    """Types and ranges of every field: a hostile header must fail here, not in torch."""
    for name in ("backend", "dtype", "device", "mode"):
        value = getattr(n, name)
        if not isinstance(value, str) or len(value) > _MAX_TEXT:
            raise EngineError(f"numerics {name!r} must be a short string, got {_shown(value)}")
    for name, allowed in (("backend", BACKENDS), ("device", DEVICES), ("mode", MODES)):
        if getattr(n, name) not in allowed:
            raise EngineError(f"numerics {name} {_shown(getattr(n, name))} is not one of {', '.join(allowed)}")
    dtype = getattr(torch, n.dtype, None) if n.dtype.isidentifier() else None
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point or n.dtype.startswith("_"):
        raise EngineError(f"numerics dtype {_shown(n.dtype)} is not a floating torch dtype")
    if type(n.compiled) is not bool:
        raise EngineError(f"numerics 'compiled' must be a bool, got {_shown(n.compiled)}")
    chunk = n.prefill_chunk
    if type(chunk) is not int or not 16 <= chunk <= 65536 or chunk & (chunk - 1):
        raise EngineError(f"prefill_chunk must be a power of two in 16..65536, got {_shown(chunk)}")
    if n.threads is not None and (type(n.threads) is not int or not 1 <= n.threads <= MAX_THREADS):
        raise EngineError(f"numerics threads must be an integer in 1..{MAX_THREADS}, got {_shown(n.threads)}")
    for name in ("cpu_capability", "gpu"):
        value = getattr(n, name)
        if value is not None and (not isinstance(value, str) or len(value) > _MAX_TEXT):
            raise EngineError(f"numerics {name!r} must be a short string, got {_shown(value)}")
