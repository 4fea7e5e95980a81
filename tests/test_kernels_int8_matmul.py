"""int8_matmul: exact int32 results against int64 and torch._int_mm references, at extremes and edges."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import KernelError, int8_matmul, int8_matmul_reference
from kernels.int8_matmul import BLOCK_K, MAX_K


def random_int8(rows: int, cols: int, generator: torch.Generator, device: str = "cpu") -> torch.Tensor:
    return torch.randint(-128, 128, (rows, cols), generator=generator, dtype=torch.int8).to(device)


def int64_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The independent reference: an int64 matmul (on the CPU, CUDA has none) cannot overflow here."""
    return a.cpu().long() @ b.cpu().long().t()


@settings(max_examples=30, deadline=None)
@given(
    rows=st.one_of(st.just(1), st.integers(1, 80)),
    # Around tile boundaries as well as anywhere.
    in_features=st.one_of(st.sampled_from([1, BLOCK_K - 1, BLOCK_K, BLOCK_K + 1, 3 * BLOCK_K + 5]),
                          st.integers(1, 400)),
    out_features=st.integers(1, 70),
    seed=st.integers(0, 2**16),
)
def test_exact_against_int64(rows: int, in_features: int, out_features: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    a, b = random_int8(rows, in_features, generator), random_int8(out_features, in_features, generator)
    result = int8_matmul(a, b)
    assert result.dtype == torch.int32
    assert torch.equal(result.long(), int64_product(a, b))
    assert torch.equal(result, int8_matmul_reference(a, b))


def test_reference_through_int_mm_is_exact() -> None:
    """Shapes where the reference takes torch._int_mm (M > 16, K and N multiples of 8)."""
    generator = torch.Generator().manual_seed(1)
    a, b = random_int8(33, 136, generator), random_int8(24, 136, generator)
    assert torch.equal(int8_matmul_reference(a, b).long(), int64_product(a, b))
    assert torch.equal(int8_matmul(a, b), int8_matmul_reference(a, b))


def test_extreme_values_at_the_largest_k() -> None:
    """Every product at an extreme and K = MAX_K: sums reach -2^31 + 2^14 and 2^31 - 2^14
    without overflow. MAX_K is not a multiple of BLOCK_K, so the last tile is masked too."""
    a = torch.full((3, MAX_K), -128, dtype=torch.int8)
    a[1] = 127
    a[2, ::2] = 127  # alternating -128, 127
    b = torch.full((2, MAX_K), -128, dtype=torch.int8)
    b[1] = 127
    result = int8_matmul(a, b)
    expected = int64_product(a, b)
    assert expected.max() == MAX_K * 2**14 and expected.min() == -MAX_K * 128 * 127  # the range claimed
    assert torch.equal(result.long(), expected)


def test_empty_shapes() -> None:
    a, b = torch.zeros((0, 5), dtype=torch.int8), torch.zeros((3, 5), dtype=torch.int8)
    assert int8_matmul(a, b).shape == (0, 3)
    no_k = int8_matmul(torch.zeros((2, 0), dtype=torch.int8), torch.zeros((3, 0), dtype=torch.int8))
    assert torch.equal(no_k, torch.zeros((2, 3), dtype=torch.int32))


def _valid_args() -> dict:
    generator = torch.Generator().manual_seed(0)
    return dict(a=random_int8(3, 16, generator), b=random_int8(8, 16, generator))


@pytest.mark.parametrize(
    ("name", "corrupt", "message"),
    [
        ("a", lambda t: t[0], "a must be 2-D"),
        ("b", lambda t: t[:, :5].contiguous(), r"b.shape\[1\]"),
        ("a", lambda t: t.float(), "a must have dtype"),
        ("b", lambda t: t.to(torch.uint8), "b must have dtype"),
        ("b", lambda t: t.t().contiguous().t(), "b must be contiguous"),
        ("b", lambda t: t.to("meta"), "b is on meta"),
    ],
)
def test_rejects_bad_arguments(name: str, corrupt, message: str) -> None:
    args = _valid_args()
    args[name] = corrupt(args[name])
    with pytest.raises(KernelError, match=message):
        int8_matmul(**args)


def test_rejects_k_that_could_overflow() -> None:
    a, b = torch.zeros((1, MAX_K + 1), dtype=torch.int8), torch.zeros((1, MAX_K + 1), dtype=torch.int8)
    with pytest.raises(KernelError, match="could overflow"):
        int8_matmul(a, b)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("rows", [1, 8, 2560])
@pytest.mark.parametrize(("in_features", "out_features"), [(1024, 3072), (4096, 1024), (1024, 1025)])
def test_exact_on_cuda(rows: int, in_features: int, out_features: int) -> None:
    generator = torch.Generator().manual_seed(rows)
    a = random_int8(rows, in_features, generator, "cuda")
    b = random_int8(out_features, in_features, generator, "cuda")
    result = int8_matmul(a, b)
    assert torch.equal(result, int8_matmul_reference(a, b))
    assert torch.equal(result.long().cpu(), int64_product(a, b))
