"""write_kv_cache against its PyTorch reference (exact: it is a copy) and argument checks."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import KernelError, write_kv_cache, write_kv_cache_reference


@st.composite
def write_problems(draw: st.DrawFn) -> dict:
    num_blocks = draw(st.integers(1, 6))
    block_size = draw(st.sampled_from([1, 4, 5, 16]))
    num_slots = num_blocks * block_size
    num_tokens = draw(st.integers(1, min(12, num_slots)))
    # Distinct real slots in any order, some rows replaced by padding (-1).
    slots = draw(st.permutations(range(num_slots)))[:num_tokens]
    padding = draw(st.lists(st.booleans(), min_size=num_tokens, max_size=num_tokens))
    return dict(
        slots=[-1 if pad else slot for slot, pad in zip(slots, padding)],
        num_blocks=num_blocks,
        block_size=block_size,
        num_heads=draw(st.integers(1, 4)),
        head_dim=draw(st.sampled_from([16, 24, 64])),
        index_dtype=draw(st.sampled_from([torch.int32, torch.int64])),
        seed=draw(st.integers(0, 2**16)),
    )


def make_inputs(
    slots: list[int],
    num_blocks: int,
    block_size: int,
    num_heads: int,
    head_dim: int,
    index_dtype: torch.dtype,
    seed: int,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    key = torch.randn(len(slots), num_heads, head_dim, generator=generator)
    value = torch.randn(len(slots), num_heads, head_dim, generator=generator)
    # Pre-existing cache contents that must survive wherever no slot points.
    key_cache = torch.randn(num_blocks, block_size, num_heads, head_dim, generator=generator)
    value_cache = torch.randn(num_blocks, block_size, num_heads, head_dim, generator=generator)
    tensors = [t.to(device, dtype) for t in (key, value, key_cache, value_cache)]
    return *tensors, torch.tensor(slots, dtype=index_dtype, device=device)


@settings(max_examples=30, deadline=None)
@given(write_problems())
def test_matches_reference(problem: dict) -> None:
    key, value, key_cache, value_cache, slot_mapping = make_inputs(**problem)
    expected_keys, expected_values = key_cache.clone(), value_cache.clone()
    write_kv_cache_reference(key, value, expected_keys, expected_values, slot_mapping)
    write_kv_cache(key, value, key_cache, value_cache, slot_mapping)
    assert torch.equal(key_cache, expected_keys)
    assert torch.equal(value_cache, expected_values)


def test_padding_rows_leave_cache_untouched() -> None:
    key, value, key_cache, value_cache, _ = make_inputs([0, 1], 2, 4, 2, 16, torch.int32, seed=0)
    before = key_cache.clone(), value_cache.clone()
    write_kv_cache(key, value, key_cache, value_cache, torch.tensor([-1, -7], dtype=torch.int32))
    assert torch.equal(key_cache, before[0])
    assert torch.equal(value_cache, before[1])


def _valid_args() -> dict:
    names = ("key", "value", "key_cache", "value_cache", "slot_mapping")
    return dict(zip(names, make_inputs([3, -1, 5], 2, 4, 2, 16, torch.int64, seed=0)))


@pytest.mark.parametrize(
    ("name", "corrupt", "message"),
    [
        ("key", lambda t: t[0], "key must be 3-D"),
        ("value", lambda t: t[:2], "value shape"),
        ("key_cache", lambda t: t.reshape(8, 2, 16), "key_cache must be 4-D"),
        ("value_cache", lambda t: t.double(), "value_cache has dtype"),
        ("slot_mapping", lambda t: t.float(), "slot_mapping must have dtype"),
        ("slot_mapping", lambda t: t[:2], r"slot_mapping.shape\[0\]"),
        ("key_cache", lambda t: t.transpose(0, 1).contiguous().transpose(0, 1), "key_cache must be contiguous"),
        ("value", lambda t: t.to("meta"), "value is on meta"),
    ],
)
def test_rejects_bad_arguments(name: str, corrupt, message: str) -> None:
    args = _valid_args()
    args[name] = corrupt(args[name])
    with pytest.raises(KernelError, match=message):
        write_kv_cache(**args)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_matches_reference_on_cuda(dtype: torch.dtype) -> None:
    slots = [37, -1, 0, 1023, 500]
    key, value, key_cache, value_cache, slot_mapping = make_inputs(
        slots, 64, 16, 16, 64, torch.int32, seed=0, dtype=dtype, device="cuda"
    )
    expected_keys, expected_values = key_cache.clone(), value_cache.clone()
    write_kv_cache_reference(key, value, expected_keys, expected_values, slot_mapping)
    write_kv_cache(key, value, key_cache, value_cache, slot_mapping)
    assert torch.equal(key_cache, expected_keys)
    assert torch.equal(value_cache, expected_values)
