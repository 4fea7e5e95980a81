"""paged_prefill_attention against its PyTorch reference, chunking consistency and argument checks."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import (
    KernelError,
    paged_decode_attention,
    paged_prefill_attention,
    paged_prefill_attention_reference,
)
from kernels.prefill_attention import plan_paged_prefill_attention
from kernels.testing import build_paged_kv_cache


def make_inputs(
    prefix_lens: list[int],
    query_lens: list[int],
    chunk_len: int,
    num_heads: int,
    head_dim: int,
    block_size: int,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
) -> tuple[torch.Tensor, ...]:
    """Cache holds prefix + chunk K/V per sequence; queries are padded to chunk_len."""
    generator = torch.Generator().manual_seed(seed)
    totals = [p + q for p, q in zip(prefix_lens, query_lens)]
    keys = [torch.randn(n, num_heads, head_dim, generator=generator).to(device, dtype) for n in totals]
    values = [torch.randn(n, num_heads, head_dim, generator=generator).to(device, dtype) for n in totals]
    max_blocks = max(1, max(math.ceil(n / block_size) for n in totals))
    cache = build_paged_kv_cache(keys, values, block_size=block_size, max_blocks=max_blocks + 1, generator=generator)
    query = torch.randn(len(totals), chunk_len, num_heads, head_dim, generator=generator).to(device, dtype)
    prefix, lengths = int32(prefix_lens, device), int32(query_lens, device)
    return query, cache.key_cache, cache.value_cache, cache.block_tables, prefix, lengths


def int32(values: list[int], device: str = "cpu") -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int32, device=device)


@st.composite
def prefill_problems(draw: st.DrawFn) -> dict:
    block_size = draw(st.sampled_from([4, 8, 16]))
    batch = draw(st.integers(1, 3))
    chunk_len = draw(st.integers(1, 20))
    # Prefixes of 0, exact block multiples, one past them, or anything.
    multiple = st.integers(0, 40 // block_size).map(lambda k: k * block_size)
    prefix = st.one_of(st.just(0), multiple, multiple.map(lambda n: n + 1), st.integers(0, 40))
    return dict(
        prefix_lens=draw(st.lists(prefix, min_size=batch, max_size=batch)),
        query_lens=draw(st.lists(st.integers(0, chunk_len), min_size=batch, max_size=batch)),
        chunk_len=chunk_len,
        num_heads=draw(st.integers(1, 2)),
        head_dim=draw(st.sampled_from([16, 24, 32, 64])),
        block_size=block_size,
        seed=draw(st.integers(0, 2**16)),
    )


@settings(max_examples=25, deadline=None)
@given(prefill_problems())
def test_matches_reference(problem: dict) -> None:
    inputs = make_inputs(**problem)
    scale = problem["head_dim"] ** -0.5
    output = paged_prefill_attention(*inputs, scale=scale)
    expected = paged_prefill_attention_reference(*inputs, scale=scale)
    torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-5)


def test_padding_queries_output_zeros() -> None:
    inputs = make_inputs([3, 0, 8], [2, 0, 5], 7, 2, 16, 4)
    output = paged_prefill_attention(*inputs, scale=0.25)
    assert not output.isnan().any()
    assert torch.equal(output[0, 2:], torch.zeros_like(output[0, 2:]))
    assert torch.equal(output[1], torch.zeros_like(output[1]))
    assert torch.equal(output[2, 5:], torch.zeros_like(output[2, 5:]))


def test_chunked_prefill_matches_one_shot() -> None:
    """Prefilling 70 tokens as chunks of 30 + 40 gives the one-shot result (crosses query tiles)."""
    query, key_cache, value_cache, block_tables, _, _ = make_inputs([0], [70], 70, 2, 32, 8)
    cache = (key_cache, value_cache, block_tables)
    one_shot = paged_prefill_attention(query, *cache, int32([0]), int32([70]), scale=0.2)
    first = paged_prefill_attention(query[:, :30].contiguous(), *cache, int32([0]), int32([30]), scale=0.2)
    second = paged_prefill_attention(query[:, 30:].contiguous(), *cache, int32([30]), int32([40]), scale=0.2)
    torch.testing.assert_close(torch.cat([first, second], dim=1), one_shot, atol=1e-6, rtol=1e-6)


def test_single_query_chunk_agrees_with_decode() -> None:
    query, key_cache, value_cache, block_tables, prefix_lens, query_lens = make_inputs([12, 31], [1, 1], 1, 2, 32, 8)
    prefill = paged_prefill_attention(query, key_cache, value_cache, block_tables, prefix_lens, query_lens, scale=0.2)
    decode = paged_decode_attention(
        query[:, 0].contiguous(), key_cache, value_cache, block_tables, prefix_lens + 1, scale=0.2, split_size=16
    )
    torch.testing.assert_close(prefill[:, 0], decode, atol=1e-5, rtol=1e-5)


def test_rows_bit_identical_across_batch_sizes() -> None:
    """A sequence's output alone equals its output next to other sequences (float32 tiles)."""
    inputs = make_inputs([0, 21, 5], [40, 17, 33], 40, 2, 64, 8, seed=3)
    query, key_cache, value_cache, block_tables, prefix_lens, query_lens = inputs
    batched = paged_prefill_attention(*inputs, scale=0.125)
    for b in range(3):
        alone = paged_prefill_attention(
            query[b : b + 1], key_cache, value_cache, block_tables[b : b + 1].contiguous(),
            prefix_lens[b : b + 1], query_lens[b : b + 1], scale=0.125,
        )
        assert torch.equal(alone[0], batched[b]), f"sequence {b} differs alone"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tiles_come_from_the_dtype_not_the_batch(dtype: torch.dtype) -> None:
    plans = []
    for batch, chunk in ((1, 2560), (8, 2560), (3, 17)):
        cache = torch.empty(100, 16, 16, 64, dtype=dtype, device="meta")
        lengths = torch.empty(batch, dtype=torch.int32, device="meta")
        tables = torch.empty(batch, 7, dtype=torch.int32, device="meta")
        query = torch.empty(batch, chunk, 16, 64, dtype=dtype, device="meta")
        _, [launch] = plan_paged_prefill_attention(query, cache, cache, tables, lengths, lengths, scale=0.125)
        plans.append(launch.constexprs)
    assert plans[0] == plans[1] == plans[2]
    assert (plans[0]["BLOCK_Q"], plans[0]["BLOCK_KV"]) == ((16, 64) if dtype == torch.float32 else (64, 64))


def _valid_args() -> dict:
    names = ("query", "key_cache", "value_cache", "block_tables", "prefix_lens", "query_lens")
    return dict(zip(names, make_inputs([4, 9], [3, 2], 3, 2, 16, 4)))


@pytest.mark.parametrize(
    ("name", "corrupt", "message"),
    [
        ("query", lambda t: t[0], "query must be 4-D"),
        ("value_cache", lambda t: t.double(), "value_cache has dtype"),
        ("prefix_lens", lambda t: t.long(), "prefix_lens must have dtype"),
        ("query_lens", lambda t: t[:1], r"query_lens.shape\[0\]"),
        ("query", lambda t: t.transpose(1, 2).contiguous().transpose(1, 2), "query must be contiguous"),
        ("block_tables", lambda t: t.to("meta"), "block_tables is on meta"),
        ("key_cache", lambda t: t[:, :, :1].contiguous(), "value_cache shape"),
    ],
)
def test_rejects_bad_arguments(name: str, corrupt, message: str) -> None:
    args = _valid_args()
    args[name] = corrupt(args[name])
    with pytest.raises(KernelError, match=message):
        paged_prefill_attention(**args, scale=0.25)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_matches_reference_on_cuda(dtype: torch.dtype) -> None:
    inputs = make_inputs([0, 16, 1000], [300, 129, 129], 300, 16, 64, 16, dtype=dtype, device="cuda")
    output = paged_prefill_attention(*inputs, scale=0.125)
    expected = paged_prefill_attention_reference(*inputs, scale=0.125)
    torch.testing.assert_close(output, expected, atol=2e-2, rtol=2e-2)
