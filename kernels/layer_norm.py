"""LayerNorm over the last dimension, one row per program.

Layouts:
    x, output:     [M, N]   output in x's dtype
    weight, bias:  [N]

Statistics are computed in fp32 from the whole row held in registers (N <= a few
thousand here: the model width is 1024). Each row is normalised by its own program with
a reduction order fixed by N alone, so the result is batch invariant.
"""
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
)
from kernels._launch import Launch, run_launches


@triton.jit
def _layer_norm_kernel(
    x_ptr,
    weight_ptr,
    bias_ptr,
    output_ptr,
    num_features,
    stride_row,  # shared by output, which has x's shape and layout
    eps,
    BLOCK_N: tl.constexpr,
):
    row_start = tl.program_id(0).to(tl.int64) * stride_row
    cols = tl.arange(0, BLOCK_N)
    mask = cols < num_features
    x = tl.load(x_ptr + row_start + cols, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=0) / num_features
    # Padding columns must not add (0 - mean)^2 to the variance.
    centered = tl.where(mask, x - mean, 0.0)
    variance = tl.sum(centered * centered, axis=0) / num_features
    inverse_std = 1.0 / tl.sqrt(variance + eps)
    weight = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    output = centered * inverse_std * weight + bias
    tl.store(output_ptr + row_start + cols, output.to(output_ptr.dtype.element_ty), mask=mask)


def plan_layer_norm(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> tuple[torch.Tensor, list[Launch]]:
    """Check the arguments, allocate the output and return it with the launch that fills it."""
    check_rank("x", x, 2, "[M, N]")
    check_rank("weight", weight, 1, "[N]")
    check_rank("bias", bias, 1, "[N]")
    num_rows, num_features = x.shape
    check_dim("weight", weight, 0, num_features, "x.shape[1], the feature count")
    check_dim("bias", bias, 0, num_features, "x.shape[1], the feature count")
    check_dtype("x", x, FLOAT_DTYPES)
    check_same_dtype("x", x, weight=weight, bias=bias)
    check_same_device("x", x, weight=weight, bias=bias)
    check_contiguous(x=x, weight=weight, bias=bias)

    output = torch.empty_like(x)
    if output.numel() == 0:
        return output, []
    args = (x, weight, bias, output, num_features, x.stride(0), eps)
    constexprs = dict(BLOCK_N=triton.next_power_of_2(num_features))
    return output, [Launch(_layer_norm_kernel, (num_rows,), args, constexprs)]


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm of each row of x: (x - mean) / sqrt(var + eps) * weight + bias."""
    output, launches = plan_layer_norm(x, weight, bias, eps)
    run_launches(launches)
    return output


def layer_norm_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """Plain-PyTorch equivalent of `layer_norm`, computed in fp32."""
    normalized = torch.nn.functional.layer_norm(x.float(), (x.shape[1],), weight.float(), bias.float(), eps)
    return normalized.to(x.dtype)
