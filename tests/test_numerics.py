"""`Numerics`: the determinism contract's round trip, and its refusal of hostile dicts."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import models
from engine import Engine, EngineError, Numerics
from engine.numerics import EXACT_VERSION
from models import GPTConfig

TINY = GPTConfig(vocab_size=1025, frame_tokens=8, n_positions=27, n_layer=1, n_head=2, n_embd=16, n_inner=32)
GOOD = {"backend": "torch", "dtype": "float32", "device": "cpu", "prefill_chunk": 4096, "compiled": 0,
        "threads": 1, "cpu_capability": "AVX512"}


@pytest.fixture(scope="module")
def engine() -> Engine:
    torch.manual_seed(0)
    return Engine(models.GPT(TINY), device="cpu", backend="torch", dtype=torch.float32, compile=False, max_batch=2)


def test_the_dict_keeps_todays_keys_and_round_trips(engine: Engine) -> None:
    numerics = engine.numerics
    d = numerics.to_dict()
    assert d == {"backend": "torch", "dtype": "float32", "device": "cpu", "prefill_chunk": 4096, "compiled": 0,
                 "threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    assert Numerics.from_dict(d) == numerics
    assert Numerics.from_dict(GOOD).to_dict() == GOOD


def test_an_engine_from_numerics_has_those_numerics(engine: Engine) -> None:
    rebuilt = Engine.from_numerics(engine.numerics, engine.model, max_batch=1)
    assert rebuilt.numerics == engine.numerics and rebuilt.max_batch == 1
    tokens = torch.randint(0, 1025, (1, 10))
    assert torch.equal(rebuilt.open_streams(1).prefill(tokens), engine.open_streams(1).prefill(tokens))


def test_from_numerics_sets_the_thread_count(engine: Engine) -> None:
    before = torch.get_num_threads()
    try:
        other = 2 if before == 1 else 1
        Engine.from_numerics(Numerics.from_dict({**GOOD, "threads": other}), engine.model, max_batch=1)
        assert torch.get_num_threads() == other
    finally:
        torch.set_num_threads(before)


def test_exact_numerics_record_their_version_and_nothing_about_the_machine(engine: Engine) -> None:
    exact = Engine(engine.model, numerics="exact", max_batch=1).numerics
    assert exact.to_dict() == {"mode": "exact", "version": EXACT_VERSION}
    assert Numerics.from_dict(exact.to_dict()).mode == "exact"
    for forged in ({**GOOD, "mode": "exact"}, {"mode": "exact", "version": EXACT_VERSION + 1},
                   {"mode": "exact", "version": EXACT_VERSION, "threads": 2}, {"mode": "exact"}):
        with pytest.raises(EngineError, match="exact numerics .* version"):
            Numerics.from_dict(forged)
    assert "mode" not in engine.numerics.to_dict()  # float files keep today's header bytes


@pytest.mark.parametrize(
    "change, message",
    [
        ({"backend": "jax"}, "backend"),
        ({"device": "meta"}, "device"),
        ({"device": "tpu"}, "device"),
        ({"dtype": "int64"}, "floating"),
        ({"dtype": "finfo"}, "floating"),
        ({"dtype": "_C"}, "floating"),
        ({"dtype": 32}, "string"),
        ({"prefill_chunk": 100}, "power of two"),
        ({"prefill_chunk": 2**20}, "power of two"),
        ({"prefill_chunk": 8}, "power of two"),
        ({"prefill_chunk": "4096"}, "power of two"),
        ({"threads": 0}, "threads"),
        ({"threads": 100000}, "threads"),
        ({"threads": True}, "threads"),
        ({"compiled": 2}, "compiled"),
        ({"compiled": True}, "compiled"),
        ({"cpu_capability": "x" * 65}, "short string"),
        ({"gpu": 90}, "short string"),
        ({"backend": "x" * 10**6}, "short string"),
        ({"extra": 1}, "unknown"),
    ],
)
def test_bad_fields_are_refused(change: dict, message: str) -> None:
    with pytest.raises(EngineError, match=message):
        Numerics.from_dict({**GOOD, **change})


def test_missing_fields_and_non_dicts_are_refused() -> None:
    with pytest.raises(EngineError, match="lack.*prefill_chunk"):
        Numerics.from_dict({k: v for k, v in GOOD.items() if k != "prefill_chunk"})
    with pytest.raises(EngineError, match="dict"):
        Numerics.from_dict(["backend"])


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=80),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                    max_leaves=5)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(GOOD) + ["mode", "gpu", "other"]), JSON)
def test_any_json_value_is_accepted_valid_or_refused_with_engine_error(key: str, value: object) -> None:
    try:
        numerics = Numerics.from_dict({**GOOD, key: value})
    except EngineError:
        return
    assert Numerics.from_dict(numerics.to_dict()) == numerics


def test_machine_facts_come_from_this_machine(engine: Engine) -> None:
    """A file from another CPU must not make this engine claim that CPU's numerics."""
    foreign = Numerics.from_dict({**engine.numerics.to_dict(), "cpu_capability": "NO_AVX"})
    rebuilt = Engine.from_numerics(foreign, engine.model, max_batch=1)
    assert rebuilt.numerics == engine.numerics != foreign
