"""Linear layer with a fused epilogue: y = act(x @ weight.T + bias) + residual.

Layouts:
    x:         [M, K]   one row per token
    weight:    [N, K]   nn.Linear layout (out features x in features)
    bias:      [N] or None
    residual:  [M, N] or None, added after the activation
    output:    [M, N]   in x's dtype; accumulation and epilogue run in fp32

One kernel serves every projection of the model: QKV (bias), attention output and MLP
c_proj (bias + residual), MLP c_fc (bias + gelu_tanh) and lm_head (no bias).

Batch invariance: the tiles depend on N and the dtype only (no split-K, no autotuning,
nothing keyed on M), and `num_rows` is not specialised by the JIT (M=1 would otherwise
become a compile-time constant and compile a different binary), so each output row is
reduced over K in the same order by the same machine code whatever the other rows are.
A row's result is therefore bit-identical whether it is computed alone, in a large batch
or next to padding rows.

Tiles: BLOCK_M = 64 keeps weight reuse reasonable for prefill; for a one-token decode the
idle tensor-core rows cost nothing because the weight stream, not the math, bounds the
time. A decode step (M=1) runs cdiv(N, BLOCK_N) programs, and only that many SMs pull
weights: BLOCK_N = 32 gives 32 programs for N = 1024 on a 132-SM H200. So BLOCK_N is 16
(the smallest tl.dot side) unless 32 still gives at least MIN_PROGRAMS programs; prefill,
with cdiv(M, 64) row tiles, has programs to spare either way.
"""
import math

import torch
import triton
import triton.language as tl

from kernels._checks import (
    FLOAT_DTYPES,
    check_contiguous,
    check_dim,
    check_dtype,
    check_rank,
    check_same_device,
    check_same_dtype,
    dot_precision,
)
from kernels._launch import Launch, run_launches
from kernels.errors import KernelError

BLOCK_M = 64
BLOCK_K = 64
# About the SM count of the GPUs this targets (H100/H200: 132, RTX 3090: 82).
MIN_PROGRAMS = 128
ACTIVATIONS = (None, "gelu_tanh")


def block_n(out_features: int) -> int:
    """Output-column tile: 32 where that still fills MIN_PROGRAMS programs at M=1, else 16."""
    return 32 if triton.cdiv(out_features, 32) >= MIN_PROGRAMS else 16


@triton.jit(do_not_specialize=["num_rows"])
def _fused_linear_kernel(
    x_ptr,
    weight_ptr,
    bias_ptr,
    residual_ptr,
    output_ptr,
    num_rows,
    out_features,
    in_features,
    stride_x_row,
    stride_weight_row,
    stride_output_row,  # shared by residual, which has the output's shape and layout
    HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < num_rows
    col_mask = cols < out_features
    k_offsets = tl.arange(0, BLOCK_K)
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * stride_x_row
    # The weight tile is loaded transposed, [BLOCK_K, BLOCK_N], to feed the dot directly.
    weight_cols = weight_ptr + cols.to(tl.int64)[None, :] * stride_weight_row

    accumulator = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k_start in range(0, in_features, BLOCK_K):
        ks = k_start + k_offsets
        k_mask = ks < in_features
        x_tile = tl.load(x_rows + ks[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        weight_tile = tl.load(weight_cols + ks[:, None], mask=k_mask[:, None] & col_mask[None, :], other=0.0)
        accumulator = tl.dot(x_tile, weight_tile, accumulator, input_precision=DOT_PRECISION)

    if HAS_BIAS:
        accumulator += tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    if ACTIVATION == "gelu_tanh":
        # 0.5 * (1 + tanh(u)) == sigmoid(2u): same function as GPT-2's gelu_new, without
        # the cancellation of 1 + tanh(u) for negative u.
        inner = 0.7978845608028654 * (accumulator + 0.044715 * accumulator * accumulator * accumulator)
        accumulator = accumulator / (1.0 + tl.exp(-2.0 * inner))
    output_offsets = rows.to(tl.int64)[:, None] * stride_output_row + cols[None, :]
    tile_mask = row_mask[:, None] & col_mask[None, :]
    if HAS_RESIDUAL:
        accumulator += tl.load(residual_ptr + output_offsets, mask=tile_mask, other=0.0).to(tl.float32)
    tl.store(output_ptr + output_offsets, accumulator.to(output_ptr.dtype.element_ty), mask=tile_mask)


def plan_fused_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    activation: str | None = None,
    residual: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[Launch]]:
    """Check the arguments, allocate the [M, N] output and return it with the launch that fills it."""
    check_rank("x", x, 2, "[M, K]")
    check_rank("weight", weight, 2, "[N, K]")
    num_rows, in_features = x.shape
    out_features = weight.shape[0]
    check_dim("weight", weight, 1, in_features, "x.shape[1], the input features")
    if activation not in ACTIVATIONS:
        raise KernelError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    check_dtype("x", x, FLOAT_DTYPES)
    optional = {}
    if bias is not None:
        check_rank("bias", bias, 1, "[N]")
        check_dim("bias", bias, 0, out_features, "weight.shape[0], the output features")
        optional["bias"] = bias
    if residual is not None:
        check_rank("residual", residual, 2, "[M, N]")
        check_dim("residual", residual, 0, num_rows, "x.shape[0], the number of rows")
        check_dim("residual", residual, 1, out_features, "weight.shape[0], the output features")
        optional["residual"] = residual
    check_same_dtype("x", x, weight=weight, **optional)
    check_same_device("x", x, weight=weight, **optional)
    check_contiguous(x=x, weight=weight, **optional)

    output = torch.empty((num_rows, out_features), dtype=x.dtype, device=x.device)
    if output.numel() == 0:
        return output, []
    tile_n = block_n(out_features)
    args = (
        x,
        weight,
        # Unused pointers (flag False) still need a tensor argument; the output stands in.
        bias if bias is not None else output,
        residual if residual is not None else output,
        output,
        num_rows,
        out_features,
        in_features,
        x.stride(0),
        weight.stride(0),
        output.stride(0),
    )
    constexprs = dict(
        HAS_BIAS=bias is not None,
        ACTIVATION=activation,
        HAS_RESIDUAL=residual is not None,
        BLOCK_M=BLOCK_M,
        BLOCK_N=tile_n,
        BLOCK_K=BLOCK_K,
        DOT_PRECISION=dot_precision(x.dtype),
    )
    grid = (triton.cdiv(num_rows, BLOCK_M), triton.cdiv(out_features, tile_n))
    return output, [Launch(_fused_linear_kernel, grid, args, constexprs)]


def fused_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    activation: str | None = None,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """act(x @ weight.T + bias) + residual, returned as a new [M, N] tensor in x's dtype."""
    output, launches = plan_fused_linear(x, weight, bias, activation=activation, residual=residual)
    run_launches(launches)
    return output


def gelu_tanh_reference(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's gelu_new, written out: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def fused_linear_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    activation: str | None = None,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """Plain-PyTorch equivalent of `fused_linear`, computed in fp32."""
    result = x.float() @ weight.float().T
    if bias is not None:
        result = result + bias.float()
    if activation == "gelu_tanh":
        result = gelu_tanh_reference(result)
    if residual is not None:
        result = result + residual.float()
    return result.to(x.dtype)
