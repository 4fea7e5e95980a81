"""Ahead-of-time GPU compiles of every kernel, through the launchers' own plans, without a GPU.

Shapes are the ones the engine launches for gpt2m (24 layers, 16 heads, head_dim 64,
width 1024, MLP 4096, vocab 1025; decode batch 1 and 8, prefill chunk 2560) and for the
shipped default model (width 128, 4 heads, head_dim 32, MLP 512; prefill chunk 256), with
the engine's paged-cache geometry (`engine.kv_cache.CacheShape`, max_batch 8). A compile
error, any register spill or more shared memory than the target allows fails the test;
the table of registers / spills / shared memory is printed (pytest -s shows it).

The regular suite compiles a small representative set (a few seconds once Triton's
on-disk cache holds it). The full matrix, bf16/fp16/fp32 x sm_90/sm_86 x both models,
runs with `pytest -m aot_full tests/test_aot_compile.py` (or AOT_FULL=1); AOT_ARCHS=90
limits it to the given compute capabilities (the GPU check passes the lent GPU's).
"""
import json
import os
from pathlib import Path

import pytest

from engine.kv_cache import CacheShape
from kernels.aot import CompileResult, KernelCase, compile_cases, format_table
from models import DEFAULT_MODEL_DIR, GPTConfig

MAX_BATCH = 8  # the engine's default
GPT2M = GPTConfig()
DEFAULT = GPTConfig.from_hf_dict(json.loads((Path(DEFAULT_MODEL_DIR) / "config.json").read_text()))
PREFILL_CHUNKS = {"gpt2m": 2560, "default": 256}  # the padded bucket of each model's frame prefill
MODELS = {"gpt2m": GPT2M, "default": DEFAULT}


def model_cases(name: str, dtype: str, arch: int) -> list[KernelCase]:
    """Every launch the engine makes for one model, dtype and target."""
    config, chunk = MODELS[name], PREFILL_CHUNKS[name]
    cache = CacheShape(config.n_layer, MAX_BATCH, config.n_positions, config.n_head, config.head_dim)
    geometry = dict(num_blocks=cache.num_blocks + 1, block_size=cache.block_size)  # + the scratch block
    heads = dict(heads=config.n_head, head_dim=config.head_dim)
    width, mlp = config.n_embd, config.n_inner
    projections = {
        "qkv": dict(in_features=width, out_features=3 * width, bias=True, activation=None, residual=False),
        "attn proj": dict(in_features=width, out_features=width, bias=True, activation=None, residual=True),
        "mlp fc": dict(in_features=width, out_features=mlp, bias=True, activation="gelu_tanh", residual=False),
        "mlp proj": dict(in_features=mlp, out_features=width, bias=True, activation=None, residual=True),
        "lm_head": dict(in_features=width, out_features=config.vocab_size, bias=False, activation=None, residual=False),
    }
    cases = []
    for rows in (1, MAX_BATCH, chunk):  # decode batch 1, decode batch 8, a prefill chunk
        tag = f"{name} {dtype} M={rows}"
        cases.append(KernelCase(f"{tag} layer_norm", "layer_norm", dtype, arch, dict(rows=rows, features=width)))
        write = dict(tokens=rows, **heads, **geometry)
        cases.append(KernelCase(f"{tag} write_kv", "write_kv_cache", dtype, arch, write))
        cases += [
            KernelCase(f"{tag} {op}", "fused_linear", dtype, arch, dict(rows=rows, **sizes))
            for op, sizes in projections.items()
        ]
    for batch in (1, MAX_BATCH):
        tables = dict(max_blocks=cache.blocks_per_stream, **geometry)
        cases.append(KernelCase(f"{name} {dtype} B={batch} decode", "decode_attention", dtype, arch,
                                dict(batch=batch, **heads, **tables)))
        cases.append(KernelCase(f"{name} {dtype} B={batch} C={chunk} prefill", "prefill_attention", dtype, arch,
                                dict(batch=batch, chunk=chunk, **heads, **tables)))
    return cases


def int8_cases(name: str, arch: int) -> list[KernelCase]:
    config = MODELS[name]
    shapes = {(config.n_embd, 3 * config.n_embd), (config.n_embd, config.n_inner), (config.n_inner, config.n_embd),
              (config.n_embd, config.vocab_size)}
    return [
        KernelCase(f"{name} int8 M={rows} {k}->{n}", "int8_matmul", "int8", arch,
                   dict(rows=rows, in_features=k, out_features=n))
        for rows in (1, MAX_BATCH, PREFILL_CHUNKS[name]) for k, n in sorted(shapes)
    ]


def by_label(cases: list[KernelCase], *labels: str) -> list[KernelCase]:
    chosen = [case for case in cases if case.label in labels]
    assert len(chosen) == len(labels), f"unknown labels among {labels}"
    return chosen


def representative_cases() -> list[KernelCase]:
    """One launch of every kernel, the former float32 prefill spill on both targets, and
    fused_linear at M=1 and M=2560 (which must compile to the same machine code)."""
    return (
        by_label(model_cases("gpt2m", "bfloat16", 90), "gpt2m bfloat16 M=1 mlp fc", "gpt2m bfloat16 M=2560 mlp fc",
                 "gpt2m bfloat16 B=8 decode", "gpt2m bfloat16 M=8 write_kv")
        + by_label(model_cases("gpt2m", "float32", 90), "gpt2m float32 B=1 C=2560 prefill")
        + by_label(model_cases("gpt2m", "float32", 86), "gpt2m float32 B=1 C=2560 prefill")
        + by_label(model_cases("default", "float16", 86), "default float16 M=256 layer_norm")
        + by_label(int8_cases("gpt2m", 86), "gpt2m int8 M=1 4096->1024")
    )


def check(results: list[CompileResult], cases: list[KernelCase]) -> None:
    print("\n" + format_table(results))
    assert {result.label for result in results} == {case.label for case in cases}, "a case produced no kernel"
    problems = [problem for result in results for problem in result.problems]
    assert not problems, "\n".join(problems)


@pytest.fixture(scope="module")
def representative() -> tuple[list[KernelCase], list[CompileResult]]:
    cases = representative_cases()
    return cases, compile_cases(cases)


def test_representative_kernels_compile_without_spills(representative) -> None:
    check(representative[1], representative[0])


def test_fused_linear_rows_compile_to_the_same_binary(representative) -> None:
    """num_rows is not specialised: a decode row and a prefill row run the same machine code."""
    hashes = {r.label: r.cubin_sha256 for r in representative[1] if "mlp fc" in r.label}
    assert len(hashes) == 2 and len(set(hashes.values())) == 1, hashes


def full_matrix_selected(config: pytest.Config) -> bool:
    expression = config.getoption("-m") or ""
    chosen = "aot_full" in expression and "not aot_full" not in expression
    return chosen or os.environ.get("AOT_FULL") == "1"


@pytest.mark.aot_full
@pytest.mark.parametrize("arch", [90, 86])
def test_full_matrix_compiles_without_spills(arch: int, request: pytest.FixtureRequest) -> None:
    if not full_matrix_selected(request.config):
        pytest.skip("the full AOT matrix runs with -m aot_full or AOT_FULL=1")
    wanted = os.environ.get("AOT_ARCHS")
    if wanted and str(arch) not in wanted.split(","):
        pytest.skip(f"AOT_ARCHS={wanted}")
    cases = [
        case
        for name in MODELS
        for dtype in ("bfloat16", "float16", "float32")
        for case in model_cases(name, dtype, arch)
    ] + [case for name in MODELS for case in int8_cases(name, arch)]
    check(compile_cases(cases), cases)
