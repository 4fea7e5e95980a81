"""Test-wide setup.

Without a GPU the Triton kernels run in Triton's interpreter. The variable must be set
before any `@triton.jit` function is defined, so it is set here, before tests import
`kernels`.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Tiny test models run fastest on one thread, and a fixed count keeps CPU logits reproducible.
torch.set_num_threads(1)
