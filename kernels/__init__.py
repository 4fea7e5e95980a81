"""Triton kernels for the commaVQ GPT-2 world model, each next to a plain-PyTorch reference.

Ops (one per module):
    write_kv_cache           kv_cache_write.py     scatter new K/V rows into the paged cache
    paged_decode_attention   decode_attention.py   one query per sequence, flash-decoding splits
    paged_prefill_attention  prefill_attention.py  causal attention for a chunk of new queries
    fused_linear             linear.py             x @ W.T + bias, optional gelu_tanh, + residual
    layer_norm               layer_norm.py         row-wise LayerNorm with fp32 statistics
    int8_matmul              int8_matmul.py        int8 x int8 -> exact int32, for the exact numerics mode

Paged KV cache layout (per layer, one tensor for keys and one for values):
    [num_blocks, block_size, H, D]; token t of a sequence lives in block
    block_tables[seq, t // block_size] at offset t % block_size, i.e. at slot
    block_id * block_size + t % block_size.

The float kernels load fp32/fp16/bf16, compute in fp32 and store in the input dtype.
Launchers validate metadata only (`KernelError`, a ValueError, on misuse), size their
grids from shapes alone and never sync with the host, so they can run under
torch.compile and CUDA-graph capture. Each launcher is a `plan_*` function (checks, tiles,
grid: `Launch` records) plus a run; `kernels.aot` compiles those same records for NVIDIA
GPUs without a GPU (tests/test_aot_compile.py). Every op is batch invariant: a row's
result does not depend on the other rows. Without a GPU, set TRITON_INTERPRET=1 before importing
this package. `kernels.testing.build_paged_kv_cache` builds shuffled, NaN-poisoned paged
caches for tests.
"""
from kernels.decode_attention import paged_decode_attention, paged_decode_attention_reference
from kernels.errors import KernelError
from kernels.int8_matmul import int8_matmul, int8_matmul_reference
from kernels.kv_cache_write import write_kv_cache, write_kv_cache_reference
from kernels.layer_norm import layer_norm, layer_norm_reference
from kernels.linear import fused_linear, fused_linear_reference
from kernels.prefill_attention import paged_prefill_attention, paged_prefill_attention_reference

__all__ = [
    "KernelError",
    "fused_linear",
    "fused_linear_reference",
    "int8_matmul",
    "int8_matmul_reference",
    "layer_norm",
    "layer_norm_reference",
    "paged_decode_attention",
    "paged_decode_attention_reference",
    "paged_prefill_attention",
    "paged_prefill_attention_reference",
    "write_kv_cache",
    "write_kv_cache_reference",
]
