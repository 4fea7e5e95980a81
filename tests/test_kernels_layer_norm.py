"""layer_norm against torch.nn.functional.layer_norm, batch invariance and argument checks."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import KernelError, layer_norm, layer_norm_reference


def make_inputs(
    rows: int, features: int, seed: int, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    # An offset mean checks that the variance is taken about the mean, not about zero.
    x = torch.randn(rows, features, generator=generator) * 3.0 + 5.0
    weight = torch.randn(features, generator=generator)
    bias = torch.randn(features, generator=generator)
    return [t.to(device, dtype) for t in (x, weight, bias)]


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 8), features=st.integers(1, 300), seed=st.integers(0, 2**16))
def test_matches_reference(rows: int, features: int, seed: int) -> None:
    x, weight, bias = make_inputs(rows, features, seed)
    torch.testing.assert_close(
        layer_norm(x, weight, bias, 1e-5), layer_norm_reference(x, weight, bias, 1e-5), atol=1e-5, rtol=1e-5
    )


def test_batch_invariant() -> None:
    x, weight, bias = make_inputs(6, 1024, seed=3)
    batched = layer_norm(x, weight, bias, 1e-5)
    for row in range(6):
        assert torch.equal(layer_norm(x[row : row + 1], weight, bias, 1e-5)[0], batched[row])


@pytest.mark.parametrize(
    ("name", "corrupt", "message"),
    [
        ("x", lambda t: t[0], "x must be 2-D"),
        ("weight", lambda t: t[:-1], r"weight.shape\[0\]"),
        ("bias", lambda t: t.half(), "bias has dtype"),
        ("x", lambda t: t.t().contiguous().t(), "x must be contiguous"),
        ("weight", lambda t: t.to("meta"), "weight is on meta"),
    ],
)
def test_rejects_bad_arguments(name: str, corrupt, message: str) -> None:
    args = dict(zip(("x", "weight", "bias"), make_inputs(4, 32, seed=0)))
    args[name] = corrupt(args[name])
    with pytest.raises(KernelError, match=message):
        layer_norm(**args, eps=1e-5)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_matches_reference_on_cuda(dtype: torch.dtype) -> None:
    x, weight, bias = make_inputs(300, 1024, seed=0, dtype=dtype, device="cuda")
    torch.testing.assert_close(
        layer_norm(x, weight, bias, 1e-5), layer_norm_reference(x, weight, bias, 1e-5), atol=3e-2, rtol=2e-2
    )
