"""`exact_ops.linear`, `gelu` and `layer_norm` (and the runner's quantization of q, k, v)
for the CPU, with the same signatures and bits: the elementwise passes around the int8
matmul (row quantization, the float32 epilogue), GELU's table lookups and LayerNorm's
passes each run as one compiled pass (`exact_numba_ops`) instead of four to a dozen torch
ops. The runner picks these on the CPU (in a gpt2m-width prefill the torch ops' passes had
been a third of the time, docs/BENCHMARKS.md); tests compare them with `exact_ops` bitwise.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import exact_numba_ops as kernels
from .exact_numba_ops import LN_EPS_SCALE
from .exact_ops import gelu as reference_gelu
from .exact_ops import int_matmul
from .exact_ops import layer_norm as reference_layer_norm
from .exact_ops import linear as reference_linear
from .exact_ops import quantize_heads as reference_quantize_heads
from .quantize import QuantizedLinear


def linear(x: Tensor, lin: QuantizedLinear, path: str | None = None, out: Tensor | None = None) -> Tensor:
    """exact_ops.linear for float32 [M, K] CPU rows (other shapes take it as is)."""
    if x.dim() != 2 or x.device.type != "cpu":
        return reference_linear(x, lin, path, out=out)
    x = x.contiguous()
    q = torch.empty(x.shape, dtype=torch.int8)
    xs = torch.empty(x.shape[0])
    kernels.quantize_all(x.numpy(), q.numpy(), xs.numpy())
    acc = int_matmul(q, lin.weight, path)
    out = torch.empty(acc.shape) if out is None else out
    bias = lin.scale if lin.bias is None else lin.bias  # unread without a bias
    kernels.rescale_all(acc.numpy(), xs.numpy(), lin.scale.numpy(), bias.numpy(), lin.bias is not None, out.numpy())
    return out


def gelu(x: Tensor, table: Tensor) -> Tensor:
    """exact_ops.gelu, in place for a contiguous CPU tensor (its result is x)."""
    if x.device.type != "cpu" or not x.is_contiguous():
        return reference_gelu(x, table)
    kernels.gelu(x.view(-1).numpy(), table.numpy())
    return x


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """exact_ops.layer_norm for float32 [M, width] CPU rows (other shapes take it as is)."""
    if x.dim() != 2 or x.device.type != "cpu":
        return reference_layer_norm(x, weight, bias, eps)
    out = torch.empty(x.shape)
    kernels.layer_norm_all(x.contiguous().numpy(), weight.numpy(), bias.numpy(), eps * LN_EPS_SCALE, out.numpy())
    return out


def quantize_heads(qkv: Tensor, dead_scale: Tensor, kv_factor: Tensor, vals: Tensor, kv_scale: Tensor) -> Tensor:
    """exact_ops.quantize_heads in one compiled pass (vals and kv_scale contiguous)."""
    if qkv.device.type != "cpu" or not (vals.is_contiguous() and kv_scale.is_contiguous()):
        return reference_quantize_heads(qkv, dead_scale, kv_factor, vals, kv_scale)
    rows, chunk, _, heads, _ = qkv.shape
    q_scale = torch.empty(rows, chunk, heads, 1)
    kernels.quantize_heads(qkv.reshape(rows * chunk, *qkv.shape[2:]).contiguous().numpy(),
                           dead_scale.view(3).numpy(), kv_factor.view(2).numpy(), vals.numpy(),
                           q_scale.view(rows * chunk, heads).numpy(), kv_scale.view(2, rows, heads, chunk).numpy())
    return q_scale
