"""Token arrays in `.npy` files: read from bytes with the header checked before anything is
allocated (a header may claim any shape), and written back byte for byte in the format
version they came in. The one reader of token files for every command (`python -m compress`,
`python -m engine imagine --context`, `models.load_segments`)."""
from __future__ import annotations

import io
import math
import re

import numpy as np
from numpy.lib import format as npy

from .tokens import LAYOUTS, check_ids

NPY_VERSIONS = ((1, 0), (2, 0), (3, 0))  # what numpy.lib.format reads and writes
DTYPE_PATTERN = re.compile(r"[<>|][iu][1248]")  # integer dtypes of any byte order


def load_npy(data: bytes, source: str, error: type[Exception], max_frames: int | None = None
             ) -> tuple[np.ndarray, tuple[int, int]]:
    """A (T, 8, 16) or (T, 128) array of token ids in `data` (read-only, in the file's dtype
    and order) and its .npy format version; any problem raises `error` naming `source`."""
    buffer = io.BytesIO(data)
    try:
        version = npy.read_magic(buffer)
    except ValueError:
        raise error(f"{source}: not a .npy file (it does not start with NumPy's magic string; "
                    "text, or another format?)") from None
    if version not in NPY_VERSIONS:
        raise error(f"{source}: unsupported .npy format version {version[0]}.{version[1]}")
    try:
        read = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
        shape, fortran_order, dtype = read(buffer)
    except ValueError as exc:
        raise error(f"{source}: damaged .npy header ({exc})") from None
    if dtype.hasobject or not DTYPE_PATTERN.fullmatch(dtype.str):
        raise error(f"{source}: dtype {dtype} is not an integer dtype")
    limit = "" if max_frames is None else f", T <= {max_frames}"
    if len(shape) < 2 or tuple(shape[1:]) not in LAYOUTS or (max_frames is not None and shape[0] > max_frames):
        raise error(f"{source}: tokens must be shaped (T, 8, 16) or (T, 128){limit}, got {shape}")
    count, start = math.prod(shape), buffer.tell()
    if len(data) - start != count * dtype.itemsize:
        raise error(f"{source}: the .npy header says {shape} {dtype} ({count * dtype.itemsize} bytes), "
                    f"the file holds {len(data) - start} bytes of data")
    array = np.frombuffer(data, dtype, count, start).reshape(shape, order="F" if fortran_order else "C")
    check_ids(array, error, source)
    return array, version


def npy_bytes(array: np.ndarray, version: tuple[int, int] = (1, 0)) -> bytes:
    """The .npy file numpy writes for `array` in format `version` (1.0 is what np.save writes)."""
    buffer = io.BytesIO()
    npy.write_array(buffer, array, version=version, allow_pickle=False)
    return buffer.getvalue()
