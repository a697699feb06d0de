"""Cell layouts, built-in binnings, simulation geometries and spot binning."""

from __future__ import annotations

import json

import numpy as np
import pytest

from detgan.sim.geometry import (
    ATLAS_89,
    ATLAS_247,
    BINNINGS,
    CALOGAN,
    GEOMETRIES,
    SpotBinner,
    binning_for_voxels,
    get_geometry,
    layout_from_dict,
)
from detgan.utils import DetganError


@pytest.mark.parametrize(
    ("name", "n_voxels"), [("1-photons", 368), ("1-pions", 533), ("2", 6480), ("3", 40500)]
)
def test_builtin_binning_sizes(name, n_voxels):
    assert BINNINGS[name].n_cells == n_voxels
    assert binning_for_voxels(n_voxels) is BINNINGS[name]


def test_dataset1_photon_offsets_and_layers():
    b = BINNINGS["1-photons"]
    ranges = {k: (b.layer_slice(k).start, b.layer_slice(k).stop) for k in b.relevant_layers}
    assert ranges == {0: (0, 8), 1: (8, 168), 2: (168, 358), 3: (358, 363), 12: (363, 368)}
    assert b.alpha_binned_layers == [1, 2]
    assert len(b.layers) == 24 and b.e_min == 1.0


def test_dataset1_pion_offsets():
    b = BINNINGS["1-pions"]
    starts = [b.layer_slice(k).start for k in b.relevant_layers]
    assert b.relevant_layers == [0, 1, 2, 3, 12, 13, 14]
    assert starts == [0, 8, 108, 208, 213, 363, 523]
    assert b.alpha_binned_layers == [1, 2, 12, 13]


def test_check_values_of_voxel_coordinates():
    c2 = BINNINGS["2"].voxel_centres()
    np.testing.assert_allclose(
        [c2["r"][0], c2["alpha"][0], c2["eta"][0], c2["phi"][0]],
        [2.325, -2.945243, -2.280326, -0.453585],
        atol=1e-6,
    )
    c1 = BINNINGS["1-photons"].voxel_centres()
    assert c1["layer"][8] == 1
    np.testing.assert_allclose(
        [c1["r"][8], c1["alpha"][8], c1["eta"][8], c1["phi"][8]],
        [1.0, -2.827433, -0.951057, -0.309017],
        atol=1e-6,
    )
    assert BINNINGS["2"].images(np.zeros((4, 6480)))["layer_44"].shape == (4, 16, 9)


def test_unknown_voxel_count_is_refused():
    with pytest.raises(DetganError, match=r"^no built-in CaloChallenge binning has 100 voxels "):
        binning_for_voxels(100)


def test_calogan_layout_matches_the_format():
    assert CALOGAN.n_cells == 504
    assert [CALOGAN.layer_slice(k).start for k in range(3)] == [0, 288, 432]
    x, y = CALOGAN.layers[0].centres()  # x_a = -240 + (a + 1/2) 480/n_x
    np.testing.assert_allclose(x, [-160.0, 0.0, 160.0])
    np.testing.assert_allclose(y[:2], [-237.5, -232.5])
    images = CALOGAN.images(np.arange(2 * 504).reshape(2, 504))
    assert images["layer_1"].shape == (2, 12, 12) and images["layer_1"][0, 0, 1] == 289


def test_atlas_cluster_layouts():
    assert ATLAS_89.n_cells == 89
    assert [layer.n_cells for layer in ATLAS_89.layers] == [21, 48, 6, 14]
    assert ATLAS_89.layer_names == ["middle", "strip", "presampler", "back"]
    x, y = ATLAS_89.cell_centres()
    assert (x[10], y[10]) == (0.0, 0.0)  # cluster centre is Middle cell 10
    core = [2, 3, 4, 9, 10, 11, 16, 17, 18]
    assert np.all(np.abs(y[core]) < 0.026 * 1500) and np.all(np.abs(y[[0, 6]]) > 100)
    assert [layer.n_cells for layer in ATLAS_247.layers] == [77, 112, 14, 44]
    assert ATLAS_247.n_cells == 247


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_geometries_serialise_and_layouts_round_trip(name):
    geo = get_geometry(name)
    text = json.dumps(geo.to_dict())
    assert layout_from_dict(json.loads(text)["layout"]) == geo.layout
    assert len(geo.depths) == len(geo.noise) == len(geo.threshold) == geo.n_slots


def test_unknown_geometry_message():
    with pytest.raises(DetganError) as err:
        get_geometry("cms")
    assert str(err.value) == (
        "unknown geometry 'cms'; choose one of: atlas-cluster, atlas-cluster-247, calogan, "
        "lhcb-ecal, calochallenge-1-photons, calochallenge-2"
    )


def test_spot_binner_atlas_layers_and_cells():
    b = SpotBinner(get_geometry("atlas-cluster"))
    depth = np.array([1.0, 2.2, 3.0, 10.0, 23.0, 30.0], dtype=np.float32)
    assert b.layer_of(depth).tolist() == [4, 2, 1, 0, 3, 4]  # 4 = no layer (dead / behind)
    zeros = np.zeros(6, np.float32)
    slots = b.bin_xy(zeros, zeros + 1.0, depth)
    # dead material and leakage go to the lost slot 89 + 4 = 93; middle centre is cell 10
    assert slots[0] == 93 and slots[-1] == 93 and slots[3] == 10
    assert slots[1] == 69 + 1 * 2 + 1 and slots[4] == 75 + 1 * 7 + 3  # ps (1, 1), back (1, 3)
    far = b.bin_xy(
        np.array([500.0], np.float32), np.zeros(1, np.float32), np.array([10.0], np.float32)
    )
    assert far[0] == 89 + 0  # overflow of the middle layer


def test_spot_binner_polar_matches_flat_index():
    b = SpotBinner(get_geometry("calochallenge-1-photons"))
    depth = np.array([3.0, 3.0, 10.0, 30.0, 45.0], dtype=np.float32)
    r = np.array([1.0, 16.0, 2.0, 150.0, 1.0], dtype=np.float32)
    frac = np.array([0.01, 0.95, 0.5, 0.3, 0.1], dtype=np.float32)
    slots = b.bin_polar(r, frac, depth)
    # layer 1: j=0, i=0 -> 8; j=9, i=7 (15-20 mm) -> 8 + 9*16 + 7; layer 2: j=5, i=1 -> 168+5*19+1
    assert slots.tolist()[:4] == [8, 8 + 9 * 16 + 7, 168 + 5 * 19 + 1, 363 + 1]
    assert slots[4] == 368 + 24  # behind the calorimeter: lost
    xy = b.bin_cartesian_polar(
        np.array([-1.0], np.float32), np.array([-0.1], np.float32), np.array([3.0], np.float32)
    )
    assert xy[0] == 8  # α ≈ -π lands in the first α bin
