"""The host process's settings: the CPUs it may use, and keeping freed memory in the process
for long CPU prefills (Linux with glibc). Light (no torch): the command lines call these
before loading anything.

glibc's malloc serves every block above its mmap threshold (at most 32 MiB) with a fresh
mapping and returns it to the OS when freed, and it trims a heap top above twice that. A
gpt2m-width prefill allocates about a gigabyte of short-lived multi-megabyte tensors (GEMM
outputs, layouts, attention workspaces), so each is page-faulted in and zeroed afresh:
about 18% of an exact prefill of 2,452 tokens (docs/BENCHMARKS.md). jemalloc and tcmalloc
avoid this by keeping memory; so does this, with glibc's own knobs.

The cost: the process holds on to its peak heap (trimmed only above TRIM_ABOVE free). The
command lines (`python -m engine`, `python -m compress`) and the benchmarks call it; a
library user decides for their own process.
"""
from __future__ import annotations

import ctypes
import os
import sys

# torch crashes on absurd thread counts (100000 segfaults), and no CPU path here gains from more:
# the bound of every thread count a user or a file's header gives.
MAX_THREADS = 512
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt's parameter numbers (glibc's malloc.h)
TRIM_ABOVE = 2**30  # free memory at the heap's top beyond this goes back to the OS


def keep_freed_memory() -> bool:
    """Serve large blocks from the heap and keep freed ones (glibc `mallopt`: no mmap, trim
    only above TRIM_ABOVE). Returns whether it applied: False off Linux or without glibc's
    mallopt (musl's ignores it). Changes no result, only where memory comes from."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_ABOVE) == 1


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity where the OS has one: Linux; macOS and
    Windows have no `os.sched_getaffinity`)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
