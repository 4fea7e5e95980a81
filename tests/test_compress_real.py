"""Real commaVQ segments round-trip exactly with the shipped default model (a slice of frames)."""
from pathlib import Path

import numpy as np
import torch
import pytest

import compress
from engine import Engine
from models import DEFAULT_MODEL_DIR

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

pytestmark = pytest.mark.skipif(
    not DATA.is_dir() or not (DEFAULT_MODEL_DIR / "config.json").is_file(),
    reason="needs ../shared/data and the default model in models/default",
)


@pytest.fixture(scope="module")
def engine():
    return Engine.from_pretrained(backend="torch", dtype=torch.float32, compile=False, max_batch=2)


@pytest.mark.parametrize("name, frames, lanes", [
    ("train/3b41c0fa8959aea6c118e5714f412a2e_13.npy", 3, 1),
    ("train/000e83c564317de4668c2cb372f89b91_6_first8frames.npy", 4, 2),
    ("holdout/tacobell_example.npy", 3, 1),  # measured only, never trained on
])
def test_real_segment_slice_round_trips(engine, name, frames, lanes):
    tokens = np.load(DATA / name)[:frames]
    data = compress.encode(tokens, engine=engine, lanes=lanes)
    restored = compress.decode(data, engine=engine)
    assert restored.dtype == tokens.dtype and restored.tobytes() == tokens.tobytes()
    assert compress.read_header(data).payload_length < tokens.size * 10 / 8  # fewer than 10 bits/token


def test_decode_without_an_engine_rebuilds_the_files_numerics(engine):
    tokens = np.load(DATA / "train/3b41c0fa8959aea6c118e5714f412a2e_13.npy")[10:12]
    data = compress.encode(tokens, engine=engine)
    rebuilt = compress.engine_for(compress.read_header(data))
    assert rebuilt is not engine and rebuilt.numerics == engine.numerics
    assert compress.decode(data).tobytes() == tokens.tobytes()


@pytest.mark.parametrize("name", ["train/3b41c0fa8959aea6c118e5714f412a2e_13.npy",
                                  "train/00148e277029edef492f36a536304d7f_15_first8frames.npy",
                                  "holdout/tacobell_example.npy"])
def test_real_segments_round_trip_at_the_shipped_defaults(name):
    """`compress.encode(tokens)` as users call it: exact numerics, mixing, one lane."""
    tokens = np.load(DATA / name)[:8]
    data = compress.encode(tokens)
    header = compress.read_header(data)
    assert header.numerics == {"mode": "exact", "version": 1} and header.mixer and header.storage == 0
    assert compress.decode(data).tobytes() == tokens.tobytes()
    assert 8 * header.payload_length / tokens.size < 7.5  # real driving compresses well below 10 bits
