"""Data loading (`models.data`) and the trainer (`models.train`) on tiny inputs."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from models import load_pretrained
from models.data import DataError, load_segments
from models.train import TrainConfig, permute_ids, segment_bits, train


def _add_member(archive: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    archive.addfile(info, io.BytesIO(payload))


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_load_segments_reads_a_webdataset_shard(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    expected = {
        "a1b2c3_0": rng.integers(0, 1024, size=(5, 8, 16), dtype=np.int16),
        "d4e5f6_7": rng.integers(0, 1024, size=(3, 8, 16), dtype=np.int16),
    }
    shard = tmp_path / "data-0000.tar.gz"
    with tarfile.open(shard, "w:gz") as archive:
        for key, tokens in expected.items():
            _add_member(archive, f"{key}.token.npy", _npy_bytes(tokens))
            _add_member(archive, f"{key}.pose.npy", _npy_bytes(rng.normal(size=(len(tokens), 6))))
            _add_member(archive, f"{key}.json", json.dumps({"file_name": key}).encode())

    segments = load_segments([shard])

    assert [key for key, _ in segments] == list(expected)
    for key, tokens in segments:
        assert tokens.dtype == np.int64
        np.testing.assert_array_equal(tokens, expected[key].reshape(-1, 128))


def test_load_segments_reads_npy_files_and_directories(tmp_path: Path) -> None:
    grid = np.arange(2 * 128, dtype=np.int16).reshape(2, 8, 16)
    np.save(tmp_path / "b.npy", grid)
    np.save(tmp_path / "a.npy", grid.reshape(2, 128).astype(np.int64)[::-1])

    segments = load_segments([tmp_path])

    assert [key for key, _ in segments] == ["a", "b"]
    np.testing.assert_array_equal(segments[1][1], grid.reshape(2, 128))
    assert load_segments([tmp_path / "b.npy"])[0][0] == "b"


@pytest.mark.parametrize(
    "array, problem",
    [(np.full((2, 128), 1024), "0..1023"), (np.zeros((2, 100), dtype=np.int16), "shaped"), (np.zeros((2, 128)), "integer")],
)
def test_load_segments_rejects_bad_tokens_naming_the_file(tmp_path: Path, array: np.ndarray, problem: str) -> None:
    path = tmp_path / "bad.npy"
    np.save(path, array)
    with pytest.raises(DataError, match=problem) as error:
        load_segments([path])
    assert "bad.npy" in str(error.value)


def _drive(rng: np.random.Generator, length: int) -> np.ndarray:
    """Frames that mostly repeat the previous one, like driving video."""
    previous = rng.integers(0, 1024, size=128)
    frames = []
    for _ in range(length):
        previous = np.where(rng.random(128) < 0.2, rng.integers(0, 1024, size=128), previous)
        frames.append(previous)
    return np.stack(frames)


def test_training_is_reproducible_and_writes_a_loadable_checkpoint(tmp_path: Path) -> None:
    segments = [_drive(np.random.default_rng(1), 20)]
    config = TrainConfig(
        layers=1, width=32, heads=2, frames=2, steps=6, batch_size=4, eval_every=3, warmup_steps=2,
        permute_fraction=0.5, tie_embeddings=True,
    )

    best = train(segments, config, str(tmp_path / "a"))
    train(segments, config, str(tmp_path / "b"))

    first, second = load_pretrained(tmp_path / "a"), load_pretrained(tmp_path / "b")
    assert first.config.frames_per_window == 2 and first.config.n_embd == 32
    assert first.config.tie_word_embeddings
    assert 0 < best < 11  # bits/token; uniform over 1025 ids is 10.0
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name


def test_permute_ids_relabels_whole_windows_consistently() -> None:
    rng = np.random.default_rng(2)
    frames = rng.integers(0, 1024, size=(8, 3, 128))

    relabelled = permute_ids(frames, 1.0, torch.Generator().manual_seed(0))

    for before, after in zip(frames, relabelled):
        # A bijection on ids: equal ids stay equal and different ids stay different.
        pairs = set(zip(before.ravel().tolist(), after.ravel().tolist()))
        assert len(pairs) == len({b for b, _ in pairs}) == len({a for _, a in pairs})
    np.testing.assert_array_equal(permute_ids(frames, 0.0, torch.Generator()), frames)


def test_separate_validation_segments_select_the_checkpoint(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    # Training windows may end at the last frame (all of it is training data), validation
    # codes frames 1.. of the other drives; --val-fraction would leave no training window.
    segments, others = [_drive(rng, 3)], [_drive(rng, 4), _drive(rng, 2)]
    config = TrainConfig(layers=1, width=32, heads=2, frames=2, steps=4, batch_size=4, eval_every=2,
                         warmup_steps=1, val_fraction=0.9)

    best = train(segments, config, str(tmp_path / "model"), val_segments=others)

    model = load_pretrained(tmp_path / "model")
    results = [segment_bits(model, tokens, 1) for tokens in others]
    assert sum(count for _, count in results) == (3 + 1) * 128
    assert best == pytest.approx(sum(bits for bits, _ in results) / (4 * 128), rel=1e-5)
