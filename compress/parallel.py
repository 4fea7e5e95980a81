"""Decoding many files: engines rebuilt from their headers, segments side by side, and
whole segments shared out among worker processes.

A segment decodes one model step per token (each token depends on the one before), so
more cores help only by decoding different segments at once. Segments are independent,
and a file's numerics are rebuilt from its header in whichever process decodes it (exact
numerics are the same bits in any process, batch or thread count; float files record what
their engine needs), so the output never depends on how the files are shared out. Each
worker loads torch and the model once: about 1 s and 300-400 MB.
"""
from __future__ import annotations

import multiprocessing
import queue
import signal
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch

from engine.host import keep_freed_memory

from .api import decode_many, engine_for, read_header
from .format import MAX_BATCH, Header

PROGRESS_SECONDS = 0.25  # how often a worker reports decoded tokens to the progress bar

Progress = Callable[[int], None]
_progress_queue: multiprocessing.Queue | None = None  # a worker's channel to the parent


def decode_all(files: list[bytes], headers: list[Header], model: str | None, batch: int | None,
               device: str | None, progress: Progress | None) -> Iterator[tuple[int, np.ndarray]]:
    """(index, array) of every file, in this process, decoded with an engine rebuilt from its
    header: files whose headers need the same engine settings decode together, up to
    MAX_BATCH segments side by side."""
    groups: dict[tuple, list[int]] = {}
    for index, header in enumerate(headers):
        groups.setdefault(tuple(sorted(header.numerics.items())), []).append(index)
    for indices in groups.values():
        needed = max(headers[i].batch for i in indices)
        engine = engine_for(headers[indices[0]], model, max(batch, needed) if batch else None, device)
        for start in range(0, len(indices), MAX_BATCH):  # memory bounded
            chunk = indices[start : start + MAX_BATCH]
            yield from zip(chunk, decode_many([files[i] for i in chunk], engine, progress))


def tasks(sizes: list[int], jobs: int) -> list[list[int]]:
    """File indices in tasks of at most MAX_BATCH files: at least `jobs` tasks where there are
    files enough, each about the same number of tokens (largest first, onto the lightest)."""
    count = max(jobs, -(-len(sizes) // MAX_BATCH))
    shares: list[list[int]] = [[] for _ in range(min(count, len(sizes)))]
    loads = [0] * len(shares)
    for index in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        open_ = [s for s in range(len(shares)) if len(shares[s]) < MAX_BATCH]
        share = min(open_, key=lambda s: loads[s])
        shares[share].append(index)
        loads[share] += sizes[index]
    return [sorted(share) for share in shares if share]


def decode_in_processes(files: list[bytes], headers: list[Header], model: str | None, batch: int | None,
                        device: str | None, jobs: int, progress: Progress | None
                        ) -> Iterator[tuple[int, np.ndarray]]:
    """As `decode_all`, with the files shared out among `jobs` worker processes (in this
    process when one worker or one file would do); results come as tasks finish."""
    work = tasks([header.tokens for header in headers], jobs)
    if jobs <= 1 or len(work) <= 1:
        yield from decode_all(files, headers, model, batch, device, progress)
        return
    context = multiprocessing.get_context("spawn")  # no fork of a process with torch's threads
    reports = context.Queue()
    pool = context.Pool(min(jobs, len(work)), initializer=_start_worker, initargs=(torch.get_num_threads(), reports))
    try:
        pending = [(task, pool.apply_async(_decode_task, ([files[i] for i in task], model, batch, device)))
                   for task in work]
        while pending:
            _drain(reports, progress, PROGRESS_SECONDS)
            for task, result in [item for item in pending if item[1].ready()]:
                pending.remove((task, result))
                yield from zip(task, map(_from_worker, result.get()))  # a worker's exception is raised here
        _drain(reports, progress, 0.0)
    finally:
        pool.terminate()  # also on errors and Ctrl-C: no worker outlives the command
        pool.join()


def _drain(reports: multiprocessing.Queue, progress: Progress | None, wait: float) -> None:
    """Pass the workers' token counts on to `progress`, waiting up to `wait` s for the first."""
    try:
        tokens = reports.get(timeout=wait) if wait else reports.get_nowait()
        while True:
            if progress:
                progress(tokens)
            tokens = reports.get_nowait()
    except queue.Empty:
        return


def _start_worker(threads: int, reports: multiprocessing.Queue) -> None:
    global _progress_queue
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    keep_freed_memory()  # as the command line does for itself
    torch.set_num_threads(threads)
    _progress_queue = reports


def _to_parent(array: np.ndarray) -> tuple[bytes, str, tuple[int, ...], bool]:
    """An array as raw bytes and its dtype's string: numpy 2.4's pickle at protocol 4 (what
    multiprocessing sends) drops a non-native byte order ('>i2' came back as int16)."""
    fortran = array.ndim > 1 and np.isfortran(array)
    return array.tobytes(order="F" if fortran else "C"), array.dtype.str, array.shape, fortran


def _from_worker(packed: tuple[bytes, str, tuple[int, ...], bool]) -> np.ndarray:
    data, dtype, shape, fortran = packed
    return np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape, order="F" if fortran else "C").copy(
        order="F" if fortran else "C")


def _decode_task(files: list[bytes], model: str | None, batch: int | None, device: str | None
                 ) -> list[tuple[bytes, str, tuple[int, ...], bool]]:
    tokens, last = 0, time.monotonic()

    def report(count: int) -> None:  # batched: a queue message per token would cost more than the token
        nonlocal tokens, last
        tokens += count
        if time.monotonic() - last >= PROGRESS_SECONDS and _progress_queue is not None:
            _progress_queue.put(tokens)
            tokens, last = 0, time.monotonic()

    headers = [read_header(data) for data in files]
    arrays = dict(decode_all(files, headers, model, batch, device, report))
    if tokens and _progress_queue is not None:
        _progress_queue.put(tokens)
    return [_to_parent(arrays[i]) for i in range(len(files))]
