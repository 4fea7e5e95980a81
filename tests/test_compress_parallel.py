"""Files decoded by worker processes: the same bytes as in one process, errors in one line."""
import numpy as np
import pytest
import torch

from compress.cli import main
from compress.format import MAX_BATCH
from compress.defaults import default_jobs
from compress.parallel import tasks
from models import GPT, GPTConfig, save_pretrained


@pytest.mark.parametrize("sizes, jobs", [([5] * 3, 2), ([1, 9, 3, 3, 7], 2), ([2] * 200, 2), ([4] * 10, 4), ([3], 4)])
def test_tasks_share_every_file_once_in_bounded_balanced_tasks(sizes, jobs):
    work = tasks(sizes, jobs)
    assert sorted(i for task in work for i in task) == list(range(len(sizes)))
    assert all(1 <= len(task) <= MAX_BATCH for task in work)
    assert len(work) >= min(jobs, len(sizes))
    loads = [sum(sizes[i] for i in task) for task in work]
    assert max(loads) - min(loads) <= max(sizes)


@pytest.mark.parametrize("numerics", ["exact", "float"])
def test_workers_decode_the_same_bytes_as_one_process(tmp_path, model_dir, numerics):
    source, packed = tmp_path / "in", tmp_path / "packed"
    source.mkdir()
    rng = np.random.default_rng(2)
    for index, frames in enumerate((1, 4, 2, 3, 5)):  # different lengths: lanes end at different steps
        array = rng.integers(0, 1024, size=(frames, 8, 16)).astype(np.int16 if index % 2 else ">u2")
        np.save(source / f"s{index}.npy", np.asfortranarray(array) if index == 3 else array)  # byte order, layout
    model = ["--model", str(model_dir), "-q"]
    assert main(["encode", str(source), f"{packed}/", "--numerics", numerics, "--backend", "torch",
                 "--no-compile", *model]) == 0
    files = list(map(str, sorted(packed.iterdir())))
    for jobs in (1, 2, 3):
        restored = tmp_path / f"jobs{jobs}"
        assert main(["decode", *files, f"{restored}/", "--jobs", str(jobs), *model]) == 0
        for path in sorted(source.iterdir()):
            assert (restored / path.name).read_bytes() == path.read_bytes()
    assert main(["test", *files, "--jobs", "2", *model]) == 0


def test_a_workers_error_is_one_line_and_leaves_no_output(tmp_path, model_dir, capsys):
    source, packed, restored = tmp_path / "in", tmp_path / "packed", tmp_path / "restored"
    source.mkdir()
    for index in range(3):
        np.save(source / f"s{index}.npy", np.full((2, 128), index, dtype=np.int16))
    model = ["--model", str(model_dir), "-q"]
    assert main(["encode", str(source), f"{packed}/", "--backend", "torch", *model]) == 0
    other = tmp_path / "other"  # another model: the worker's engine refuses the file
    torch.manual_seed(1)
    save_pretrained(GPT(GPTConfig(n_positions=2 * 129, n_layer=1, n_head=2, n_embd=16, n_inner=32)), other)
    files = list(map(str, sorted(packed.iterdir())))
    capsys.readouterr()
    assert main(["decode", *files, f"{restored}/", "--jobs", "2", "--model", str(other), "-q"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model mismatch" in err, err
    assert not restored.exists()


def test_jobs_are_bounded(tmp_path, capsys):
    assert main(["decode", str(tmp_path / "x.cvq"), "--jobs", "0"]) == 1
    assert "--jobs must be 1..64" in capsys.readouterr().err


def test_default_jobs_without_cpu_affinity(monkeypatch):
    """macOS and Windows have no os.sched_getaffinity: the CLI must still build its options."""
    monkeypatch.delattr("os.sched_getaffinity", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 3)
    assert default_jobs() == 3
    monkeypatch.setattr("os.cpu_count", lambda: None)
    assert default_jobs() == 1
