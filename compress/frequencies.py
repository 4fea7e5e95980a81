"""Logits -> integer frequency tables, bit-identical on any machine.

Two table versions; a file records the one it was coded with (format 2: version 2):

- version 1, `frequencies`: numpy, per row, float64 with a degree-11 Taylor polynomial for
  exp2. Slow (25-30 us per row batched). Format 1 files used it; it stays as the plain
  reference the tests and `bench/` measure version 2 against.
- version 2, `frequency_tables`: torch, on the logits' device, vectorized over any number of
  rows. exp2 becomes one lookup in a fixed-point table: about a dozen cheap passes over a
  block of rows (1.4-5 us per row on one 2-core-VM CPU thread, 5-8x faster than v1). The
  decoder's few rows per step take the same arithmetic compiled (`table_kernels`, 2-3 us
  a row against 7-50 us of torch calls at 1-8 rows).

Both use only integers, lookups and basic IEEE-754 operations (+ - * /, correctly rounded
everywhere, each a separate elementwise op so no FMA can be contracted), never a library's
exp/log, and reduce only exactly (row max, sums of integers): so the tables are a function of
the logits' bits alone, independent of thread count, chunking, ISA or GPU.

Every real token gets at least 1 of `TOTAL = 2**PRECISION`; BOS never occurs in data and
gets nothing.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .errors import CompressError

PRECISION = 24  # constriction's Categorical model works at 24-bit precision
TOTAL = 1 << PRECISION
SYMBOLS = 1024  # real token ids; the logits' column 1024 (BOS) is never coded
TABLES_VERSION = 2  # the version `frequency_tables` computes
# exp2 values are floored to integers below 2**WEIGHT_BITS, so weight * TOTAL fits in int64
# (v1), and a row of 1024 weights sums exactly in float64 (v2: partial sums stay below 2**48).
WEIGHT_BITS = 38
LOG2_E = 1.4426950408889634
# Taylor coefficients of 2**f = exp(f ln 2) on [0, 1), highest degree first (error < 1e-10).
EXP2_COEFFICIENTS = tuple(math.log(2) ** k / math.factorial(k) for k in range(11, -1, -1))
# v2 quantizes log2 of a probability ratio to 1/2**FRACTION_BITS: a relative error below 0.07%
# per weight, which costs about 1e-8 bits per token (the KL of a tiny multiplicative jitter).
FRACTION_BITS = 10
# Past WEIGHT_BITS + 1 octaves below the row's maximum every weight floors to 0.
TABLE_SIZE = ((WEIGHT_BITS + 1) << FRACTION_BITS) + 1
# (max - logit) * SCALE is the index into the table; a float32, so the product rounds once.
SCALE = np.float32((1 << FRACTION_BITS) * LOG2_E)
CPU_BLOCK_ROWS = 256


def _exp2(x: np.ndarray) -> np.ndarray:
    """2**x for x <= 0 with basic float64 operations only: bit-identical on any machine."""
    whole = np.floor(x)
    fraction = x - whole  # exact
    result = np.full_like(x, EXP2_COEFFICIENTS[0])
    for coefficient in EXP2_COEFFICIENTS[1:]:
        result = result * fraction + coefficient
    return np.ldexp(result, whole.astype(np.int32))


def frequencies(logits: np.ndarray, symbols: int) -> np.ndarray:
    """Version 1 tables: int64 [rows, symbols], each >= 1, every row summing to TOTAL, from
    the first `symbols` float32 logits of each row (a softmax, quantized deterministically)."""
    x = np.asarray(logits, dtype=np.float32)[:, :symbols].astype(np.float64)
    if not np.isfinite(x).all():
        raise CompressError("the model produced non-finite logits")
    x = (x - x.max(axis=1, keepdims=True)) * LOG2_E
    np.maximum(x, -(WEIGHT_BITS + 1), out=x)  # below this the weight floors to 0 anyway
    weights = np.floor(np.ldexp(_exp2(x), WEIGHT_BITS)).astype(np.int64)
    freq = weights * (TOTAL - symbols) // weights.sum(axis=1, keepdims=True) + 1
    # The floors leave fewer than `symbols` units; the most likely token takes them.
    rows = np.arange(freq.shape[0])
    freq[rows, weights.argmax(axis=1)] += TOTAL - freq.sum(axis=1)
    return freq


def _exp2_table() -> np.ndarray:
    """floor(2**(WEIGHT_BITS - i / 2**FRACTION_BITS)) for every index i, as exact float64
    integers; the last entry is 0 (the clamp for everything further below the maximum)."""
    index = np.arange(TABLE_SIZE, dtype=np.float64)
    table = np.floor(np.ldexp(_exp2(-index / (1 << FRACTION_BITS)), WEIGHT_BITS))
    table[-1] = 0.0
    return table


EXP2_TABLE = _exp2_table()
_DEVICE_TABLES: dict[torch.device, torch.Tensor] = {}


def _table_on(device: torch.device) -> torch.Tensor:
    if device not in _DEVICE_TABLES:
        _DEVICE_TABLES[device] = torch.from_numpy(EXP2_TABLE).to(device)
    return _DEVICE_TABLES[device]


def frequency_tables(logits: torch.Tensor, symbols: int = SYMBOLS) -> torch.Tensor:
    """Version 2 tables: int64 [rows, symbols] on the logits' device, each >= 1, every row
    summing to TOTAL, from the first `symbols` float32 logits of each row [rows, >= symbols].

    weight = EXP2_TABLE[min(trunc((rowmax - logit) * SCALE), TABLE_SIZE - 1)] (float32 ops),
    freq = trunc(weight * ((TOTAL - symbols) / sum(weight))) + 1 (float64 ops), and the
    units the truncations leave go to the row's first maximal logit. Rows are independent,
    so any split of the rows into calls gives the same tables."""
    if logits.dim() != 2 or logits.shape[1] < symbols or logits.dtype != torch.float32:
        raise CompressError(f"logits must be float32 [rows, >= {symbols}], got {logits.dtype} {list(logits.shape)}")
    if not 2 <= symbols <= SYMBOLS:
        raise CompressError(f"symbols must be 2..{SYMBOLS}, got {symbols}")
    out = torch.empty((logits.shape[0], symbols), dtype=torch.int64, device=logits.device)
    # On a CPU, blocks of rows whose temporaries stay in cache are about twice as fast.
    block = CPU_BLOCK_ROWS if logits.device.type == "cpu" else max(1, logits.shape[0])
    with torch.no_grad():  # the CPU path hands a temporary to numpy
        for start in range(0, logits.shape[0], block):
            _tables(logits[start : start + block, :symbols], out[start : start + block])
    return out


def _tables(x: torch.Tensor, out: torch.Tensor) -> None:
    """Write the tables of logits `x` [rows, symbols] into `out` (int64, same shape)."""
    high = x.amax(dim=1, keepdim=True)  # exact in any order; a NaN anywhere makes it NaN
    if not torch.isfinite(high).all():
        raise nonfinite_logits()
    # (high - x) may overflow to inf (or be inf for a -inf logit); the clamp maps it, like
    # any far tail, to weight 0. int32 conversions: several times faster than int64 on CPUs.
    scaled = torch.sub(high, x).mul_(SCALE).clamp_(max=TABLE_SIZE - 1)  # 0 exactly where x == high
    index = scaled.to(torch.int32)
    weights = _table_on(x.device).index_select(0, index.view(-1)).view(index.shape)
    # Exact: 1024 integers below 2**38 never leave float64's 53-bit integer range.
    total = weights.sum(dim=1, keepdim=True)
    ratio = torch.full_like(total, TOTAL - x.shape[1]).div_(total)  # one correctly rounded division
    # trunc(w * fl(C / s)) <= w * C / s * (1 + 2**-52) < w * C / s + 2**-28 (as w * C / s < 2**24),
    # so a row's truncations sum to at most C: the remainder is never negative.
    torch.add(weights.mul_(ratio).to(torch.int32), 1, out=out)  # values < 2**24; widened on write
    remainder = TOTAL - out.sum(dim=1, keepdim=True)
    out.scatter_add_(1, _first_zero(scaled), remainder)


def _first_zero(scaled: torch.Tensor) -> torch.Tensor:
    """[rows, 1] index of each row's first 0 (its first maximal logit) in `scaled` >= 0."""
    if scaled.device.type == "cpu":  # numpy's SIMD argmin is ~20x faster than torch's on CPUs
        return torch.from_numpy(scaled.numpy().argmin(axis=1)[:, None])
    return scaled.argmin(dim=1, keepdim=True)  # both return the first index on ties


def nonfinite_logits() -> CompressError:
    """What a table maker raises for a row whose maximum is NaN or +inf."""
    return CompressError("the model produced NaN or +inf logits")
