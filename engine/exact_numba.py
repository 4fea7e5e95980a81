"""The exact forward pass compiled for the CPU by numba: the same arithmetic as the torch ops
of `exact_ops` and `exact_attention`, bit for bit, in one call instead of ~450 small torch
ops (a step of the shipped model at one row: 0.55 ms in torch, about 30 us here). The
runner uses it for steps; `compress.frame_kernel` steps with it inside its own loop.

Why the bits agree: every dot product multiplies integers and accumulates them in int32 or
int64 (exact, in any order); every other operation is the torch op's IEEE basic operation
on the same dtype in the same order (float32 where torch computes in float32, float64 where
it promotes), and numba compiles without fast-math, so nothing is contracted into an FMA or
reordered. `tests/test_exact_numba.py` compares the two paths bitwise.

The step reads and writes the torch runner's own KV cache (numpy views of it), so prefill
(torch, batched) and steps (here) share one cache.
"""
from __future__ import annotations

import numpy as np
import torch
from numba import njit

from .exact_numba_attention import attend
from .exact_numba_ops import F32, F64, LN_EPS_SCALE, ONE32, gelu, layer_norm, linear_rows, quantize


@njit(cache=True)
def forward(tokens, start, lens, wte, wpe, ln, eps_2_40, qkv_w, qkv_s, qkv_b, proj_w, proj_s, proj_b, fc_w, fc_s,
            fc_b, out_w, out_s, out_b, has_bias, head_w, head_s, head_b, head_has_bias, kv_factor, gelu_table,
            exp_table, p_max, kv, kv_scale, logits):
    """ExactRunner.forward: row r feeds tokens[r, :lens[r]] (int64) at positions start[r]..
    (its keys before start[r] already cached) and gets the logits float32 of its last token
    (a row with lens 0 writes nothing and gets zeros). All rows' tokens go through each
    projection together, so a weight is read once per call, not once per row. Weights: ln
    [layer + 1, 4, width] (ln_1 weight, bias, ln_2 weight, bias; the last: ln_f twice); the
    projections' int8 weights [layer, out, in], scales and biases [layer, out]. kv int8
    [layer, row, 2, head, position, d], kv_scale float32 [layer, row, 2, head, position].
    Returns 0, or (having written nothing) 1 for positions out of range, 2 for token ids out
    of range."""
    layers, heads, d = qkv_w.shape[0], kv.shape[3], kv.shape[5]
    width, inner = wte.shape[1], fc_w.shape[1]
    total, fed = 0, 0
    for r in range(tokens.shape[0]):  # every value checked before anything is written
        if start[r] < 0 or lens[r] < 0 or lens[r] > tokens.shape[1] or start[r] + lens[r] > wpe.shape[0]:
            return 1
        for m in range(tokens.shape[1]):
            if tokens[r, m] < 0 or tokens[r, m] >= wte.shape[0]:
                return 2
        total += lens[r]
        fed += lens[r] > 0
    logits[:] = 0
    # Every fed token, row after row: its row, position and embedding; each row's last token.
    row_of = np.empty(total, dtype=np.int64)
    pos_of = np.empty(total, dtype=np.int64)
    last = np.empty(fed, dtype=np.int64)
    x = np.empty((total, width), dtype=np.float32)
    m, f = 0, 0
    for r in range(tokens.shape[0]):
        for i in range(lens[r]):
            row_of[m], pos_of[m] = r, start[r] + i
            for c in range(width):
                x[m, c] = wte[tokens[r, i], c] + wpe[start[r] + i, c]
            m += 1
        if lens[r] > 0:
            last[f] = m - 1
            f += 1
    h = np.empty((total, width), dtype=np.float32)
    y = np.empty((total, width), dtype=np.float32)
    qkv = np.empty((total, 3 * width), dtype=np.float32)
    hidden = np.empty((total, inner), dtype=np.float32)
    qrow = np.empty((total, max(width, inner)), dtype=np.int8)
    qi = np.empty((total, heads, d), dtype=np.int8)
    q_scale = np.empty((total, heads), dtype=np.float32)
    for layer in range(layers):
        for m in range(x.shape[0]):
            layer_norm(x[m], ln[layer, 0], ln[layer, 1], eps_2_40, h[m])
        linear_rows(h[: x.shape[0]], qrow, qkv_w[layer], qkv_s[layer], qkv_b[layer], has_bias, qkv)
        for m in range(x.shape[0]):  # q, k, v of every head, quantized per (part, head)
            r, p = row_of[m], pos_of[m]
            for part in range(3):
                for hd in range(heads):
                    seg = qkv[m, (part * heads + hd) * d : (part * heads + hd + 1) * d]
                    if part == 0:
                        q_scale[m, hd] = quantize(seg, qi[m, hd], ONE32)
                    else:
                        s = quantize(seg, kv[layer, r, part - 1, hd, p], F32(0.0))
                        kv_scale[layer, r, part - 1, hd, p] = s * kv_factor[part - 1]
        if layer == layers - 1:  # past the last K/V, only each row's last token matters
            x, qi, q_scale, row_of, pos_of = x[last], qi[last], q_scale[last], row_of[last], pos_of[last]
        count = x.shape[0]
        for m in range(count):
            attend(qi[m], q_scale[m], kv[layer, row_of[m]], kv_scale[layer, row_of[m]], pos_of[m], exp_table, p_max,
                   y[m])
        linear_rows(y[:count], qrow, proj_w[layer], proj_s[layer], proj_b[layer], has_bias, h[:count])
        for m in range(count):
            for c in range(width):
                x[m, c] = x[m, c] + h[m, c]
            layer_norm(x[m], ln[layer, 2], ln[layer, 3], eps_2_40, h[m])
        linear_rows(h[:count], qrow, fc_w[layer], fc_s[layer], fc_b[layer], has_bias, hidden[:count])
        for m in range(count):
            gelu(hidden[m], gelu_table)
        linear_rows(hidden[:count], qrow, out_w[layer], out_s[layer], out_b[layer], has_bias, h[:count])
        for m in range(count):
            for c in range(width):
                x[m, c] = x[m, c] + h[m, c]
    out = np.empty((fed, logits.shape[1]), dtype=np.float32)
    for m in range(fed):
        layer_norm(x[m], ln[layers, 0], ln[layers, 1], eps_2_40, h[m])
    linear_rows(h[:fed], qrow, head_w, head_s, head_b, head_has_bias, out)
    for m in range(fed):
        logits[row_of[m]] = out[m]
    return 0


class CompiledForward:
    """`ExactRunner.forward` on the CPU in one compiled call, over the runner's own weights,
    tables and KV cache (numpy views: the same memory)."""

    def __init__(self, runner) -> None:
        w, blocks = runner.weights, runner.weights.blocks

        def stacked(name: str, part: str) -> np.ndarray:
            def get(b):
                lin = getattr(b, name)
                value = getattr(lin, part)
                return value if value is not None else torch.zeros_like(lin.scale)

            return np.ascontiguousarray(np.stack([get(b).numpy() for b in blocks]))

        lns = [torch.stack([*b.ln_1, *b.ln_2]) for b in blocks] + [torch.stack([*w.ln_f, *w.ln_f])]
        has_bias = all(getattr(b, n).bias is not None for b in blocks for n in ("attn", "proj", "fc", "mlp_proj"))
        head = w.lm_head
        head_bias = head.bias if head.bias is not None else torch.zeros_like(head.scale)
        self._args = (
            w.wte.numpy(), w.wpe.numpy(), torch.stack(lns).numpy(), F64(w.eps * LN_EPS_SCALE),
            *(stacked(name, part) for name in ("attn", "proj", "fc", "mlp_proj") for part in ("weight", "scale", "bias")),
            has_bias, head.weight.numpy(), head.scale.numpy(), head_bias.numpy(), head.bias is not None,
            runner._kv_factor.view(2).numpy(), runner.gelu_table.numpy(), runner.exp_table.numpy(), runner.pv_max[0],
            runner.kv.numpy(), runner.kv_scale.numpy()[:, :, :, :, 0, :],
        )

    @property
    def args(self) -> tuple:
        """`forward`'s arguments between lens and logits: for kernels that step the model
        themselves (`compress.frame_kernel`)."""
        return self._args

    def __call__(self, tokens: np.ndarray, start: np.ndarray, lens: np.ndarray, logits: np.ndarray) -> int:
        """tokens int64 [rows, C], start and lens [rows] (cache rows 0..rows-1) -> logits
        [rows, vocab]; returns `forward`'s error code (0: done)."""
        return forward(tokens, start, lens, *self._args, logits)
