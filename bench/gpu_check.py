"""One prepared check for a freshly lent CUDA machine (no network, a few minutes).

    bash bench/gpu_check.sh              # or: python bench/gpu_check.py [--dry-run] [--budget S]
    OUT=dir bash bench/gpu_check.sh      # results in dir/results.txt (default ./gpu_results)

Runs each step under its own time limit (and never past the overall budget), appends its
command, output, exit status and time to one results file, and goes on after a failure:
every failure is visible, none stops the others. The exit status is the number of
failed steps (0: all passed). `--dry-run` runs nothing: it checks that every step is a
well-formed shell command whose `python -m` modules and test files exist.

Packages the device's image lacks travel as wheels in the git-ignored `.whl/` (name it in
the run's `carry`): the compressor's `constriction` (the image has numba). Here, before the run:

    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_17_x86_64 -d .whl constriction==0.5.0

The first step installs them into `.whl/site`, which every step finds on PYTHONPATH.

Placeholders the coordinator fills in are marked COORDINATOR below.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The gpt-fast-style baseline (bench/gpt_fast.py: static cache, SDPA, decode compiled with
# torch.compile reduce-overhead, on by default on CUDA), timed beside the engine at batch 1 and 8.
IMAGINE_BASELINE_FLAGS = "--gpt-fast"
# The exact (integer) numerics for `compress encode` (the default, named for clarity), so
# that a file encoded on the CPU decodes bit-exactly on the GPU.
EXACT_FLAGS = "--numerics exact"
# An exact file decodes on whichever device is asked for.
GPU_DECODE_FLAGS = "--device cuda"
# A real segment, cropped to 20 frames; the first that exists is used.
# The device machine gets the working tree only: copy a segment to ./gpu_segment.npy first.
SEGMENT_CANDIDATES = ("gpu_segment.npy", "shared/data/train/3b41*_13.npy", "../shared/data/train/3b41*_13.npy")
CUDA_ARCH = "$(python -c 'import torch; print(\"%d%d\" % torch.cuda.get_device_capability())')"


@dataclass(frozen=True)
class Step:
    name: str
    limit_s: int  # the step's own time limit
    command: str  # run with bash -c in the repository root


def find_segment() -> str:
    for pattern in SEGMENT_CANDIDATES:
        found = sorted(ROOT.glob(pattern)) if "*" in pattern else [ROOT / pattern]
        found = [path for path in found if path.is_file()]
        if found:
            return str(found[0])
    return "NO_SEGMENT_FOUND__copy_one_to_gpu_segment.npy"


def default_steps(out: Path) -> list[Step]:
    segment, work = find_segment(), out / "compress"
    return [
        Step("install", 45, "if ls .whl/*.whl >/dev/null 2>&1; then pip install -q --no-index --no-deps --no-compile "
                            "--upgrade --target .whl/site .whl/*.whl; fi && pip install --no-deps -e . -q"),
        Step("versions", 20, "python -c 'import torch, triton; print(torch.__version__, triton.__version__, "
                             "torch.version.cuda, torch.cuda.get_device_name())'"),
        Step("nvidia-smi", 10, "nvidia-smi"),
        Step("pytest -m cuda", 120, "python -m pytest -m cuda -q -p no:cacheprovider"),
        Step("compress cpu->gpu", 45,
             f"mkdir -p {work} && python -c 'import numpy as np, sys; np.save(sys.argv[2], np.load(sys.argv[1])[:20])' "
             f"{segment} {work}/segment.npy && "
             f"python -m compress encode -f --device cpu {EXACT_FLAGS} {work}/segment.npy {work}/segment.cvq && "
             f"python -m compress decode -f {GPU_DECODE_FLAGS} {work}/segment.cvq {work}/restored.npy && "
             f"cmp {work}/segment.npy {work}/restored.npy && python -m compress info {work}/segment.cvq"),
        Step("compress gpu->cpu", 45,
             f"python -m compress encode -f --device cuda {EXACT_FLAGS} {work}/segment.npy {work}/gpu.cvq && "
             f"python -m compress decode -f --device cpu {work}/gpu.cvq {work}/restored-cpu.npy && "
             f"cmp {work}/segment.npy {work}/restored-cpu.npy && cmp {work}/segment.cvq {work}/gpu.cvq"),
        Step("bench.imagine", 180,
             f"python -m bench.imagine --device cuda --frames 2 --batch 8 {IMAGINE_BASELINE_FLAGS}"),
        Step("bench.kernels", 45, "python -m bench.kernels --batch 8"),
        Step("bench.compress", 90,
             f"python -m bench.compress {segment} --frames 60 --device cuda --lanes 1 8 64 --mixing on "
             "--no-baselines"),
        Step("aot full matrix", 90, f"AOT_ARCHS={CUDA_ARCH} python -m pytest -m aot_full -q -s "
                                    "-p no:cacheprovider tests/test_aot_compile.py"),
    ]


def check_step(step: Step) -> list[str]:
    """Why `step` is not well formed: a shell syntax error, a missing module or test file."""
    problems = []
    syntax = subprocess.run(["bash", "-n", "-c", step.command], capture_output=True, text=True)
    if syntax.returncode != 0:
        problems.append(f"{step.name}: shell syntax: {syntax.stderr.strip()}")
    for module in re.findall(r"python -m ([\w.]+)", step.command):
        path = ROOT / module.replace(".", "/")
        in_repo = path.with_suffix(".py").is_file() or (path / "__main__.py").is_file()
        if not in_repo and importlib.util.find_spec(module) is None:
            problems.append(f"{step.name}: no module {module}")
    for path in re.findall(r"\b(tests/\S+\.py)\b", step.command):
        if not (ROOT / path).is_file():
            problems.append(f"{step.name}: no file {path}")
    return problems


def run_steps(steps: list[Step], results: Path, budget_s: float, dry_run: bool = False) -> list[str]:
    """Run (or check) every step, appending to `results`; return the names of failed steps."""
    failed, deadline = [], time.monotonic() + budget_s
    with results.open("a") as log:
        log.write(f"# gpu_check {datetime.datetime.now(datetime.timezone.utc).isoformat()} on {platform.node()} "
                  f"({'dry run' if dry_run else f'budget {budget_s:.0f} s'})\n")
        for step in steps:
            log.write(f"\n=== {step.name} (limit {step.limit_s} s): {step.command}\n")
            log.flush()
            if dry_run:
                problems = check_step(step)
                log.write("".join(f"{problem}\n" for problem in problems) or "well formed\n")
                status = "FAILED" if problems else "ok"
            else:
                status = _run_step(step, log, deadline)
            log.write(f"=== {step.name}: {status}\n")
            log.flush()
            if status != "ok":
                failed.append(step.name)
        log.write(f"\n# summary: {len(steps) - len(failed)}/{len(steps)} ok; failed: {', '.join(failed) or 'none'}\n")
    return failed


def _run_step(step: Step, log, deadline: float) -> str:
    limit = min(step.limit_s, deadline - time.monotonic())
    if limit < 1:
        return "SKIPPED (overall budget spent)"
    start = time.monotonic()
    # A new session, so a timeout kills the step's whole process group, not just bash.
    process = subprocess.Popen(["bash", "-c", step.command], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        code = process.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        process.wait()
        return f"TIMED OUT after {limit:.0f} s"
    seconds = time.monotonic() - start
    return "ok" if code == 0 else f"FAILED (exit {code}, {seconds:.0f} s)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="check every step, run none")
    parser.add_argument("--budget", type=float, default=540, help="overall seconds for all steps (default 540: a 15-minute device lease less start-up; the most telling steps run first)")
    args = parser.parse_args()
    out = Path(os.environ.get("OUT") or "gpu_results").resolve()
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.txt"
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, (str(ROOT / ".whl" / "site"), os.environ.get("PYTHONPATH"))))
    failed = run_steps(default_steps(out), results, args.budget, dry_run=args.dry_run)
    print(f"{results}: {'all steps ok' if not failed else 'failed: ' + ', '.join(failed)}")
    sys.exit(len(failed))


if __name__ == "__main__":
    main()
