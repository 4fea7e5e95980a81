"""Test-wide setup.

Without a GPU the Triton kernels run in Triton's interpreter. The variable must be set
before any `@triton.jit` function is defined, so it is set here, before tests import
`kernels`.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Tiny test models run fastest on one thread, and a fixed count keeps CPU logits reproducible.
torch.set_num_threads(1)


def interpreter_dot_depends_on_row_position() -> bool:
    """Whether Triton's interpreter can show batch invariance here. It runs `tl.dot` as
    numpy's float32 matmul, and some BLAS kernels (OpenBLAS 0.3.31's Haswell and Zen sgemm)
    round a row differently at different row indices of the same tile: a row alone (index
    0) and in a batch (index i) then differ in the last bit, which says nothing about the
    kernel (on a GPU each row's arithmetic is the same; the `cuda` tests check it there)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return False
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((64, 64)).astype(np.float32)
    b = rng.standard_normal((64, 16)).astype(np.float32)
    together = a @ b
    for row in range(len(a)):
        alone = np.zeros_like(a)
        alone[0] = a[row]
        if not np.array_equal((alone @ b)[0], together[row]):
            return True
    return False


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny checkpoint directory with the commaVQ layout (129-token frames, 2-frame window)."""
    from models import GPT, GPTConfig, save_pretrained

    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("tiny")
    save_pretrained(GPT(GPTConfig(n_positions=2 * 129, n_layer=1, n_head=2, n_embd=16, n_inner=32)), directory)
    return directory
