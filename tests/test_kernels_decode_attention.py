"""paged_decode_attention against its PyTorch reference, batch invariance and argument checks."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import KernelError, paged_decode_attention, paged_decode_attention_reference
from kernels.testing import build_paged_kv_cache

HEAD_DIMS = [16, 24, 32, 64]
BLOCK_SIZES = [4, 8, 16]


def context_length(block_size: int) -> st.SearchStrategy[int]:
    """1, exact multiples of the block size, one past them, or anything up to 64."""
    multiple = st.integers(1, 64 // block_size).map(lambda k: k * block_size)
    return st.one_of(st.just(1), multiple, multiple.map(lambda n: min(n + 1, 64)), st.integers(1, 64))


@st.composite
def decode_problems(draw: st.DrawFn) -> tuple[dict, int]:
    """make_inputs keyword arguments, and a split size."""
    block_size = draw(st.sampled_from(BLOCK_SIZES))
    batch = draw(st.integers(1, 4))
    context_lens = draw(st.lists(context_length(block_size), min_size=batch, max_size=batch))
    inputs = dict(
        context_lens=context_lens,
        num_heads=draw(st.integers(1, 3)),
        head_dim=draw(st.sampled_from(HEAD_DIMS)),
        block_size=block_size,
        extra_table_blocks=draw(st.integers(0, 2)),
        seed=draw(st.integers(0, 2**16)),
    )
    return inputs, block_size * draw(st.sampled_from([1, 2, 4]))


def make_inputs(
    context_lens: list[int],
    num_heads: int,
    head_dim: int,
    block_size: int,
    extra_table_blocks: int = 0,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    keys = [torch.randn(n, num_heads, head_dim, generator=generator) for n in context_lens]
    values = [torch.randn(n, num_heads, head_dim, generator=generator) for n in context_lens]
    max_blocks = max(math.ceil(n / block_size) for n in context_lens) + extra_table_blocks
    cache = build_paged_kv_cache(
        [k.to(device, dtype) for k in keys],
        [v.to(device, dtype) for v in values],
        block_size=block_size,
        max_blocks=max(max_blocks, 1),
        generator=generator,
    )
    query = torch.randn(len(context_lens), num_heads, head_dim, generator=generator).to(device, dtype)
    context = torch.tensor(context_lens, dtype=torch.int32, device=device)
    return query, cache.key_cache, cache.value_cache, cache.block_tables, context


@settings(max_examples=30, deadline=None)
@given(decode_problems())
def test_matches_reference(problem: tuple[dict, int]) -> None:
    inputs, split_size = problem
    query, key_cache, value_cache, block_tables, context_lens = make_inputs(**inputs)
    scale = inputs["head_dim"] ** -0.5

    output = paged_decode_attention(
        query, key_cache, value_cache, block_tables, context_lens, scale=scale, split_size=split_size
    )
    expected = paged_decode_attention_reference(
        query, key_cache, value_cache, block_tables, context_lens, scale=scale
    )
    torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-5)


def test_padding_rows_output_zeros() -> None:
    inputs = make_inputs([0, 5, 0], num_heads=2, head_dim=16, block_size=4)
    output = paged_decode_attention(*inputs, scale=0.25, split_size=4)
    assert not output.isnan().any()
    assert torch.equal(output[0], torch.zeros_like(output[0]))
    assert torch.equal(output[2], torch.zeros_like(output[2]))


@settings(max_examples=8, deadline=None)
@given(
    context_lens=st.lists(st.integers(0, 48), min_size=2, max_size=4),
    block_size=st.sampled_from([4, 8]),
    seed=st.integers(0, 2**16),
)
def test_batch_invariant(context_lens: list[int], block_size: int, seed: int) -> None:
    """A sequence's output is bit-identical alone, in a batch, and next to padding rows."""
    context_lens = [max(context_lens[0], 1)] + context_lens[1:] + [0]
    query, key_cache, value_cache, block_tables, lens = make_inputs(
        context_lens, 2, 32, block_size, extra_table_blocks=1, seed=seed
    )
    batched = paged_decode_attention(query, key_cache, value_cache, block_tables, lens, scale=0.2, split_size=16)
    for row in range(len(context_lens)):
        alone = paged_decode_attention(
            query[row : row + 1], key_cache, value_cache,
            block_tables[row : row + 1], lens[row : row + 1], scale=0.2, split_size=16,
        )
        assert torch.equal(alone[0], batched[row])
    # A wider block table (a longer sequence joined the batch) changes nothing either.
    wider_tables = torch.cat([block_tables, block_tables[:, :2]], dim=1).contiguous()
    wider = paged_decode_attention(query, key_cache, value_cache, wider_tables, lens, scale=0.2, split_size=16)
    assert torch.equal(wider, batched)


def _valid_args() -> dict:
    query, key_cache, value_cache, block_tables, context_lens = make_inputs([5, 9], 2, 16, 4)
    return dict(
        query=query, key_cache=key_cache, value_cache=value_cache,
        block_tables=block_tables, context_lens=context_lens,
    )


@pytest.mark.parametrize(
    ("name", "corrupt", "message"),
    [
        ("query", lambda t: t[0], "query must be 3-D"),
        ("key_cache", lambda t: t.double(), "key_cache has dtype"),
        ("query", lambda t: t.half(), "query has dtype|key_cache has dtype"),
        ("block_tables", lambda t: t.long(), "block_tables must have dtype"),
        ("context_lens", lambda t: t.float(), "context_lens must have dtype"),
        ("block_tables", lambda t: t.t().contiguous().t(), "block_tables must be contiguous"),
        ("value_cache", lambda t: t.transpose(2, 3), "value_cache shape|value_cache must be contiguous"),
        ("context_lens", lambda t: t.to("meta"), "context_lens is on meta"),
        ("context_lens", lambda t: t[:1], r"context_lens.shape\[0\]"),
        ("key_cache", lambda t: t[..., :8].contiguous(), "value_cache shape"),
    ],
)
def test_rejects_bad_arguments(name: str, corrupt, message: str) -> None:
    args = _valid_args()
    args[name] = corrupt(args[name])
    with pytest.raises(KernelError, match=message):
        paged_decode_attention(**args, scale=0.25)


def test_rejects_split_size_not_multiple_of_block_size() -> None:
    with pytest.raises(KernelError, match="multiple of the block size"):
        paged_decode_attention(**_valid_args(), scale=0.25, split_size=6)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_matches_reference_on_cuda(dtype: torch.dtype) -> None:
    context_lens = [1, 16, 17, 300, 2452, 0]
    inputs = make_inputs(context_lens, 16, 64, 16, extra_table_blocks=3, dtype=dtype, device="cuda")
    output = paged_decode_attention(*inputs, scale=0.125)
    expected = paged_decode_attention_reference(*inputs, scale=0.125)
    torch.testing.assert_close(output, expected, atol=2e-2, rtol=2e-2)
