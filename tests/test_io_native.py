"""The native HDF5 layout: atomic writes, validation on read, chunked iteration."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from detgan.io.native import (
    H5Writer,
    centre_hottest,
    iter_chunks,
    read_arrays,
    read_attrs,
    write_arrays,
)
from detgan.utils import DetganError


def _arrays(n=6):
    return {"footprint": np.ones((n, 9, 9), np.float32), "energy": np.linspace(1, 100, n)}


def test_round_trip_and_provenance(tmp_path):
    path = write_arrays(tmp_path / "a.h5", _arrays(), {"seed": 3, "overrides": ["s0"]})
    back = read_arrays(path)
    assert back["footprint"].shape == (6, 9, 9) and back["footprint"].dtype == np.float32
    assert np.array_equal(back["energy"], _arrays()["energy"])
    attrs = read_attrs(path)
    assert attrs["seed"] == 3 and attrs["overrides"] == ["s0"] and "package_version" in attrs


def test_existing_file_is_refused_unless_overwrite(tmp_path):
    path = write_arrays(tmp_path / "a.h5", _arrays())
    with pytest.raises(DetganError, match="already exists; pass --overwrite to replace it"):
        write_arrays(path, _arrays(3))
    write_arrays(path, _arrays(3), overwrite=True)
    assert len(read_arrays(path)["energy"]) == 3


def test_failed_write_leaves_no_file(tmp_path):
    path = tmp_path / "a.h5"
    with pytest.raises(RuntimeError, match="wrote 2 of 4 events"):
        with H5Writer(path, 4, {"energy": ((), "float64")}) as writer:
            writer.write(0, {"energy": np.ones(2)})
    with pytest.raises(KeyboardInterrupt):
        with H5Writer(path, 4, {"energy": ((), "float64")}) as writer:
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_chunked_iteration_covers_every_event(tmp_path):
    path = write_arrays(tmp_path / "a.h5", _arrays(10))
    starts, energies = zip(*[(s, c["energy"]) for s, c in iter_chunks(path, ["energy"], 4)])
    assert starts == (0, 4, 8)
    assert np.array_equal(np.concatenate(energies), _arrays(10)["energy"])


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: f.__delitem__("energy"), "has no dataset 'energy'"),
        (lambda f: f["energy"].__setitem__(2, np.nan), "dataset 'energy' contains NaN or inf"),
        (lambda f: f["energy"].__setitem__(1, -5.0), "dataset 'energy' contains negative values"),
    ],
)
def test_bad_contents_are_refused(tmp_path, mutate, message):
    path = write_arrays(tmp_path / "a.h5", _arrays())
    with h5py.File(path, "a") as f:
        mutate(f)
    with pytest.raises(DetganError, match=message):
        read_arrays(path, ["footprint", "energy"])


def test_wrong_shape_and_lengths_are_refused(tmp_path):
    bad = {"footprint": np.ones((6, 8, 9), np.float32), "energy": np.ones(6)}
    path = write_arrays(tmp_path / "a.h5", bad)
    with pytest.raises(
        DetganError, match=r"'footprint' has shape \(6, 8, 9\), expected \(N, 9, 9\)"
    ):
        read_arrays(path)
    path = tmp_path / "b.h5"
    with h5py.File(path, "w") as f:
        f["footprint"] = np.ones((6, 9, 9), np.float32)
        f["energy"] = np.ones(5)
    with pytest.raises(DetganError, match="have different lengths"):
        read_arrays(path)


def test_truncated_and_missing_files(tmp_path):
    path = write_arrays(tmp_path / "a.h5", _arrays(2000))
    data = path.read_bytes()
    (tmp_path / "t.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(DetganError, match="corrupt or truncated"):
        read_arrays(tmp_path / "t.h5")
    with pytest.raises(DetganError, match="file '.*nope.h5' not found"):
        read_arrays(tmp_path / "nope.h5")


def test_centre_hottest_translates_without_wrapping():
    fp = np.zeros((2, 9, 9), np.float32)
    fp[0, 6, 2] = 5.0  # hottest at (6, 2): shift by (-2, +2)
    fp[0, 8, 0] = 1.0  # moves to (6, 2)
    fp[0, 0, 8] = 3.0  # shifted out of the grid
    fp[1, 4, 4] = 2.0  # already centred
    fp[1, 4, 5] = 2.0  # a tie: the first in row-major order wins
    traces = np.repeat(fp[..., None], 3, axis=-1)
    out_fp, out_tr = centre_hottest(fp, traces)
    assert out_fp[0, 4, 4] == 5.0 and out_fp[0, 6, 2] == 1.0 and out_fp.sum() == 6.0 + 4.0
    assert np.array_equal(out_fp[1], fp[1])
    assert np.array_equal(out_tr[..., 1], out_fp)
    assert np.all(out_fp.reshape(2, -1).argmax(axis=1) == 40)
