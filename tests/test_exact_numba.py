"""The compiled exact forward pass (`engine.exact_numba`) against the torch ops it replaces on
the CPU: the same logits and the same KV cache, bit for bit, for prefills of any lengths,
continued chunks and steps, on the shipped model and on random models whose shapes take the
other branches (int64 attention sums, no biases, several layers)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import models
from engine.errors import EngineError
from engine.exact_runner import ExactRunner

MINUTE = models.DEFAULT_MODEL_DIR.parents[1].parent / "shared" / "data" / "train" / "3b41c0fa8959aea6c118e5714f412a2e_13.npy"


def random_model(seed: int, **config) -> models.GPT:
    torch.manual_seed(seed)
    model = models.GPT(models.GPTConfig(**config)).eval()
    with torch.no_grad():  # larger, varied weights than the initializer's: wider activations
        for p in model.parameters():
            p.mul_(3.0)
    return model


MODELS = {
    "shipped": lambda: models.load_pretrained(models.DEFAULT_MODEL_DIR).float().eval(),
    # n_positions 2580: sum P V needs int64 (and float64 in torch), 2 heads of 24, 3 layers
    "wide": lambda: random_model(1, n_positions=2580, n_layer=3, n_head=2, n_embd=48, n_inner=80),
    "one head": lambda: random_model(2, n_positions=258, n_layer=1, n_head=1, n_embd=16, n_inner=16),
}


def frames(count: int, seed: int) -> np.ndarray:
    if MINUTE.exists():
        data = np.load(MINUTE).reshape(-1, 128).astype(np.int64)
        return data[seed * 7 : seed * 7 + count]
    return np.random.default_rng(seed).integers(0, 1024, (count, 128))


def torch_forward(runner: ExactRunner, tokens, start, lens) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    limit, runner.compiled_max_rows = runner.compiled_max_rows, 0
    try:
        logits = runner.forward(torch.from_numpy(tokens), torch.from_numpy(start).int(), torch.from_numpy(lens).int())
    finally:
        runner.compiled_max_rows = limit
    return logits.numpy(), runner.kv.clone(), runner.kv_scale.clone()


def compiled_forward(runner: ExactRunner, tokens, start, lens) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    logits = np.empty((len(tokens), runner.config.vocab_size), dtype=np.float32)
    assert runner.compiled(tokens, start, lens, logits) == 0
    return logits, runner.kv.clone(), runner.kv_scale.clone()


def assert_same(a, b, rows: np.ndarray) -> None:
    """Logits of the rows that fed tokens, and the whole cache, bit for bit."""
    assert np.array_equal(a[0][rows].view(np.int32), b[0][rows].view(np.int32))
    assert torch.equal(a[1], b[1]) and torch.equal(a[2].view(torch.int32), b[2].view(torch.int32))


@pytest.mark.parametrize("name", list(MODELS))
def test_compiled_forward_equals_the_torch_ops(name: str) -> None:
    runner = ExactRunner(MODELS[name](), max_batch=4)
    assert runner.compiled is not None
    positions, rows = runner.config.n_positions, 4
    rng = np.random.default_rng(0)
    prompt = np.full((rows, 130), 1024, dtype=np.int64)
    prompt[:, 1:129] = frames(rows, seed=len(name))
    lens = np.array([130, 77, 1, 0])  # a padding row too
    state = (runner.kv.clone(), runner.kv_scale.clone())

    def both(tokens, start, lens) -> None:
        runner.kv.copy_(state[0]), runner.kv_scale.copy_(state[1])
        reference = torch_forward(runner, tokens, start, lens)
        runner.kv.copy_(state[0]), runner.kv_scale.copy_(state[1])
        assert_same(reference, compiled_forward(runner, tokens, start, lens), np.flatnonzero(lens))

    start = np.zeros(rows, dtype=np.int64)
    both(prompt, start, lens)
    state = (runner.kv.clone(), runner.kv_scale.clone())
    start = lens.copy()
    chunk = rng.integers(0, 1024, (rows, 9))
    both(chunk, start, np.array([9, 3, 9, 9]))  # continued chunks of other lengths
    for position in (int(start.max()), positions - 1):
        step = rng.integers(0, 1025, (rows, 1))
        both(step, np.minimum(start, position), np.ones(rows, dtype=np.int64))
        both(step, np.full(rows, position), np.ones(rows, dtype=np.int64))  # lockstep, up to the last position


def test_a_whole_gpt2m_window_prefills_the_same_compiled_and_in_torch() -> None:
    """gpt2m's window, 20 frames of 129 positions (its long-context attention: int8 matmuls
    and the fused softmax in torch's prefill), real frames where present: a full window and
    contexts of other lengths in one call, then a step at the last position."""
    runner = ExactRunner(MODELS["wide"](), max_batch=3)
    positions = runner.config.n_positions
    assert positions == 20 * 129
    window = np.full((3, positions), 1024, dtype=np.int64)
    window.reshape(3, 20, 129)[:, :, 1:] = frames(60, seed=3).reshape(3, 20, 128)
    lens = np.array([positions, 1291, 65])
    zero = np.zeros(3, dtype=np.int64)
    assert_same(torch_forward(runner, window, zero, lens), compiled_forward(runner, window, zero, lens), np.arange(3))
    reference = torch_forward(runner, window[:, :1], lens - 1, np.ones(3, dtype=np.int64))
    assert_same(reference, compiled_forward(runner, window[:, :1], lens - 1, np.ones(3, dtype=np.int64)),
                np.arange(3))


def test_steps_of_the_runner_take_the_compiled_path_and_check_their_input() -> None:
    runner = ExactRunner(MODELS["one head"](), max_batch=2)
    calls = []
    compiled = runner.compiled
    runner.compiled = lambda *args: calls.append(1) or compiled(*args)
    one = torch.ones(2, dtype=torch.int32)
    runner.forward(torch.full((2, 3), 1024), torch.zeros(2, dtype=torch.int32), 3 * one, fresh=True)
    runner.forward(torch.tensor([[5], [6]]), 3 * one, one)
    assert calls == [1]  # the step, not the prefill (torch's int8 GEMMs are faster there)
    cache = runner.kv.clone()
    with pytest.raises(EngineError, match="token ids"):
        runner.forward(torch.tensor([[5], [1025]]), 4 * one, one)
    with pytest.raises(EngineError, match="n_positions"):
        runner.forward(torch.tensor([[5], [6]]), torch.tensor([4, 258], dtype=torch.int32), one)
    with pytest.raises(EngineError, match="query_lens"):
        runner.forward(torch.tensor([[5], [6]]), 4 * one, 2 * one)
    assert torch.equal(runner.kv, cache)  # a refused call writes nothing


ISA_SCRIPT = """
import hashlib, sys
import numpy as np, torch
sys.path.insert(0, {root!r})
import models
from engine.exact_runner import ExactRunner
from compress.frequencies import SYMBOLS
from compress.table_kernels import frequency_rows
runner = ExactRunner(models.load_pretrained(models.DEFAULT_MODEL_DIR).float().eval(), max_batch=2)
tokens = np.load({path!r})
runner.forward(torch.from_numpy(tokens[:, :130]), torch.zeros(2, dtype=torch.int32), torch.full((2,), 130, dtype=torch.int32), fresh=True)
digest = hashlib.sha256()
logits = np.empty((2, runner.config.vocab_size), dtype=np.float32)
tables = np.empty((2, SYMBOLS), dtype=np.int64)
for p in range(130, 140):
    assert runner.compiled(tokens[:, p : p + 1].copy(), np.full(2, p), np.ones(2, dtype=np.int64), logits) == 0
    assert frequency_rows(logits, tables) == -1
    digest.update(logits.tobytes() + tables.tobytes())
print(digest.hexdigest())
"""


def test_compiled_kernels_give_the_same_bits_for_another_isa(tmp_path) -> None:
    """The compiled forward pass and tables built for a generic x86-64 (no AVX: what another
    machine's numba would make) in a fresh process give this process's bits."""
    import hashlib
    import os
    import subprocess
    import sys

    prompt = np.full((2, 140), 1024, dtype=np.int64)
    prompt[:, 1:129] = frames(2, seed=11)
    prompt[:, 130:] = frames(2, seed=12)[:, :10]
    np.save(tmp_path / "tokens.npy", prompt)
    root = str(models.DEFAULT_MODEL_DIR.parents[1])
    script = ISA_SCRIPT.format(root=root, path=str(tmp_path / "tokens.npy"))
    here = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert here.returncode == 0, here.stderr
    generic = {**os.environ, "NUMBA_CPU_NAME": "generic", "NUMBA_CACHE_DIR": str(tmp_path / "numba-generic")}
    other = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=generic)
    assert other.returncode == 0, other.stderr
    assert other.stdout.strip() == here.stdout.strip() and len(here.stdout.strip()) == 64
    assert hashlib.sha256(b"").hexdigest() != here.stdout.strip()
    assert any((tmp_path / "numba-generic").rglob("*.nbi"))  # compiled afresh for that target


def test_the_cpu_linear_and_gelu_equal_the_torch_ops() -> None:
    """`exact_cpu`'s compiled row quantization, epilogue and GELU (the CPU's prefills and
    score) give exact_ops' bits: rows of every scale, a dead row, with and without a bias."""
    from engine import exact_cpu
    from engine import exact_ops as ops

    runner = ExactRunner(MODELS["shipped"](), max_batch=1)
    assert runner._ops is exact_cpu
    g = torch.Generator().manual_seed(5)
    x = torch.randn(40, 128, generator=g) * torch.logspace(-12, 12, 40)[:, None]
    x[3] = 0.0
    x[4] = 1e-45
    for lin in (runner.weights.blocks[0].attn, runner.weights.lm_head):  # a bias, and none
        want = ops.linear(x, lin)
        assert torch.equal(exact_cpu.linear(x, lin).view(torch.int32), want.view(torch.int32))
        out = torch.empty_like(want)
        assert exact_cpu.linear(x, lin, out=out) is out and torch.equal(out, want)
    h = torch.randn(20, 512, generator=g) * 6
    want = ops.gelu(h, runner.gelu_table)
    assert torch.equal(exact_cpu.gelu(h.clone(), runner.gelu_table).view(torch.int32), want.view(torch.int32))


def test_the_cpu_prefill_equals_the_torch_ops_alone() -> None:
    """The CPU's prefill (exact_cpu: LayerNorm, linears, GELU and the q/k/v quantization
    compiled; long contexts attending on the int8 cache with the compiled softmax) against the
    torch ops alone (exact_ops, float attention), at gpt2m's window length: logits and cache."""
    from engine import exact_ops

    model = MODELS["wide"]()
    cpu, alone = ExactRunner(model, max_batch=3), ExactRunner(model, max_batch=3)
    assert cpu.int8_attention  # gpt2m's length: the CPU attends on the int8 cache
    alone.compiled, alone._ops, alone.int8_attention = None, exact_ops, False
    positions = cpu.config.n_positions
    window = np.full((3, positions), 1024, dtype=np.int64)
    window.reshape(3, 20, 129)[:, :, 1:] = frames(60, seed=5).reshape(3, 20, 128)
    tokens, start, lens = torch.from_numpy(window), torch.zeros(3, dtype=torch.int32), torch.tensor([positions, 700, 3])
    got = cpu.forward(tokens, start, lens.int()).numpy()
    want = alone.forward(tokens, start, lens.int()).numpy()
    assert np.array_equal(got.view(np.int32), want.view(np.int32))
    assert torch.equal(cpu.kv, alone.kv) and torch.equal(cpu.kv_scale.view(torch.int32), alone.kv_scale.view(torch.int32))


def test_compiled_qkv_quantization_equals_the_torch_ops() -> None:
    """exact_cpu.quantize_heads against exact_ops.quantize_heads (quantize_rows): rows of every
    scale, dead rows (zero and below TINY) of each part, which take the runner's dead scales."""
    from engine import exact_cpu
    from engine import exact_ops as ops

    runner = ExactRunner(MODELS["one head"](), max_batch=2)
    g = torch.Generator().manual_seed(9)
    qkv = torch.randn(2, 30, 3, 2, 16, generator=g) * torch.logspace(-10, 10, 30)[None, :, None, None, None]
    qkv[0, 3] = 0.0
    qkv[1, 4, 1] = 1e-45
    results = []
    for module in (exact_cpu, ops):
        vals, kv_scale = torch.empty(3, 2, 2, 30, 16), torch.empty(2, 2, 2, 1, 30)
        q_scale = module.quantize_heads(qkv, runner._dead_scale, runner._kv_factor, vals, kv_scale)
        results.append((vals, q_scale, kv_scale))
    for got, want in zip(*results):
        assert got.shape == want.shape and torch.equal(got.view(torch.int32), want.view(torch.int32))
    vals, q_scale, kv_scale = results[0]
    assert torch.equal(q_scale[0, 3], torch.ones(2, 1))  # a dead query row's scale: 1
    assert not kv_scale[:, 0, :, 0, 3].any() and not kv_scale[0, 1, :, 0, 4].any()  # dead keys and values: 0
    assert not vals[:, 0, :, 3].any() and not vals[1, 1, :, 4].any() and vals[2, 1, :, 4].any()


def test_min_value_is_the_minimum_on_integer_keys() -> None:
    """exact_numba_attention.min_value (an integer min over the floats' order keys) equals the float
    minimum, -0 for a zero minimum, with +inf (masked keys) and negative values present."""
    from engine.exact_numba_attention import min_value

    rng = np.random.default_rng(3)
    for _ in range(50):
        u = (rng.standard_normal(rng.integers(1, 40)) * 10.0 ** rng.integers(-30, 30)).astype(np.float32)
        u[rng.random(u.shape[0]) < 0.3] = np.inf
        assert min_value(u) == u.min()
    assert np.signbit(min_value(np.array([0.0, -0.0, 1.0], dtype=np.float32)))
    assert min_value(np.array([np.inf, 3.0], dtype=np.float32)) == 3.0
