"""The coder's defaults, and the worker count the command line derives from the usable CPUs
(`engine.host.usable_cpus`). Light (no torch, no model): `python -m compress` builds its
options and refuses bad ones from these before it loads anything."""
from __future__ import annotations

from engine.host import usable_cpus

# One lane by default: each lane starts without context and sees only its own recent frames,
# which is what the mixer learns most from. On the validation tail of the training minute
# (a drive the model was not trained on) 8 lanes cost 5.4% more bits (mixing's gain vanished),
# for 5-6x faster decoding; `--lanes` trades the other way (docs/BENCHMARKS.md).
DEFAULT_LANES = 1
DEFAULT_MAX_BATCH = 8  # float numerics: streams per call (every row costs time on the CPU)
MAX_DEFAULT_JOBS = 4  # decoding workers by default: each holds its own torch and model in memory


def default_jobs() -> int:
    """One worker per usable CPU, at most MAX_DEFAULT_JOBS."""
    return max(1, min(MAX_DEFAULT_JOBS, usable_cpus()))
