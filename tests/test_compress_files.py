"""The CLI's file plumbing: .npy reading before any allocation, exact .npy bytes back,
output naming, and atomic writes that never replace devices or name temp files."""
import io
import os
import stat
import time

import numpy as np
import pytest
from numpy.lib import format as npy

from compress import CompressError
from compress.files import Job, Writer, output_name, plan
from compress.format import MAX_FRAMES
from models.npy import load_npy, npy_bytes
from models.atomic import atomic_write, check_writable


def read_npy(data: bytes, source: str) -> tuple[np.ndarray, tuple[int, int]]:
    """The compressor's reading of a token file."""
    return load_npy(data, source, CompressError, MAX_FRAMES)


def npy_file(array: np.ndarray, version: tuple[int, int] | None = None) -> bytes:
    """What numpy itself writes (np.save, or write_array for an explicit version)."""
    buffer = io.BytesIO()
    np.save(buffer, array) if version is None else npy.write_array(buffer, array, version=version)
    return buffer.getvalue()


def forged_npy(shape: tuple, dtype: str = "<i2", data: bytes = b"") -> bytes:
    """A .npy header (with NumPy's magic) claiming `shape`, followed by `data`."""
    buffer = io.BytesIO()
    npy.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buffer.getvalue() + data


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
@pytest.mark.parametrize("fortran", [False, True])
def test_every_npy_version_comes_back_byte_identical(version, fortran):
    array = np.random.default_rng(0).integers(0, 1024, size=(3, 8, 16)).astype(">u2")
    array = np.asfortranarray(array) if fortran else array
    data = npy_file(array, version)
    loaded, found = read_npy(data, "x.npy")
    assert found == version and np.isfortran(loaded) == fortran and (loaded == array).all()
    assert npy_bytes(loaded, found) == data


def test_version_1_0_is_exactly_what_np_save_writes():
    array = np.zeros((2, 128), np.int16)
    assert npy_bytes(array) == npy_file(array)


@pytest.mark.parametrize("shape, message", [
    ((10**9, 8, 16), r"says \(1000000000, 8, 16\).*holds 4 bytes"),
    ((10**12, 128), r"shaped .* got \(1000000000000, 128\)"),
])
def test_a_header_claiming_a_huge_array_fails_fast_without_allocating(shape, message):
    start = time.perf_counter()
    with pytest.raises(CompressError, match=message):
        read_npy(forged_npy(shape, data=b"\0" * 4), "big.npy")
    assert time.perf_counter() - start < 0.1


@pytest.mark.parametrize("data, message", [
    (b"frame,token\n0,1\n", "not a .npy file"),
    (b"", "not a .npy file"),
    (b"\x93NUMPY", "not a .npy file"),
    (b"\x93NUMPY\x04\x00", "unsupported .npy format version 4.0"),
    (b"\x93NUMPY\x01\x00\x10\x00{'descr': '<i2'", "damaged .npy header"),
])
def test_files_that_are_not_npy_say_so(data, message):
    with pytest.raises(CompressError, match=message):
        read_npy(data, "x.npy")


@pytest.mark.parametrize("array, message", [
    (np.array([{"a": 1}], dtype=object), "not an integer dtype"),
    (np.zeros((2, 128), np.float32), "not an integer dtype"),
    (np.zeros((2, 127), np.int16), "shaped"),
    (np.zeros((128,), np.int16), "shaped"),
    (np.full((1, 128), 2**63, np.uint64), "0..1023, got 9223372036854775808..9223372036854775808"),
    (np.full((1, 128), -1, np.int8), "got -1..-1"),
])
def test_arrays_that_are_not_token_segments_are_refused_with_their_values(array, message):
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    with pytest.raises(CompressError, match=message):
        read_npy(buffer.getvalue(), "x.npy")


def test_trailing_data_after_the_array_is_refused():
    with pytest.raises(CompressError, match="holds 257 bytes"):
        read_npy(npy_file(np.zeros((1, 128), np.int16)) + b"\0", "x.npy")


@pytest.mark.parametrize("name, decoding, expected", [
    ("x.npy", False, "x.npy.cvq"), ("x.npy.cvq", True, "x.npy"), ("x.cvq", True, "x.npy"), ("d/x.cvq", True, "d/x.npy"),
])
def test_output_names(name, decoding, expected):
    assert output_name(name, decoding) == expected


def test_several_inputs_need_an_existing_directory_or_a_trailing_slash(tmp_path):
    inputs = [str(tmp_path / "a.npy"), str(tmp_path / "b.npy")]
    with pytest.raises(CompressError, match="not a directory"):
        plan(inputs, str(tmp_path / "c.cvq"), decoding=False)
    assert not (tmp_path / "c.cvq").exists()
    made = plan(inputs, f"{tmp_path / 'out'}/", decoding=False)
    assert made.new_directory and [job.target for job in made.jobs] == [str(tmp_path / "out" / "a.npy.cvq"),
                                                                        str(tmp_path / "out" / "b.npy.cvq")]
    assert plan([str(tmp_path / "x.cvq")], None, decoding=True).jobs == [Job(str(tmp_path / "x.cvq"),
                                                                            str(tmp_path / "x.npy"))]


@pytest.mark.parametrize("output, decoding", [("b.npy", False), ("b.npy.cvq", True)])
def test_an_output_named_like_an_input_is_refused(output, decoding):
    with pytest.raises(CompressError, match="named like an input"):
        plan(["a.npy.cvq" if decoding else "a.npy"], output, decoding)


def test_a_missing_parent_directory_is_an_error_not_created(tmp_path):
    target = tmp_path / "missing" / "x.cvq"
    for write in (lambda: check_writable(target), lambda: atomic_write(target, b"x")):
        with pytest.raises(FileNotFoundError, match="no such directory"):
            write()
    assert not target.parent.exists()


def test_the_writer_makes_only_a_named_directory_and_removes_it_on_failure(tmp_path):
    writer = Writer()
    with pytest.raises(CompressError, match="no such directory"):
        writer.prepare(plan(["a.npy", "b.npy"], f"{tmp_path / 'no' / 'out'}/", decoding=False), [], False)
    writer.prepare(plan(["a.npy", "b.npy"], f"{tmp_path / 'out'}/", decoding=False), [], False)
    writer.write(str(tmp_path / "out" / "a.npy.cvq"), b"x")
    writer.remove_created()
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def device(tmp_path, request):
    """A character device node in a temp dir (root only): 1,3 is null, 1,7 is full."""
    if os.geteuid() != 0:
        pytest.skip("making device nodes needs root")
    path = tmp_path / request.param[0]
    os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, request.param[1]))
    return path


@pytest.mark.parametrize("device", [("null", 3)], indirect=True)
def test_a_device_target_is_written_through_not_replaced(device):
    atomic_write(device, b"data")
    assert stat.S_ISCHR(os.stat(device).st_mode)
    assert sorted(p.name for p in device.parent.iterdir()) == ["null"]


@pytest.mark.parametrize("device", [("full", 7)], indirect=True)
def test_a_full_device_fails_naming_the_target_and_stays_a_device(device):
    with pytest.raises(OSError, match="No space left") as error:
        atomic_write(device, b"data")
    assert error.value.filename == str(device)
    assert stat.S_ISCHR(os.stat(device).st_mode)


def test_a_fifo_target_is_written_through(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader, so that opening to write does not block
    try:
        atomic_write(fifo, b"data")
        assert os.read(reader, 16) == b"data" and stat.S_ISFIFO(os.stat(fifo).st_mode)
    finally:
        os.close(reader)


def test_errors_never_name_the_temp_file(tmp_path):
    unwritable = "/sys/x.cvq" if os.geteuid() == 0 else str(tmp_path / "ro" / "x.cvq")
    if os.geteuid() != 0:
        (tmp_path / "ro").mkdir(mode=0o500)
    for write in (lambda: check_writable(unwritable), lambda: atomic_write(unwritable, b"x")):
        with pytest.raises(PermissionError) as error:
            write()
        assert error.value.filename == unwritable and ".tmp" not in str(error.value)
