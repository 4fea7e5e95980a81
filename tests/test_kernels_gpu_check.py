"""The prepared GPU check's CPU-side logic: its steps are well formed, and a failing or
hanging step is recorded without stopping the ones after it."""
import os
import subprocess
from pathlib import Path

from bench.gpu_check import ROOT, Step, check_step, default_steps, run_steps


def test_default_steps_are_well_formed(tmp_path: Path) -> None:
    steps = default_steps(tmp_path)
    assert [problem for step in steps for problem in check_step(step)] == []
    assert {"install", "nvidia-smi", "pytest -m cuda", "aot full matrix", "bench.kernels", "bench.imagine"} <= {
        step.name for step in steps
    }


def test_check_step_reports_each_problem() -> None:
    bad = Step("bad", 5, "echo ( && python -m bench.no_such_bench && python -m pytest tests/test_no_such_file.py")
    problems = check_step(bad)
    assert len(problems) == 3 and "shell syntax" in problems[0], problems
    assert "no module bench.no_such_bench" in problems[1] and "tests/test_no_such_file.py" in problems[2]


def test_failures_do_not_stop_later_steps(tmp_path: Path) -> None:
    results = tmp_path / "results.txt"
    steps = [
        Step("first", 10, "echo first-output"),
        Step("fails", 10, "echo oops-output; exit 3"),
        Step("hangs", 1, "sleep 30"),
        Step("last", 10, "echo last-output"),
    ]
    assert run_steps(steps, results, budget_s=60) == ["fails", "hangs"]
    text = results.read_text()
    for expected in ("first-output", "oops-output", "FAILED (exit 3", "TIMED OUT after 1 s", "last-output",
                     "=== last: ok", "2/4 ok; failed: fails, hangs"):
        assert expected in text, expected


def test_overall_budget_skips_what_does_not_fit(tmp_path: Path) -> None:
    results = tmp_path / "results.txt"
    steps = [Step("slow", 30, "sleep 30"), Step("after", 30, "echo never-run")]
    assert run_steps(steps, results, budget_s=1.5) == ["slow", "after"]
    text = results.read_text()
    assert "=== slow: TIMED OUT" in text and "=== after: SKIPPED (overall budget spent)" in text
    assert "never-run" not in text.replace("echo never-run", "")


def test_shell_wrapper_dry_run(tmp_path: Path) -> None:
    env = dict(os.environ, OUT=str(tmp_path / "out"))
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    text = (tmp_path / "out" / "results.txt").read_text()
    assert text.count("well formed") == len(default_steps(tmp_path)) and "failed: none" in text
