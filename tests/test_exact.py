"""Exact integer numerics, the runner: bit-identical logits across batch, chunking, prefill
vs decode, threads, CPU capability and matmul paths; close to the float model. The
operations themselves are tested in test_exact_ops.py."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import models
from engine import exact_attention
from engine import exact_runner
from engine.errors import EngineError
from engine.exact_runner import ExactRunner
from engine.exact_score import score

ROOT = Path(__file__).resolve().parents[1]
MINUTE = ROOT.parent / "shared" / "data" / "train" / "3b41c0fa8959aea6c118e5714f412a2e_13.npy"


@pytest.fixture(scope="module")
def model() -> models.GPT:
    return models.load_pretrained(models.DEFAULT_MODEL_DIR).float().eval()


@pytest.fixture(scope="module")
def runner(model) -> ExactRunner:
    return ExactRunner(model, max_batch=8, device="cpu")


def real_windows(count: int, first: int = 1) -> torch.Tensor:
    """[count, 258] windows [BOS, frame t-1, BOS, frame t] from the training minute, or
    random tokens where the data is absent."""
    if not MINUTE.exists():
        return torch.randint(0, 1024, (count, 258), generator=torch.Generator().manual_seed(first))
    frames = np.load(MINUTE).reshape(-1, 128).astype(np.int64)
    bos = np.full(1, 1024)
    rows = [np.concatenate([bos, frames[t - 1], bos, frames[t]]) for t in range(first, first + count)]
    return torch.from_numpy(np.stack(rows))


def lens(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int32)


def steps(runner: ExactRunner, tokens: torch.Tensor, prefill: int) -> list[torch.Tensor]:
    """Logits at positions prefill-1 .. L-1: one fresh prefill, then single steps."""
    rows, length = tokens.shape
    out = [runner.forward(tokens[:, :prefill], lens(*[0] * rows), lens(*[prefill] * rows), fresh=True)]
    for p in range(prefill, length):
        out.append(runner.forward(tokens[:, p : p + 1], lens(*[p] * rows), lens(*[1] * rows)))
    return out


# --- bit-identical logits ---------------------------------------------------------------
def test_score_equals_prefill_then_steps(runner: ExactRunner) -> None:
    tokens = real_windows(2, first=500)
    scored = score(runner, tokens)
    for i, logits in enumerate(steps(runner, tokens, prefill=100)):
        assert torch.equal(logits, scored[:, 99 + i]), f"position {99 + i}"


@pytest.mark.parametrize("n_positions", [258, 387])  # PV sums in float32, and in float64
def test_score_equals_prefill_of_every_prefix(n_positions: int) -> None:
    torch.manual_seed(0)
    tiny = models.GPT(models.GPTConfig(n_positions=n_positions, n_layer=2, n_head=2, n_embd=32, n_inner=64)).eval()
    runner = ExactRunner(tiny, max_batch=2)
    assert runner.pv_max[1] == (torch.float32 if n_positions == 258 else torch.float64)
    tokens = torch.randint(0, 1025, (2, 140))
    scored = score(runner, tokens)
    for length in range(1, 141):
        logits = runner.forward(tokens[:, :length], lens(0, 0), lens(length, length), fresh=True)
        assert torch.equal(logits, scored[:, length - 1]), f"prefix {length}"


def test_batch_chunking_and_padding_do_not_change_a_row(runner: ExactRunner) -> None:
    tokens = real_windows(8, first=300)
    alone = steps(runner, tokens[:1], prefill=129)[-4:]
    # Row 0 beside 7 other drives, prefilled in two chunks of unequal lengths per row.
    a = torch.tensor([40, 7, 129, 0, 100, 3, 64, 128], dtype=torch.int32)
    chunk = torch.zeros(8, 129, dtype=torch.int64)
    for r in range(8):
        chunk[r, : 129 - a[r]] = tokens[r, a[r] : 129]
    runner.forward(tokens[:, :129], lens(*[0] * 8), a, fresh=True)
    runner.forward(chunk, a, 129 - a)
    together = [runner.forward(tokens[:, p : p + 1], lens(*[p] * 8), lens(*[1] * 8)) for p in range(129, 258)][-4:]
    for x, y in zip(alone, together):
        assert torch.equal(x[0], y[0])
    assert torch.equal(together[-1], score(runner, tokens)[:, -1])


def test_score_chunks_and_attention_blocks_are_invisible(runner: ExactRunner, monkeypatch) -> None:
    tokens = real_windows(3, first=200)
    whole = score(runner, tokens)
    monkeypatch.setattr(exact_runner, "SCORE_CHUNK_TOKENS", 258)  # one window per chunk
    monkeypatch.setattr(exact_attention, "ATTENTION_BLOCK", 17)
    assert torch.equal(score(runner, tokens), whole)


def test_score_from_a_position_keeps_those_logits(runner: ExactRunner, monkeypatch) -> None:
    """`first` computes only the later positions' logits (the last layer narrows its
    queries): the same bits as the full score's, with any chunking and attention blocks."""
    tokens = real_windows(3, first=640)
    whole = score(runner, tokens)
    assert torch.equal(score(runner, tokens, first=129), whole[:, 129:]) and not torch.is_inference(whole)
    monkeypatch.setattr(exact_runner, "SCORE_CHUNK_TOKENS", 258)
    monkeypatch.setattr(exact_attention, "ATTENTION_BLOCK", 17)
    assert torch.equal(score(runner, tokens, first=200), whole[:, 200:])
    assert torch.equal(score(runner, tokens, first=257), whole[:, 257:])


def test_lockstep_step_equals_the_general_path(runner: ExactRunner) -> None:
    """Rows at one shared position take the unmasked step; a padding row or rows at other
    positions take the masked general path: the same bits for the same rows."""
    tokens = real_windows(4, first=60)
    runner.forward(tokens[:, :150], lens(0, 0, 0, 0), lens(150, 150, 150, 150), fresh=True)
    shared = runner.forward(tokens[:, 150:151], lens(150, 150, 150, 150), lens(1, 1, 1, 1), kv_len=256)
    runner.forward(tokens[:, :150], lens(0, 0, 0, 0), lens(150, 150, 150, 150), fresh=True)
    padded = runner.forward(tokens[:, 150:151], lens(150, 150, 150, 150), lens(1, 1, 1, 0))
    assert torch.equal(shared[:3], padded[:3])
    # Computed in inference mode, returned as ordinary tensors: callers may modify them.
    assert not torch.is_inference(shared) and not torch.is_inference(padded)
    # Row 3 lags one position behind: the others' logits do not change.
    runner.forward(tokens[:, :150], lens(0, 0, 0, 0), lens(150, 150, 150, 149), fresh=True)
    mixed = runner.forward(tokens[:, 150:151].where(torch.arange(4)[:, None] < 3, tokens[:, 149:150]),
                           lens(150, 150, 150, 149), lens(1, 1, 1, 1))
    assert torch.equal(mixed[:3], shared[:3])
    assert torch.equal(mixed[3], score(runner, tokens[3:, :150])[0, -1])


def test_prefill_in_groups_of_rows_is_invisible(runner: ExactRunner, monkeypatch) -> None:
    tokens = real_windows(5, first=410)
    starts, ends = lens(0, 0, 0, 0, 0), lens(129, 100, 129, 1, 0)
    whole = runner.forward(tokens[:, :129], starts, ends, fresh=True)
    steps_whole = runner.forward(tokens[:, 129:130], ends, lens(1, 1, 1, 1, 1))
    monkeypatch.setattr(exact_runner, "SCORE_CHUNK_TOKENS", 2 * 129)  # groups of 2 rows
    assert torch.equal(runner.forward(tokens[:, :129], starts, ends, fresh=True)[:4], whole[:4])
    assert torch.equal(runner.forward(tokens[:, 129:130], ends, lens(1, 1, 1, 1, 1)), steps_whole)


def test_thread_count_does_not_change_logits(runner: ExactRunner) -> None:
    tokens = real_windows(4, first=700)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = score(runner, tokens)
        torch.set_num_threads(2)
        two = score(runner, tokens)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


HASH_SCRIPT = """
import hashlib, sys, torch
sys.path.insert(0, {root!r})
import models
from engine.exact_runner import ExactRunner
from engine.exact_score import score
runner = ExactRunner(models.load_pretrained(models.DEFAULT_MODEL_DIR).float().eval(), max_batch=4)
tokens = torch.load({path!r})
print(hashlib.sha256(score(runner, tokens).numpy().tobytes()).hexdigest())
"""


def test_fresh_processes_with_other_cpu_settings_agree(runner: ExactRunner, tmp_path: Path) -> None:
    tokens = real_windows(4, first=900)
    torch.save(tokens, tmp_path / "tokens.pt")
    want = hashlib.sha256(score(runner, tokens).numpy().tobytes()).hexdigest()
    script = HASH_SCRIPT.format(root=str(ROOT), path=str(tmp_path / "tokens.pt"))
    # Two processes (torch imports are slow on a busy 2-core machine) cover all four settings.
    variants = [{"ATEN_CPU_CAPABILITY": "avx2", "OMP_NUM_THREADS": "2"},
                {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"}]
    procs = [subprocess.Popen([sys.executable, "-c", script], env={**os.environ, **extra},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for extra in variants]
    for extra, proc in zip(variants, procs):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert out.strip() == want, extra


@pytest.mark.skipif(not os.environ.get("EXACT_COMPILE"), reason="about a minute of inductor compile: EXACT_COMPILE=1")
def test_inductor_compile_matches_eager() -> None:
    torch.manual_seed(0)
    tiny = models.GPT(models.GPTConfig(n_positions=258, n_layer=1, n_head=2, n_embd=32, n_inner=64)).eval()
    runner = ExactRunner(tiny, max_batch=2)
    tokens = torch.randint(0, 1024, (2, 258))
    assert torch.equal(torch.compile(runner.score, dynamic=False)(tokens), score(runner, tokens))


# --- agreement with the float model, identity, input checks --------------------------------
def test_close_to_float_model(model, runner: ExactRunner) -> None:
    tokens = real_windows(8, first=1050)
    with torch.no_grad():
        ref = model(tokens)[:, 129:257, :1024].double().log_softmax(-1)
    ours = score(runner, tokens)[:, 129:257, :1024].double().log_softmax(-1)
    assert (ref.argmax(-1) == ours.argmax(-1)).float().mean() > 0.98
    kl = (ref.exp() * (ref - ours)).sum(-1).mean()
    assert kl < 0.01, float(kl)


def test_fingerprint_is_reproducible_and_tracks_the_weights(model) -> None:
    a, b = ExactRunner(model, max_batch=1), ExactRunner(model, max_batch=2)
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 64
    changed = models.load_pretrained(models.DEFAULT_MODEL_DIR).float()
    with torch.no_grad():
        changed.transformer.h[0].mlp.c_fc.weight[0, 0] += 0.5
    assert ExactRunner(changed, max_batch=1).fingerprint != a.fingerprint


def test_bad_input_raises(runner: ExactRunner) -> None:
    good = torch.zeros(1, 4, dtype=torch.int64)
    with pytest.raises(EngineError, match="int64"):
        score(runner, good.int())
    with pytest.raises(EngineError, match="token ids"):
        score(runner, good + 2000)
    with pytest.raises(EngineError, match="max_batch"):
        runner.forward(torch.zeros(9, 1, dtype=torch.int64), lens(*[0] * 9), lens(*[1] * 9))
    with pytest.raises(EngineError, match="n_positions"):
        runner.forward(good, lens(256), lens(4))
    with pytest.raises(EngineError, match="fresh"):
        runner.forward(good, lens(3), lens(4), fresh=True)
    with pytest.raises(EngineError, match="one per row"):  # more positions than rows of tokens
        runner.forward(good, lens(0, 0), lens(4, 4))
    with pytest.raises(EngineError, match="tokens per row"):
        score(runner, torch.zeros(1, 259, dtype=torch.int64))
    with pytest.raises(EngineError, match="first"):
        score(runner, good, first=4)
    with pytest.raises(EngineError, match="at least one position"):
        runner.forward(torch.zeros(1, 0, dtype=torch.int64), lens(0), lens(0))
    assert runner.forward(torch.zeros(0, 1, dtype=torch.int64), lens(), lens()).shape == (0, 1025)


def test_the_triton_int8_kernel_path_gives_the_same_logits(model, runner) -> None:
    """The CUDA default (`kernels.int8_matmul`, here under the Triton interpreter) computes
    the very integers of the CPU's `torch._int_mm`: identical logits, prefill and steps."""
    triton_runner = ExactRunner(model, max_batch=2, device="cpu", matmul_path="triton")
    tokens = real_windows(2)[:, :140]
    assert torch.equal(score(triton_runner, tokens, first=120), score(runner, tokens, first=120))
    got, want = (steps(r, tokens, prefill=136) for r in (triton_runner, runner))
    assert all(torch.equal(g, w) for g, w in zip(got, want))


ALLOCATOR_SCRIPT = """
import sys
import torch
from engine import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "kept" else False
block = torch.ones(2**24)  # 64 MiB: glibc maps such a block by itself, unless told not to
heap = [line.split()[0].split("-") for line in open("/proc/self/maps") if line.rstrip().endswith("[heap]")]
print(applied, any(int(lo, 16) <= block.data_ptr() < int(hi, 16) for lo, hi in heap))
"""


def test_keep_freed_memory_applies_on_linux_glibc() -> None:
    """The CLIs' allocator setting (in child processes, to leave this one's alone): applied on
    this Linux/glibc machine, a 64 MiB tensor then comes from the heap (kept and reused when
    freed), where by default glibc maps it on its own and unmaps it when freed."""
    import platform
    import subprocess
    import sys

    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc's mallopt: Linux with glibc only")

    def run(mode: str) -> list[str]:
        result = subprocess.run([sys.executable, "-c", ALLOCATOR_SCRIPT, mode], capture_output=True, text=True,
                                timeout=120, cwd=str(Path(__file__).resolve().parents[1]))
        assert result.returncode == 0, result.stderr
        return result.stdout.split()

    assert run("kept") == ["True", "True"]
    assert run("default") == ["False", "False"]
