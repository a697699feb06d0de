"""Readers and writers of the showers formats: round trips, validation and exact error messages."""

from __future__ import annotations

import zipfile

import h5py
import numpy as np
import pytest

from detgan.io import calochallenge, calogan
from detgan.io.showers import (
    Showers,
    count_events,
    detect_format,
    iter_showers,
    load_showers,
    save_showers,
)
from detgan.sim.calorimeter import CaloSimConfig, simulate
from detgan.sim.geometry import BINNINGS, CALOGAN
from detgan.utils import DetganError


@pytest.fixture(scope="module")
def samples() -> dict[str, Showers]:
    return {
        name: simulate(CaloSimConfig(geometry=name, batch_size=40), 40, seed=5)
        for name in ("calochallenge-1-photons", "calogan", "lhcb-ecal", "atlas-cluster")
    }


def _message(excinfo) -> str:
    return str(excinfo.value)


def _cc_file(path, energies, showers, **extra):
    with h5py.File(path, "w") as f:
        f["incident_energies"] = energies
        f["showers"] = showers
        for key, value in extra.items():
            f[key] = value
    return path


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_calochallenge_round_trip_and_public_structure(samples, tmp_path, dtype):
    s = samples["calochallenge-1-photons"]
    path = save_showers(s, tmp_path / "cc.h5", attrs={"seed": 5}, dtype=dtype)
    with h5py.File(path) as f:
        assert sorted(f.keys()) == ["incident_energies", "showers"]
        assert f["showers"].shape == (40, 368) and f["incident_energies"].shape == (40, 1)
        assert f["showers"].dtype == dtype and f["showers"].compression == "gzip"
        assert f.attrs["dataset"] == "1-photons" and f.attrs["seed"] == 5
    back = load_showers(path)
    assert back.layout == BINNINGS["1-photons"] and back.meta["source_format"] == "calochallenge"
    np.testing.assert_array_equal(back.cells, s.cells)
    np.testing.assert_array_equal(back.energy, s.energy)
    assert back.meta["units"]["cells"] == "MeV" and back.meta["e_min"] == 1.0


def test_calogan_round_trip_units_and_axes(samples, tmp_path):
    s = samples["calogan"]
    path = save_showers(s, tmp_path / "cg.h5")
    with h5py.File(path) as f:
        assert {k: f[k].shape[1:] for k in f} == {
            "energy": (1,),
            "layer_0": (3, 96),
            "layer_1": (12, 12),
            "layer_2": (12, 6),
            "overflow": (3,),
        }
        np.testing.assert_allclose(f["energy"][:, 0], s.energy / 1000, rtol=1e-6)  # GeV
        np.testing.assert_array_equal(f["layer_1"][:, 2, 5], s.cells[:, 288 + 2 * 12 + 5])
    back = load_showers(path)
    np.testing.assert_array_equal(back.cells, s.cells)
    np.testing.assert_allclose(back.energy, s.energy, rtol=1e-6)
    np.testing.assert_array_equal(back.conditions["overflow"], s.conditions["overflow"])
    assert back.meta["overflow_missing"] is False


def test_lhcb_round_trip_units(samples, tmp_path):
    s = samples["lhcb-ecal"]
    path = save_showers(s, tmp_path / "ecal.npz")
    with np.load(path, allow_pickle=False) as archive:
        assert archive["EnergyDeposit"].shape == (40, 30, 30)
        np.testing.assert_allclose(archive["ParticlePoint"], s.conditions["point"] / 10, rtol=1e-6)
        np.testing.assert_allclose(
            archive["ParticleMomentum"], s.conditions["momentum"] / 1e3, rtol=1e-6
        )
        assert archive["ParticlePDG"].tolist() == [11] * 40
    back = load_showers(path)
    np.testing.assert_array_equal(back.cells, s.cells)
    np.testing.assert_allclose(back.conditions["point"], s.conditions["point"], rtol=1e-6)
    np.testing.assert_allclose(back.energy, s.energy, rtol=1e-6)
    assert back.meta["pitch_mm"] == 20.0 and back.layout == s.layout


def test_native_round_trip_of_atlas_clusters(samples, tmp_path):
    s = samples["atlas-cluster"]
    path = save_showers(s, tmp_path / "atlas.h5")
    assert detect_format(path) == "native"
    back = load_showers(path)
    np.testing.assert_array_equal(back.cells, s.cells)
    np.testing.assert_array_equal(back.conditions["cell_eta"], s.conditions["cell_eta"])
    assert back.layout == s.layout and back.layout.name == "atlas-cluster"
    chunks = list(iter_showers(path, chunk_size=15))
    assert [len(c) for c in chunks] == [15, 15, 10] and count_events(path) == 40


@pytest.mark.parametrize("name", list(BINNINGS))
def test_binning_xml_round_trip(name):
    assert (
        calochallenge.parse_binning(calochallenge.binning_to_xml(BINNINGS[name])) == BINNINGS[name]
    )


# ----------------------------------------------------------------------------- lenient reads


def test_calochallenge_reads_flat_energies_counts_negatives_and_notices(tmp_path):
    cells = np.zeros((3, 368))
    cells[1, 5] = -2.0
    path = _cc_file(tmp_path / "a.h5", np.array([1e3, 2e3, 4e3]), cells, extra=np.zeros(3))
    s = calochallenge.read(path)
    assert s.energy.tolist() == [1e3, 2e3, 4e3] and s.meta["negative_cells"] == 1
    assert s.meta["notices"] == [f"file '{path}': ignoring extra root objects extra"]


def test_calogan_without_overflow_is_flagged(tmp_path):
    path = tmp_path / "cg.h5"
    with h5py.File(path, "w") as f:
        f["energy"] = np.array([10.0, 20.0])  # (N,) accepted
        for name, shape in calogan.LAYERS.items():
            f[name] = np.ones((2, *shape), np.float32)
    s = load_showers(path)
    assert s.meta["overflow_missing"] and s.conditions["overflow"].shape == (2, 3)
    assert s.energy.tolist() == [10_000.0, 20_000.0] and s.layout == CALOGAN


def test_lhcb_accepts_flat_and_sectioned_deposits(tmp_path):
    point, momentum = np.ones((2, 2)), np.array([[0.0, 0.0, 10.0]] * 2)
    np.savez(
        tmp_path / "flat.npz",
        EnergyDeposit=np.ones((2, 900)),
        ParticlePoint=point,
        ParticleMomentum=momentum,
        ParticlePDG=np.array([11, 11]),
    )
    np.savez(
        tmp_path / "sec.npz",
        EnergyDeposit=np.ones((2, 30, 30, 3)),
        ParticlePoint=point,
        ParticleMomentum=momentum,
    )
    flat, sec = load_showers(tmp_path / "flat.npz"), load_showers(tmp_path / "sec.npz")
    assert flat.cells.shape == (2, 900) and flat.conditions["point"][0].tolist() == [10, 10, 0]
    assert sec.cells[0, 0] == 3.0 and sec.meta["sections"] == 3 and flat.meta["pitch_mm"] == 20.2
    assert flat.energy.tolist() == [10_000.0, 10_000.0]


def test_drop_nonfinite_counts_events(tmp_path):
    cells = np.ones((4, 368))
    cells[2, 3] = np.nan
    path = _cc_file(tmp_path / "nan.h5", np.full(4, 1e3), cells)
    s = calochallenge.read(path, drop_nonfinite=True)
    assert len(s) == 3 and s.meta["dropped_nonfinite"] == 1


# ----------------------------------------------------------------------------- errors


def test_calochallenge_errors_are_exact(tmp_path):
    nan = np.ones((8, 368))
    nan[[1, 4, 6]] = np.inf
    path = _cc_file(tmp_path / "nan.h5", np.full(8, 1e3), nan)
    with pytest.raises(DetganError) as err:
        calochallenge.read(path)
    assert _message(err) == (
        f"file '{path}': dataset 'showers' has NaN or inf in 3 events (first: 1, 4, 6); "
        "fix the file or drop them (--drop-nonfinite)"
    )
    path = _cc_file(tmp_path / "v.h5", np.full((2, 1), 1e3), np.ones((2, 100)))
    with pytest.raises(DetganError) as err:
        calochallenge.read(path, binning="1-photons")
    assert _message(err) == (
        f"file '{path}': dataset 'showers' has 100 voxels per event but binning '1-photons' "
        "expects 368; pass the matching binning"
    )
    path = _cc_file(tmp_path / "e.h5", np.array([1e3, -5.0]), np.ones((2, 368)))
    with pytest.raises(DetganError) as err:
        calochallenge.read(path)
    assert _message(err) == (
        f"file '{path}': dataset 'incident_energies' has values <= 0 in 1 event (first: 1); "
        "incident energies must be > 0 MeV"
    )


def test_missing_dataset_mismatched_length_and_dtype(tmp_path):
    path = tmp_path / "m.h5"
    with h5py.File(path, "w") as f:
        f["showers"] = np.ones((2, 368))
    with pytest.raises(DetganError) as err:
        load_showers(path)
    assert _message(err) == (
        f"file '{path}' has no dataset 'incident_energies' (it has: showers); a CaloChallenge "
        "file needs 'incident_energies' and 'showers'"
    )
    path = _cc_file(tmp_path / "n.h5", np.ones((3, 1)), np.ones((2, 368)))
    with pytest.raises(DetganError, match=r"has 3 events but 'showers' has 2; the file is incons"):
        load_showers(path)
    path = _cc_file(tmp_path / "s.h5", np.ones((2, 1)), np.array([[b"ab"] * 368] * 2))
    with pytest.raises(DetganError, match=r"dataset 'showers' has dtype \|S2, expected real"):
        load_showers(path)


def test_truncated_and_corrupt_files(samples, tmp_path):
    path = save_showers(samples["calochallenge-1-photons"], tmp_path / "ok.h5")
    data = path.read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(DetganError, match=r"is not a readable HDF5 file \(corrupt or truncated"):
        load_showers(tmp_path / "cut.h5", format="calochallenge")
    (tmp_path / "bad.npz").write_bytes(b"not a zip archive")
    with pytest.raises(DetganError) as err:
        load_showers(tmp_path / "bad.npz")
    assert _message(err) == (
        f"file '{tmp_path / 'bad.npz'}' is not a readable .npz archive (corrupt or truncated?)"
    )
    with pytest.raises(DetganError, match=r"^file '.*missing.h5' not found$"):
        load_showers(tmp_path / "missing.h5")


def test_lhcb_refuses_pickles_and_missing_arrays(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(
        path,
        EnergyDeposit=np.array([None, 1], dtype=object),
        ParticlePoint=np.ones((2, 3)),
        ParticleMomentum=np.ones((2, 3)),
    )
    with pytest.raises(DetganError) as err:
        load_showers(path)
    assert _message(err) == (
        f"file '{path}': array 'EnergyDeposit' is a pickled object array, which is not loaded "
        "for safety; re-save it with plain numeric arrays"
    )
    np.savez(tmp_path / "few.npz", EnergyDeposit=np.ones((2, 30, 30)))
    with pytest.raises(DetganError, match=r"has no array 'ParticlePoint' \(it has: EnergyDepos"):
        load_showers(tmp_path / "few.npz")
    assert zipfile.is_zipfile(path)


def test_binning_xml_errors():
    xml = calochallenge.binning_to_xml(BINNINGS["2"]).replace('id="1"', 'id="7"', 1)
    with pytest.raises(DetganError) as err:
        calochallenge.parse_binning(xml)
    assert _message(err) == (
        "binning XML: layer number 1 has id 7; ids must be 0, 1, 2, ... in order"
    )
    with pytest.raises(DetganError) as err:
        calochallenge.parse_binning(calochallenge.binning_to_xml(BINNINGS["2"]), "photon")
    assert _message(err) == "binning XML is for particle 'electron', expected 'photon'"


def test_writers_refuse_other_layouts_and_nonfinite(samples, tmp_path):
    with pytest.raises(DetganError) as err:
        save_showers(samples["calogan"], tmp_path / "x.h5", "calochallenge")
    assert _message(err) == (
        "cannot write 'calogan' showers as CaloChallenge: the cell layouts differ; use --to native"
    )
    bad = samples["calochallenge-1-photons"].select(slice(0, 3))
    bad.cells = bad.cells.copy()
    bad.cells[1, 0] = np.nan
    with pytest.raises(DetganError, match=r"^refusing to write NaN or inf showers in 1 event"):
        save_showers(bad, tmp_path / "nan.h5")
    assert not (tmp_path / "nan.h5").exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(DetganError, match=r"already exists; pass --overwrite"):
        path = save_showers(samples["lhcb-ecal"], tmp_path / "a.npz")
        save_showers(samples["lhcb-ecal"], path)


def test_showers_object_checks_shapes(samples):
    s = samples["calogan"]
    with pytest.raises(DetganError) as err:
        Showers(s.energy, s.cells[:, :10], s.layout)
    assert (
        _message(err)
        == "showers: cells have shape (40, 10), expected (40, 504) for layout 'calogan'"
    )
    assert set(s.images()) == {"layer_0", "layer_1", "layer_2"}
    both = Showers.concat([s.select(slice(0, 10)), s.select(slice(10, 40))])
    np.testing.assert_array_equal(both.cells, s.cells)


@pytest.mark.parametrize("others", [[], ["layer_0"], ["showers"]])
def test_undecodable_dataset_names_give_a_one_line_error(tmp_path, others):
    """A damaged file whose root names h5py cannot decode (returned as bytes) is refused in one
    line naming what it has, whichever format it looks like (found by the slow fuzz test)."""
    path = tmp_path / "odd.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset(b"\xff\xfeab", data=np.zeros(3))
        for name in others:
            f.create_dataset(name, data=np.zeros((3, 2)))
    with pytest.raises(DetganError, match=r"(it has|datasets): .*ab") as info:
        load_showers(path)
    assert "\n" not in str(info.value)
