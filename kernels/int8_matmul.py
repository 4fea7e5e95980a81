"""Exact integer matrix product for the exact numerics mode: int8 x int8 -> int32.

Layouts:
    a:       [M, K] int8    one row per token (quantized activations)
    b:       [N, K] int8    nn.Linear layout (out features x in features; quantized weights)
    output:  [M, N] int32   a @ b.T, exact

Each product is at most 128 * 128 = 2^14 in magnitude, so a row's sum over K is exact in
int32 while K <= MAX_K = 2^17 - 1, and the launcher refuses larger K. Integer addition is
associative, so the result is the same for any tile shape, any M, any batch and any GPU:
the tiles only set speed. No split-K all the same (one program owns its output tile),
and `num_rows` is not specialised, so every M runs the same binary. On sm_80 and newer
tl.dot on int8 runs on the int8 tensor cores (mma m16n8k32); BLOCK_K = 128 reads whole
128-byte lines of each row.
"""
import torch
import triton
import triton.language as tl

from kernels._checks import check_contiguous, check_dim, check_dtype, check_rank, check_same_device
from kernels._launch import Launch, run_launches
from kernels.errors import KernelError
from kernels.linear import block_n

BLOCK_M = 64
BLOCK_K = 128
MAX_K = 2**17 - 1  # K * 2^14 <= 2^31 - 1: no int32 overflow even with every entry -128


@triton.jit(do_not_specialize=["num_rows"])
def _int8_matmul_kernel(
    a_ptr,
    b_ptr,
    output_ptr,
    num_rows,
    out_features,
    in_features,
    stride_a_row,
    stride_b_row,
    stride_output_row,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < num_rows
    col_mask = cols < out_features
    k_offsets = tl.arange(0, BLOCK_K)
    a_rows = a_ptr + rows.to(tl.int64)[:, None] * stride_a_row
    # The b tile is loaded transposed, [BLOCK_K, BLOCK_N], to feed the dot directly.
    b_cols = b_ptr + cols.to(tl.int64)[None, :] * stride_b_row

    accumulator = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
    for k_start in range(0, in_features, BLOCK_K):
        ks = k_start + k_offsets
        k_mask = ks < in_features
        # Masked entries load as 0 and add nothing to the integer sum.
        a_tile = tl.load(a_rows + ks[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0)
        b_tile = tl.load(b_cols + ks[:, None], mask=k_mask[:, None] & col_mask[None, :], other=0)
        accumulator = tl.dot(a_tile, b_tile, accumulator, out_dtype=tl.int32)

    output_offsets = rows.to(tl.int64)[:, None] * stride_output_row + cols[None, :]
    tl.store(output_ptr + output_offsets, accumulator, mask=row_mask[:, None] & col_mask[None, :])


def plan_int8_matmul(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, list[Launch]]:
    """Check the arguments, allocate the int32 [M, N] output and return it with its launch."""
    check_rank("a", a, 2, "[M, K]")
    check_rank("b", b, 2, "[N, K]")
    num_rows, in_features = a.shape
    out_features = b.shape[0]
    check_dim("b", b, 1, in_features, "a.shape[1], the inner dimension K")
    if in_features > MAX_K:
        raise KernelError(f"K ({in_features}) must be at most {MAX_K}, or the int32 sums could overflow")
    check_dtype("a", a, (torch.int8,))
    check_dtype("b", b, (torch.int8,))
    check_same_device("a", a, b=b)
    check_contiguous(a=a, b=b)

    output = torch.empty((num_rows, out_features), dtype=torch.int32, device=a.device)
    if output.numel() == 0:
        return output, []
    if in_features == 0:
        return output.zero_(), []
    tile_n = block_n(out_features)
    args = (a, b, output, num_rows, out_features, in_features, a.stride(0), b.stride(0), output.stride(0))
    constexprs = dict(BLOCK_M=BLOCK_M, BLOCK_N=tile_n, BLOCK_K=BLOCK_K)
    grid = (triton.cdiv(num_rows, BLOCK_M), triton.cdiv(out_features, tile_n))
    return output, [Launch(_int8_matmul_kernel, grid, args, constexprs)]


def int8_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b.T for int8 a [M, K] and b [N, K], exactly, as a new int32 [M, N] tensor."""
    output, launches = plan_int8_matmul(a, b)
    run_launches(launches)
    return output


def int8_matmul_reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PyTorch equivalent: torch._int_mm where its shape rules allow, else a float64 matmul.

    `torch._int_mm` wants M > 16 and K, N multiples of 8 (CUDA's rule; the CPU is laxer
    but one rule keeps the reference the same everywhere). The fallback is float64, not
    int64, because CUDA has no int64 matmul; it is exact all the same: every product and
    every partial sum is an integer below 2^31 < 2^53.
    """
    num_rows, in_features = a.shape
    out_features = b.shape[0]
    if num_rows > 16 and in_features % 8 == 0 and out_features % 8 == 0 and in_features > 0:
        return torch._int_mm(a, b.t().contiguous())
    return (a.double() @ b.double().t()).to(torch.int32)
