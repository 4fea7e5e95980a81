"""Exact integer numerics, the operations: integer matmuls on every path within their proven
bounds, row quantization, LayerNorm's exact sums, and the tables against library functions."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import exact_attention as attn
from engine import exact_numba_ops
from engine import exact_ops as ops
from engine.errors import EngineError
from engine.quantize import TINY, quantize_weight

# --- integer matmul and its bounds ------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(m=st.integers(1, 40), k=st.integers(1, 2200), n=st.integers(1, 24), seed=st.integers(0, 2**31))
def test_int_matmul_paths_agree_with_numpy(m: int, k: int, n: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(-127, 128, (m, k), generator=g, dtype=torch.int8)
    b = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    want = a.numpy().astype(np.int64) @ b.numpy().astype(np.int64).T
    for path in ops.MATMUL_PATHS:
        got = ops.int_matmul(a, b, path)
        assert got.dtype == torch.int32 and np.array_equal(got.numpy(), want), path
        out = torch.full((m + 1, n), 7, dtype=torch.int32)
        into = ops.int_matmul(a, b, path, out=out[:m])  # into a given (contiguous) block
        assert into.data_ptr() == out.data_ptr() and np.array_equal(out[:m].numpy(), want), path
        assert torch.all(out[m] == 7), path


@settings(max_examples=20, deadline=None)
@given(signs=st.lists(st.sampled_from([-127, 127]), min_size=1, max_size=64), k=st.sampled_from([1040, 1041, 4096]))
def test_int_matmul_extreme_values_stay_exact(signs: list[int], k: int) -> None:
    """All-max weights and activations reach the proven bound 127**2 * K exactly, on every path."""
    row = torch.tensor(signs * (k // len(signs) + 1), dtype=torch.int8)[:k]
    a = torch.stack([row, -row, torch.full_like(row, 127)])
    want = a.numpy().astype(np.int64) @ a.numpy().astype(np.int64).T
    assert np.abs(want).max() == 127 * 127 * k <= 2**31 - 1
    for path in ops.MATMUL_PATHS:
        assert np.array_equal(ops.int_matmul(a, a, path).numpy(), want), path


def test_int_matmul_refuses_bad_input() -> None:
    with pytest.raises(EngineError, match="int8"):
        ops.int_matmul(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.int8))
    with pytest.raises(EngineError, match="overflow"):
        ops.int_matmul(*(torch.zeros(1, ops.INT32_MAX_K + 1, dtype=torch.int8),) * 2)
    with pytest.raises(EngineError, match="path"):
        ops.int_matmul(*(torch.zeros(1, 4, dtype=torch.int8),) * 2, path="bogus")


@pytest.mark.parametrize("n_positions", [258, 2580])
def test_pv_bound_is_exact_at_worst_case(n_positions: int) -> None:
    """Every key at the largest weight and every value at 127: the PV sum hits its bound and
    the chosen dtype still holds it exactly; the attention output is then 127 * v_scale."""
    p_max, dtype = attn.prob_max(n_positions)
    assert p_max * 127 * n_positions < (2**24 if dtype == torch.float32 else 2**53)
    p = torch.full((2, n_positions), float(p_max), dtype=dtype)
    v = torch.full((n_positions, 3), 127.0, dtype=dtype)
    assert torch.equal((p @ v).long(), torch.full((2, 3), p_max * 127 * n_positions))
    q = torch.full((1, 2, 8), 127.0)
    k = torch.full((1, n_positions, 8), 127.0)
    scale = torch.full((1, 1, n_positions), 0.5)
    out = attn.attention(q, torch.ones(1, 2, 1), k, scale * attn.key_factor(8), k.to(dtype), scale, None, n_positions,
                         attn.exp_table(), (p_max, dtype))
    torch.testing.assert_close(out, torch.full_like(out, 63.5), rtol=1e-6, atol=0)


@settings(max_examples=30, deadline=None)
@given(width=st.integers(1, 300), peak=st.sampled_from([1e-30, 1e-3, 1.0, 3e4, 3e38]), seed=st.integers(0, 2**31))
def test_quantize_rows_bound_and_error(width: int, peak: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(4, width, generator=g, dtype=torch.float64) * 2 - 1) * peak
    x[1] = 0.0
    x[2, 0] = peak  # a row holding the extreme value exactly
    x = x.float()
    q, scale = ops.quantize_rows(x)
    assert q.dtype == torch.int8 and scale.shape == (4, 1)
    assert q.abs().max() <= 127 and torch.all(q[1] == 0) and scale[1] == 0
    # Half a step of error, or the row is flushed to zero explicitly (below TINY).
    bound = torch.clamp(scale.double() * 0.5001, min=TINY)
    assert torch.all((q.double() * scale.double() - x.double()).abs() <= bound)
    # The float form holds the same integers; a dead row takes the given scale.
    floats, dead = ops.quantize_rows(x, ints=False, dead_scale=torch.ones(1))
    assert floats.dtype == torch.float32 and torch.equal(floats, q.float())
    assert dead[1] == 1 and torch.equal(dead, torch.where(scale > 0, scale, 1.0))


def test_quantize_weight_matches_numpy() -> None:
    w = torch.randn(6, 50, generator=torch.Generator().manual_seed(0))
    w[3] = 0.0
    q, scale = quantize_weight(w)
    peak = np.abs(w.numpy().astype(np.float64)).max(axis=1)
    want_scale = np.where(peak > 0, peak / 127, 0).astype(np.float32)
    assert np.array_equal(scale.numpy(), want_scale)
    safe = np.where(want_scale > 0, want_scale, 1).astype(np.float64)
    assert np.array_equal(q.numpy(), np.round(w.numpy().astype(np.float64) / safe[:, None]).astype(np.int8))


def test_layer_norm_exact_sums_at_the_width_limit() -> None:
    width = 2 ** (53 - 2 * ops.LN_BITS)
    x = torch.where(torch.arange(width) % 3 == 0, 1.0, -1.0)[None].repeat(2, 1) * torch.tensor([[1e3], [1e-3]])
    got = ops.layer_norm(x, torch.ones(width), torch.zeros(width), 1e-5)
    want = torch.nn.functional.layer_norm(x.double(), (width,), eps=1e-5)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(EngineError, match="width"):
        ops.layer_norm(torch.ones(1, width + 1), torch.ones(width + 1), torch.zeros(width + 1), 1e-5)


def test_tables_match_library_functions() -> None:
    x = torch.linspace(-10, 10, 4001)
    ref = torch.nn.functional.gelu(x.double(), approximate="tanh")
    assert (ops.gelu(x, ops.gelu_table()).double() - ref).abs().max() < 1e-3
    steps_ = np.arange(attn.EXP_ONE_BITS * 2**attn.EXP_STEP_BITS + 1) / -(2.0**attn.EXP_STEP_BITS)
    assert np.abs(ops.exp2_f64(steps_) / np.exp2(steps_) - 1).max() < 1e-14
    table = attn.exp_table().numpy()
    assert table[0] == 2**20 and table[-1] == 0 and np.all(np.diff(table) <= 0)


def test_gelu_passes_large_values_through_exactly() -> None:
    """The lerp pass-through gives the bits of `where(x > 8, x, table[i])`, at 8 and around it."""
    eight = torch.tensor(8.0)
    edges = [8.0, float(torch.nextafter(eight, torch.tensor(9.0))), float(torch.nextafter(eight, torch.tensor(0.0))),
             8.0 - 2.0**-11, 8.0 + 2.0**-11, 0.0, -0.0, 1e-40, -1e-40, 3e38, -3e38, 16.5, -8.0, -20.0]
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.tensor(edges), torch.linspace(-12, 12, 200001), torch.randn(100000, generator=g) * 10])
    table = ops.gelu_table()
    limit = ops.GELU_RANGE * 2**ops.GELU_STEP_BITS
    idx = (x * 2.0**ops.GELU_STEP_BITS + (limit + 0.5)).clamp(0, 2 * limit).long()
    want = torch.where(x > ops.GELU_RANGE, x, table[idx])
    assert torch.equal(ops.gelu(x, table).view(torch.int32), want.view(torch.int32))
    compiled = x.clone()  # the CPU's compiled pass (exact_numba_ops.gelu), in place
    exact_numba_ops.gelu(compiled.numpy(), table.numpy())
    assert torch.equal(compiled.view(torch.int32), want.view(torch.int32))


@pytest.mark.parametrize("path", ops.MATMUL_PATHS[::2])  # the CPU's int_mm and the float64 fallback
def test_integer_scores_equal_the_float_matmul(path: str) -> None:
    g = torch.Generator().manual_seed(1)
    q = torch.randint(-127, 128, (2, 3, 70, 32), generator=g).float()
    k = torch.randint(-127, 128, (2, 3, 90, 32), generator=g).float()
    assert torch.equal(attn.integer_scores(q, k, path), q @ k.transpose(-1, -2))
    as_ints = torch.empty(2, 3, 70, 90, dtype=torch.int32)  # the CPU prefill's workspace: the matmuls' own output
    assert attn.integer_scores(q.to(torch.int8), k.to(torch.int8), path, out=as_ints) is as_ints
    assert torch.equal(as_ints.float(), q @ k.transpose(-1, -2))


def test_attention_paths_agree_bit_for_bit(monkeypatch) -> None:
    """Precomputed scores, a strided `out` and any block size give the plain call's bits."""
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randint(-127, 128, (2, 3, 150, 16), generator=g).float() for _ in range(3))
    q_scale = torch.rand(2, 3, 150, 1, generator=g) * 0.05
    k_mult = torch.rand(2, 3, 1, 150, generator=g) * attn.key_factor(16) * 0.05
    v_scale = torch.rand(2, 3, 1, 150, generator=g) * 0.05
    mask = attn.causal_mask(torch.arange(150), 150)
    args = (q, q_scale, k, k_mult, v, v_scale, mask, 0, attn.exp_table(), attn.prob_max(150))
    want = attn.attention(*args)
    out = torch.empty(2, 150, 3, 16).transpose(1, 2)
    assert torch.equal(attn.attention(*args, out=out, scores=attn.integer_scores(q, k)), want)
    assert torch.equal(out, want)
    monkeypatch.setattr(attn, "ATTENTION_BLOCK", 23)
    assert torch.equal(attn.attention(*args), want)
    # The int8 cache itself as k and v (the CPU's prefills): int8 matmuls, the same bits.
    int8_args = (q, q_scale, k.to(torch.int8), k_mult, v.to(torch.int8), *args[5:])
    assert torch.equal(attn.attention(*int8_args), want)
    monkeypatch.setattr(attn, "ATTENTION_BLOCK", 64)
    assert torch.equal(attn.attention(*int8_args), want)


@pytest.mark.parametrize("keys", [1, 2580])
def test_integer_pv_is_exact_at_its_bounds(keys: int) -> None:
    """P up to 2**14 - 1 (gpt2m's float64 case) against values +-127: the two int8 matmuls
    on P's 7-bit digits give the float64 matmul's integers, at the largest sums too."""
    g = torch.Generator().manual_seed(keys)
    p = torch.randint(0, 2**14, (3, 5, keys), generator=g).float()
    p[0] = 2**14 - 1
    v = torch.randint(-127, 128, (3, keys, 8), generator=g, dtype=torch.int8)
    v[0] = 127
    digits = p.to(torch.int32)
    got = attn._integer_pv(torch.cat([digits >> 7, digits & 127], dim=1).to(torch.int8), v)
    assert got.dtype == torch.float64
    assert torch.equal(got, torch.bmm(p.double(), v.double()))
    assert got[0, 0, 0] == (2**14 - 1) * 127 * keys


def test_quantize_rows_into_a_strided_out() -> None:
    x = torch.randn(4, 5, 3, 32, generator=torch.Generator().manual_seed(3))
    x[1, 2] = 0.0
    laid = torch.empty(3, 4, 5, 32).permute(1, 2, 0, 3)
    q, scale = ops.quantize_rows(x, ints=False, out=laid)
    want_q, want_scale = ops.quantize_rows(x, ints=False)
    assert q.data_ptr() == laid.data_ptr() and torch.equal(q, want_q) and torch.equal(scale, want_scale)
