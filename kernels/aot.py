"""Compile the kernels for NVIDIA GPUs ahead of time, on a machine without a GPU.

Triton bundles ptxas, so `triton.compile` can build a cubin for any NVIDIA target here.
Each `KernelCase` names a launcher's plan function and the sizes to call it with: the
plan runs on meta tensors (shapes, strides and dtypes, no memory), exactly as a launch
would up to the kernel call; Triton's own binder then adds the launch-time
specialisation for the target (integer arguments equal to 1 become constants, integers
and pointers divisible by 16 get hints), and the result is compiled. Registers, local
memory per thread (where spills go; Triton's `n_spills` is this / 4) and shared memory
are read from the cubin with the bundled cuobjdump.

The Triton interpreter (TRITON_INTERPRET=1, which the CPU test suite sets) replaces every
@triton.jit kernel and patches triton.language for the whole process, so the compiles
run in a child process without it: `compile_cases` starts `python -m kernels.aot`, which
reads cases as JSON on stdin and writes results as JSON on stdout.
"""
import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from kernels._launch import Launch

# Largest shared memory one block may use (opt-in), by compute capability: a larger
# request compiles but fails at launch.
MAX_SHARED_BYTES = {80: 166912, 86: 101376, 89: 101376, 90: 232448}
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass(frozen=True)
class KernelCase:
    """One launcher call: `op` is a key of PLANS, `sizes` its keyword arguments."""

    label: str
    op: str
    dtype: str  # a key of DTYPES (int8_matmul ignores it)
    arch: int  # compute capability, e.g. 90 (H100/H200) or 86 (RTX 3090)
    sizes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CompileResult:
    label: str
    kernel: str
    arch: int
    dtype: str
    registers: int = 0
    spill_bytes: int = 0  # local memory per thread
    shared_bytes: int = 0
    num_warps: int = 0
    seconds: float = 0.0
    cubin_sha256: str = ""  # equal hashes: the same machine code
    error: str | None = None

    @property
    def problems(self) -> list[str]:
        """Why this kernel is not fit to ship: a compile error, spills, or too much shared memory."""
        if self.error is not None:
            return [f"{self.label} {self.kernel} sm_{self.arch}: compile error: {self.error}"]
        found = []
        if self.spill_bytes > 0:
            found.append(f"{self.label} {self.kernel} sm_{self.arch}: spills {self.spill_bytes} B/thread")
        if self.shared_bytes > MAX_SHARED_BYTES.get(self.arch, MAX_SHARED_BYTES[86]):
            found.append(f"{self.label} {self.kernel} sm_{self.arch}: {self.shared_bytes} B shared memory")
        return found


def _meta(*shape: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device="meta")


def _cache(num_blocks: int, block_size: int, heads: int, head_dim: int, dtype: torch.dtype) -> torch.Tensor:
    return _meta(num_blocks, block_size, heads, head_dim, dtype=dtype)


def _plan_fused_linear(dtype, rows, in_features, out_features, bias, activation, residual) -> list[Launch]:
    from kernels.linear import plan_fused_linear

    return plan_fused_linear(
        _meta(rows, in_features, dtype=dtype),
        _meta(out_features, in_features, dtype=dtype),
        _meta(out_features, dtype=dtype) if bias else None,
        activation=activation,
        residual=_meta(rows, out_features, dtype=dtype) if residual else None,
    )[1]


def _plan_layer_norm(dtype, rows, features) -> list[Launch]:
    from kernels.layer_norm import plan_layer_norm

    vector = _meta(features, dtype=dtype)
    return plan_layer_norm(_meta(rows, features, dtype=dtype), vector, vector, 1e-5)[1]


def _plan_write_kv_cache(dtype, tokens, heads, head_dim, num_blocks, block_size) -> list[Launch]:
    from kernels.kv_cache_write import plan_write_kv_cache

    rows = _meta(tokens, heads, head_dim, dtype=dtype)
    cache = _cache(num_blocks, block_size, heads, head_dim, dtype)
    return plan_write_kv_cache(rows, rows, cache, cache, _meta(tokens, dtype=torch.int64))


def _plan_decode(dtype, batch, heads, head_dim, num_blocks, block_size, max_blocks) -> list[Launch]:
    from kernels.decode_attention import plan_paged_decode_attention

    cache = _cache(num_blocks, block_size, heads, head_dim, dtype)
    return plan_paged_decode_attention(
        _meta(batch, heads, head_dim, dtype=dtype), cache, cache,
        _meta(batch, max_blocks, dtype=torch.int32), _meta(batch, dtype=torch.int32),
        scale=head_dim**-0.5,
    )[1]


def _plan_prefill(dtype, batch, chunk, heads, head_dim, num_blocks, block_size, max_blocks) -> list[Launch]:
    from kernels.prefill_attention import plan_paged_prefill_attention

    cache = _cache(num_blocks, block_size, heads, head_dim, dtype)
    lengths = _meta(batch, dtype=torch.int32)
    return plan_paged_prefill_attention(
        _meta(batch, chunk, heads, head_dim, dtype=dtype), cache, cache,
        _meta(batch, max_blocks, dtype=torch.int32), lengths, lengths,
        scale=head_dim**-0.5,
    )[1]


def _plan_int8_matmul(dtype, rows, in_features, out_features) -> list[Launch]:
    from kernels.int8_matmul import plan_int8_matmul

    a, b = _meta(rows, in_features, dtype=torch.int8), _meta(out_features, in_features, dtype=torch.int8)
    return plan_int8_matmul(a, b)[1]


PLANS = {
    "fused_linear": _plan_fused_linear,
    "layer_norm": _plan_layer_norm,
    "write_kv_cache": _plan_write_kv_cache,
    "decode_attention": _plan_decode,
    "prefill_attention": _plan_prefill,
    "int8_matmul": _plan_int8_matmul,
}


def compile_launch(launch: Launch, arch: int) -> dict[str, Any]:
    """Bind `launch` as JITFunction.run would for target sm_`arch`, compile it, read its resources."""
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile, make_backend
    from triton.runtime.jit import create_function_from_signature

    kernel = launch.kernel
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    # The options JITFunction.run adds before binding (num_warps etc. keep their defaults,
    # as the launchers pass none).
    kwargs = dict(launch.constexprs, debug=bool(kernel.debug) or knobs.runtime.debug)
    bound, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    # The JIT's own cache key: equal keys would reuse one compiled kernel at launch.
    key = repr((kernel.__name__, arch, signature, constexprs, attrs, options))
    if key not in _COMPILED:
        compiled = compile(ASTSource(kernel, signature, constexprs, attrs), target=target, options=options.__dict__)
        _COMPILED[key] = _describe(compiled, knobs.nvidia.cuobjdump.path)
    return _COMPILED[key]


_COMPILED: dict[str, dict[str, Any]] = {}


def _describe(compiled: Any, cuobjdump: str) -> dict[str, Any]:
    cubin = compiled.asm["cubin"]
    usage = _resource_usage(cubin, cuobjdump)
    return dict(
        kernel=compiled.metadata.name,
        registers=usage["REG"],
        # Triton reads CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES, the stack frame plus local arrays.
        spill_bytes=usage["STACK"] + usage["LOCAL"],
        shared_bytes=compiled.metadata.shared,
        num_warps=compiled.metadata.num_warps,
        cubin_sha256=hashlib.sha256(cubin).hexdigest(),
    )


def _resource_usage(cubin: bytes, cuobjdump: str) -> dict[str, int]:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        report = subprocess.run(
            [cuobjdump, "--dump-resource-usage", file.name], capture_output=True, text=True, check=True
        ).stdout
    # e.g. "REG:110 STACK:0 SHARED:1024 LOCAL:0 CONSTANT[0]:608 TEXTURE:0 ..."
    return {key: int(value) for key, value in re.findall(r"\b(REG|STACK|LOCAL):(\d+)", report)}


def _compile_case(case: KernelCase) -> list[CompileResult]:
    start = time.perf_counter()
    try:
        launches = PLANS[case.op](DTYPES.get(case.dtype), **case.sizes)
    except Exception as error:  # a plan that cannot be built is a failed case, not a crash
        return [CompileResult(case.label, case.op, case.arch, case.dtype, error=f"plan: {error!r}")]
    results = []
    for launch in launches:
        name = getattr(launch.kernel, "__name__", case.op)
        try:
            info = compile_launch(launch, case.arch)
        except Exception as error:
            results.append(CompileResult(case.label, name, case.arch, case.dtype, error=repr(error)[:2000]))
            continue
        seconds = time.perf_counter() - start
        results.append(CompileResult(case.label, arch=case.arch, dtype=case.dtype, seconds=seconds, **info))
        start = time.perf_counter()
    return results


def compile_cases(cases: list[KernelCase], timeout: float = 3600) -> list[CompileResult]:
    """Compile every case in a child process without the Triton interpreter."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    payload = json.dumps([dataclasses.asdict(case) for case in cases])
    child = subprocess.run(
        [sys.executable, "-m", "kernels.aot"], input=payload, capture_output=True, text=True, env=env, timeout=timeout
    )
    if child.returncode != 0:
        raise RuntimeError(f"python -m kernels.aot failed ({child.returncode}):\n{child.stderr[-4000:]}")
    return [CompileResult(**result) for result in json.loads(child.stdout)]


def format_table(results: list[CompileResult]) -> str:
    lines = [f"{'case':<44}{'kernel':<24}{'arch':>6}{'regs':>6}{'spill B':>9}{'shared B':>10}{'warps':>6}{'s':>6}"]
    for r in results:
        status = f"  ERROR {r.error[:200]}" if r.error else ""
        lines.append(
            f"{r.label:<44}{r.kernel:<24}{'sm_' + str(r.arch):>6}{r.registers:>6}{r.spill_bytes:>9}"
            f"{r.shared_bytes:>10}{r.num_warps:>6}{r.seconds:>6.1f}{status}"
        )
    return "\n".join(lines)


def main() -> None:
    """Child entry: JSON list of KernelCase on stdin -> JSON list of CompileResult on stdout."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("python -m kernels.aot must run without TRITON_INTERPRET (the interpreter replaces the kernels)")
    cases = [KernelCase(**case) for case in json.load(sys.stdin)]
    results = [result for case in cases for result in _compile_case(case)]
    json.dump([dataclasses.asdict(result) for result in results], sys.stdout)


if __name__ == "__main__":
    main()
