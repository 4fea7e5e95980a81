"""A kernel launch as data: which kernel, its grid, its arguments and its constexprs.

Each launcher splits into a `plan_*` function (checks, output allocation, tile and grid
choice) that returns `Launch` records, and a thin wrapper that runs them. The split lets
`kernels.aot` compile for a GPU exactly what a launch would run, from the same function,
without a GPU: it calls the plan with meta tensors and hands the records to Triton's
own argument binder. NamedTuples and plain tuples keep the plan traceable by torch.compile.
"""
from collections.abc import Sequence
from typing import Any, NamedTuple


class Launch(NamedTuple):
    kernel: Any  # a @triton.jit function (an InterpretedFunction under TRITON_INTERPRET=1)
    grid: tuple[int, ...]
    args: tuple  # positional runtime arguments, in the kernel's parameter order
    constexprs: dict[str, Any]  # keyword compile-time arguments (tiles, flags)


def run_launches(launches: Sequence[Launch]) -> None:
    """Launch each record in order (on the current stream, so in order on the device)."""
    for kernel, grid, args, constexprs in launches:
        kernel[grid](*args, **constexprs)
