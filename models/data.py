"""Read commaVQ token segments from `.npy` files, directories, and webdataset shards.

A segment is a driving clip encoded as `frame_tokens` (128) commaVQ tokens per frame,
stored either as `(T, 8, 16)` or `(T, 128)` integers in 0..1023. `load_segments` returns
every segment as `(key, tokens)` with `tokens` a `(T, 128)` int64 array, so the trainer
and the compressor (`--dataset`) read data the same way.

Accepted paths:
- `name.npy`: one segment, keyed by the file name without `.npy`;
- a directory: its `.npy` files and `.tar.gz` shards, sorted by name (not recursive);
- `data-XXXX.tar.gz`: a commaVQ webdataset shard with members `<key>.token.npy`,
  `<key>.pose.npy` and `<key>.json`, read offline through Hugging Face `datasets`.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .errors import DataError
from .npy import load_npy
from .tokens import FRAME_TOKENS, TOKEN_VALUES, frame_tokens  # noqa: F401  (models.train imports these from here)

SHARD_SUFFIX = ".tar.gz"


def as_frame_tokens(array: np.ndarray, source: str) -> np.ndarray:
    """Check `array` is a segment of token ids and return it as `(T, 128)` int64."""
    return frame_tokens(np.asarray(array), DataError, source, min_frames=1)


def _checked(array: np.ndarray, source: str, as_stored: bool) -> np.ndarray:
    tokens = as_frame_tokens(array, source)
    return np.asarray(array) if as_stored else tokens


def _load_npy(path: Path, as_stored: bool) -> tuple[str, np.ndarray]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read .npy file: {exc.strerror or exc}") from exc
    return path.name[: -len(".npy")], _checked(load_npy(data, str(path), DataError)[0], str(path), as_stored)


def _load_shards(paths: list[Path], as_stored: bool) -> list[tuple[str, np.ndarray]]:
    """Read webdataset shards offline; `datasets` names columns after the member name's
    text from its FIRST dot, so `<key>.token.npy` becomes column `token.npy`."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from datasets import load_dataset  # slow import, only needed for shards

    names = ", ".join(str(p) for p in paths)
    try:
        rows = load_dataset("webdataset", data_files={"train": [str(p) for p in paths]}, split="train")
    except Exception as exc:  # datasets raises many types for unreadable archives
        raise DataError(f"cannot read webdataset shard(s) {names}: {exc}") from exc
    if "token.npy" not in rows.column_names:
        raise DataError(f"{names}: no '<key>.token.npy' members (columns: {rows.column_names})")
    segments = []
    for row in rows.with_format("numpy"):
        metadata = row.get("json")
        key = metadata["file_name"] if isinstance(metadata, dict) and "file_name" in metadata else None
        key = str(key if key is not None else row["__key__"])
        tokens = _checked(row["token.npy"], f"{names} member {key}.token.npy", as_stored)
        # commaVQ stores tokens as int16; datasets widens them to int64 on the way through
        # Arrow, so the stored dtype is restored (lossless: checked ids are 0..1023).
        segments.append((key, tokens.astype(np.int16) if as_stored else tokens))
    return segments


def load_segments(paths: Iterable[str | os.PathLike], *, as_stored: bool = False) -> list[tuple[str, np.ndarray]]:
    """Every segment under `paths` as `(key, (T, 128) int64 tokens)`, in the given order
    (directories expanded in sorted order); with `as_stored`, checked the same way but in
    the shape and dtype they were stored with (the compressor restores exactly those).
    Raises `DataError` naming the bad file."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.name.endswith((".npy", SHARD_SUFFIX))))
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"{path}: no such file or directory")
    segments: list[tuple[str, np.ndarray]] = []
    for path in files:
        if path.name.endswith(".npy"):
            segments.append(_load_npy(path, as_stored))
        elif path.name.endswith(SHARD_SUFFIX):
            segments.extend(_load_shards([path], as_stored))
        else:
            raise DataError(f"{path}: unsupported file type (expected .npy or {SHARD_SUFFIX})")
    if not segments:
        raise DataError(f"no .npy files or {SHARD_SUFFIX} shards found in {[str(p) for p in files] or 'the given paths'}")
    return segments
