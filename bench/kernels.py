"""Benchmark the Triton kernels at the commaVQ GPT-2 shapes against PyTorch baselines.

Reports, for each case, the Triton kernel and a torch baseline timed in the same run:
    decode attention   achieved GB/s (K/V bytes read) at batch 1 and a larger batch
    fused_linear M=1   achieved GB/s (weight bytes read): QKV, MLP c_fc + gelu, c_proj + residual
    int8_matmul M=1    achieved GB/s (int8 weight bytes read) against torch._int_mm (padded to 17 rows)
    prefill attention  achieved TFLOP/s of a causal prefill
and each as a fraction of the device's peak where the device is in PEAKS.

    python -m bench.kernels [--batch 32] [--context 2452] [--dtype bf16]
    (or python bench/kernels.py)
"""
import argparse
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

if not __package__:
    # Run as a file, this script's folder comes first on sys.path and this file
    # (bench/kernels.py) would shadow the `kernels` package: put the repo root there.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from triton.testing import do_bench  # noqa: E402

from kernels import fused_linear, int8_matmul, paged_decode_attention, paged_prefill_attention  # noqa: E402

NUM_HEADS, HEAD_DIM, WIDTH, MLP_WIDTH = 16, 64, 1024, 4096
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# (peak memory bandwidth in bytes/s, peak dense 16-bit tensor FLOP/s), from vendor spec sheets.
PEAKS = {
    "H200": (4.8e12, 989e12),
    "H100": (3.35e12, 989e12),
    "A100": (2.0e12, 312e12),
}


@dataclass
class Row:
    op: str
    shape: str
    unit: str  # "GB/s" or "TFLOP/s"
    work: float  # bytes moved or FLOPs done per call
    triton_ms: float
    torch_ms: float


def device_peaks() -> tuple[float, float] | None:
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in PEAKS.items() if key in name), None)


def time_ms(fn: Callable[[], object]) -> float:
    return do_bench(fn, warmup=25, rep=100)


def bench_decode(batch: int, context: int, block_size: int, dtype: torch.dtype) -> Row:
    blocks_per_seq = math.ceil(context / block_size)
    num_blocks = batch * blocks_per_seq
    cache_shape = (num_blocks, block_size, NUM_HEADS, HEAD_DIM)
    key_cache = torch.randn(cache_shape, dtype=dtype, device="cuda")
    value_cache = torch.randn(cache_shape, dtype=dtype, device="cuda")
    # Shuffled blocks, as a free-list allocator would hand them out.
    block_tables = torch.randperm(num_blocks, device="cuda").to(torch.int32).view(batch, blocks_per_seq)
    context_lens = torch.full((batch,), context, dtype=torch.int32, device="cuda")
    query = torch.randn(batch, NUM_HEADS, HEAD_DIM, dtype=dtype, device="cuda")
    scale = HEAD_DIM**-0.5

    # Baseline: SDPA over contiguous (unpaged) K/V of the same length.
    keys = torch.randn(batch, NUM_HEADS, context, HEAD_DIM, dtype=dtype, device="cuda")
    values = torch.randn_like(keys)
    query_4d = query.unsqueeze(2)
    kv_bytes = 2 * batch * context * NUM_HEADS * HEAD_DIM * key_cache.element_size()
    return Row(
        "decode attention",
        f"B={batch} ctx={context}",
        "GB/s",
        kv_bytes,
        time_ms(
            lambda: paged_decode_attention(query, key_cache, value_cache, block_tables, context_lens, scale=scale)
        ),
        time_ms(lambda: F.scaled_dot_product_attention(query_4d, keys, values, scale=scale)),
    )


def bench_linear(name: str, in_features: int, out_features: int, epilogue: str, dtype: torch.dtype) -> Row:
    x = torch.randn(1, in_features, dtype=dtype, device="cuda")
    weight = torch.randn(out_features, in_features, dtype=dtype, device="cuda") / in_features**0.5
    bias = torch.randn(out_features, dtype=dtype, device="cuda")
    residual = torch.randn(1, out_features, dtype=dtype, device="cuda")
    activation = "gelu_tanh" if epilogue == "gelu" else None
    added = residual if epilogue == "residual" else None

    def baseline() -> torch.Tensor:
        result = torch.addmm(bias, x, weight.t())
        if activation is not None:
            result = F.gelu(result, approximate="tanh")
        return result if added is None else result + added

    weight_bytes = weight.numel() * weight.element_size()
    shape = f"M=1 {in_features}->{out_features} {epilogue}".rstrip()
    ours_ms = time_ms(lambda: fused_linear(x, weight, bias, activation=activation, residual=added))
    return Row(f"fused_linear ({name})", shape, "GB/s", weight_bytes, ours_ms, time_ms(baseline))


def bench_int8(name: str, in_features: int, out_features: int) -> Row:
    a = torch.randint(-128, 128, (1, in_features), dtype=torch.int8, device="cuda")
    b = torch.randint(-128, 128, (out_features, in_features), dtype=torch.int8, device="cuda")
    # torch._int_mm needs more than 16 rows on CUDA: a decode row padded as the engine would.
    padded = torch.cat([a, a.new_zeros(16, in_features)])
    return Row(
        f"int8_matmul ({name})",
        f"M=1 {in_features}->{out_features}",
        "GB/s",
        b.numel(),
        time_ms(lambda: int8_matmul(a, b)),
        time_ms(lambda: torch._int_mm(padded, b.t())),
    )


def bench_prefill(context: int, block_size: int, dtype: torch.dtype) -> Row:
    num_blocks = math.ceil(context / block_size)
    cache_shape = (num_blocks, block_size, NUM_HEADS, HEAD_DIM)
    key_cache = torch.randn(cache_shape, dtype=dtype, device="cuda")
    value_cache = torch.randn(cache_shape, dtype=dtype, device="cuda")
    block_tables = torch.randperm(num_blocks, device="cuda").to(torch.int32).view(1, num_blocks)
    prefix_lens = torch.zeros(1, dtype=torch.int32, device="cuda")
    query_lens = torch.full((1,), context, dtype=torch.int32, device="cuda")
    query = torch.randn(1, context, NUM_HEADS, HEAD_DIM, dtype=dtype, device="cuda")
    scale = HEAD_DIM**-0.5

    query_bhld = query.transpose(1, 2).contiguous()
    keys, values = torch.randn_like(query_bhld), torch.randn_like(query_bhld)
    # Causal: QK^T and PV each cost 2 * D FLOPs per (query, visible key) pair.
    flops = 4 * NUM_HEADS * HEAD_DIM * context * (context + 1) / 2
    return Row(
        "prefill attention",
        f"B=1 tokens={context}",
        "TFLOP/s",
        flops,
        time_ms(
            lambda: paged_prefill_attention(
                query, key_cache, value_cache, block_tables, prefix_lens, query_lens, scale=scale
            )
        ),
        time_ms(lambda: F.scaled_dot_product_attention(query_bhld, keys, values, is_causal=True, scale=scale)),
    )


def print_table(rows: list[Row], peaks: tuple[float, float] | None) -> None:
    header = (
        f"{'op':<26}{'shape':<30}{'triton us':>10}{'achieved':>16}{'% peak':>8}"
        f"{'torch us':>10}{'torch':>16}{'speedup':>9}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        scale = 1e9 if row.unit == "GB/s" else 1e12
        ours = row.work / (row.triton_ms * 1e-3) / scale
        theirs = row.work / (row.torch_ms * 1e-3) / scale
        if peaks is None:
            fraction = "n/a"
        else:
            peak = peaks[0] if row.unit == "GB/s" else peaks[1]
            fraction = f"{100 * ours * scale / peak:.0f}%"
        print(
            f"{row.op:<26}{row.shape:<30}{row.triton_ms * 1e3:>10.1f}{ours:>8.1f} {row.unit:<7}"
            f"{fraction:>8}{row.torch_ms * 1e3:>10.1f}{theirs:>8.1f} {row.unit:<7}"
            f"{row.torch_ms / row.triton_ms:>8.2f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32, help="larger decode batch (batch 1 always runs)")
    parser.add_argument("--context", type=int, default=2452, help="context / prefill length in tokens")
    parser.add_argument("--block-size", type=int, default=16, help="KV-cache block size in tokens")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/kernels.py needs a CUDA GPU (none found); the kernels' CPU path is only the interpreter.")

    dtype = DTYPES[args.dtype]
    peaks = device_peaks()
    rows = [
        bench_decode(1, args.context, args.block_size, dtype),
        bench_decode(args.batch, args.context, args.block_size, dtype),
        bench_linear("qkv", WIDTH, 3 * WIDTH, "", dtype),
        bench_linear("mlp c_fc", WIDTH, MLP_WIDTH, "gelu", dtype),
        bench_linear("mlp c_proj", MLP_WIDTH, WIDTH, "residual", dtype),
        bench_int8("mlp c_fc", WIDTH, MLP_WIDTH),
        bench_int8("mlp c_proj", MLP_WIDTH, WIDTH),
        bench_prefill(args.context, args.block_size, dtype),
    ]
    print(f"device: {torch.cuda.get_device_name()}  dtype: {args.dtype}  peaks: "
          + ("n/a" if peaks is None else f"{peaks[0] / 1e12:.2f} TB/s, {peaks[1] / 1e12:.0f} TFLOP/s"))
    print_table(rows, peaks)


if __name__ == "__main__":
    main()
