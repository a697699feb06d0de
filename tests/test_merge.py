"""Sharded generation and ``detgan merge``: K shards merged equal the unsharded output (footprint
native HDF5, CaloChallenge HDF5, detgan showers HDF5, LHCb .npz); shard ranges; the refusals."""

from __future__ import annotations

import json
import random

import h5py
import numpy as np
import pytest
import torch
from test_footprint_study import synthetic_footprints, tiny_setup

from detgan.cli import main
from detgan.distributed import EventWindow
from detgan.io.native import write_arrays
from detgan.io.shards import SHARD_ATTRS, merge_shards, shard_range
from detgan.io.showers import save_showers
from detgan.sim.calorimeter import CaloSimConfig, simulate
from detgan.studies.calo import calo_preset, train_calo
from detgan.studies.footprint import train_footprint
from detgan.utils import DetganError

CPU = ["--device", "cpu", "--threads", "1"]


def same_content(a, b) -> None:
    """Equal datasets (values and dtypes) and attributes / .npz members and meta."""
    if str(a).endswith(".npz"):
        with np.load(a) as x, np.load(b) as y:
            assert x.files == y.files
            for k in x.files:
                if k == "meta":
                    assert json.loads(str(x[k])) == json.loads(str(y[k]))
                else:
                    assert x[k].dtype == y[k].dtype and np.array_equal(x[k], y[k]), k
        return
    with h5py.File(a) as x, h5py.File(b) as y:
        assert set(x) == set(y) and set(x.attrs) == set(y.attrs)
        for k in x:
            assert x[k].dtype == y[k].dtype and np.array_equal(x[k][()], y[k][()]), k
        for k in x.attrs:
            assert np.array_equal(x.attrs[k], y.attrs[k]), k


@pytest.fixture(scope="module")
def footprint_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    data = root / "train.h5"
    write_arrays(data, synthetic_footprints(400, 1), {"trigger_threshold": 115.2, "n_side": 9})
    setup = tiny_setup(iterations=2, pretrain_steps=1)
    return train_footprint(setup, data, root / "run", progress=False)


def test_shard_ranges_tile_the_events():
    for n, k in [(10, 3), (9000, 4), (5, 5), (7, 1)]:
        parts = [shard_range(n, k, i) for i in range(k)]
        assert parts[0][0] == 0 and parts[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
        assert max(b - a for a, b in parts) - min(b - a for a, b in parts) <= 1
    with pytest.raises(DetganError, match="would leave shards empty; use --shards 3 or fewer"):
        shard_range(3, 4, 0)


def test_event_window_runs_only_the_batches_of_its_events():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    z = torch.randn(10, 3)
    window = EventWindow(net, 4, 6)  # events 4, 5 lie in the second batch of 4
    out = torch.cat([window(z[i : i + 4]) for i in range(0, 10, 4)])
    assert torch.equal(out[4:8], net(z[4:8])) and not out[:4].any() and not out[8:].any()
    assert window.in_features == 3  # attributes of the wrapped module


def test_footprint_shards_merge_to_the_unsharded_file(footprint_run, tmp_path):
    # 9000 events: the sampler's batches of 4096 are split unevenly over 3 shards
    base = ["generate", str(footprint_run), "-n", "9000", "--energy", "uniform:1,100"]
    base += ["--seed", "3", *CPU]
    assert main([*base, "-o", str(tmp_path / "full.h5")]) == 0
    shards = [tmp_path / f"part-{i}.h5" for i in range(3)]
    for i, path in enumerate(shards):
        assert main([*base, "--shards", "3", "--shard-index", str(i), "-o", str(path)]) == 0
    with h5py.File(shards[1]) as f:
        attrs = {k: int(f.attrs[k]) for k in SHARD_ATTRS}
        assert attrs == {
            "shards": 3,
            "shard_index": 1,
            "shard_start": 3000,
            "shard_stop": 6000,
            "shard_total_events": 9000,
        }
        assert f["footprint"].shape == (3000, 9, 9) and int(f.attrs["n_events"]) == 3000
    order = [str(p) for p in shards]
    random.Random(1).shuffle(order)  # any order
    assert main(["merge", str(tmp_path / "merged.h5"), *order]) == 0
    same_content(tmp_path / "full.h5", tmp_path / "merged.h5")


def test_merge_refuses_incomplete_repeated_mixed_and_foreign_files(footprint_run, tmp_path):
    def shard(i, k=2, seed=3, name=None):
        path = tmp_path / (name or f"s{k}-{i}-{seed}.h5")
        if not path.exists():
            args = ["generate", str(footprint_run), "-n", "30", "--energy", "50"]
            args += ["--seed", str(seed), "--shards", str(k), "--shard-index", str(i)]
            assert main([*args, "-o", str(path), *CPU]) == 0
        return path

    out = tmp_path / "m.h5"
    with pytest.raises(DetganError, match=r"^shard 1 of 2 is missing; give all 2 shards$"):
        merge_shards([shard(0)], out)
    with pytest.raises(DetganError, match=r"^shard 0 is given twice \("):
        merge_shards([shard(0), shard(0, name="copy.h5"), shard(1)], out)
    with pytest.raises(DetganError, match=r"come from different generations \(attribute 'seed'"):
        merge_shards([shard(0), shard(1, seed=4)], out)
    with pytest.raises(DetganError, match="is shard 0 of 3 .* merge the shards of one generation"):
        merge_shards([shard(0), shard(0, k=3)], out)
    plain = tmp_path / "plain.h5"
    write_arrays(plain, {"energy": np.ones(3)})
    with pytest.raises(DetganError, match=r"is not a shard \(no 'shards' attribute\)"):
        merge_shards([plain, shard(1)], out)
    with pytest.raises(DetganError, match="is one of the shards"):
        merge_shards([shard(0), shard(1)], shard(0), overwrite=True)
    assert not out.exists()
    merge_shards([shard(1), shard(0)], out)
    with pytest.raises(DetganError, match="already exists; pass --overwrite"):
        merge_shards([shard(1), shard(0)], out)
    with pytest.raises(DetganError, match="name .* alike"):
        merge_shards([shard(1), shard(0)], tmp_path / "m.npz")


def test_generate_shard_options_are_checked(footprint_run, tmp_path, capsys):
    base = ["generate", str(footprint_run), "-n", "4", "--energy", "50", *CPU]
    out = ["-o", str(tmp_path / "x.h5")]
    assert main([*base, "--shards", "2", *out]) == 2
    assert "--shards 2 needs --shard-index I (0..1)" in capsys.readouterr().err
    assert main([*base, "--shards", "2", "--shard-index", "2", *out]) == 2
    assert "--shard-index must lie in 0..1, got 2" in capsys.readouterr().err
    assert main([*base, "--shards", "5", "--shard-index", "0", *out]) == 2
    assert "use --shards 4 or fewer" in capsys.readouterr().err
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.parametrize(
    "kind, geometry, name",
    [
        ("dense", "atlas-cluster", "atlas.h5"),
        ("calochallenge", "calochallenge-1-photons", "cc.h5"),
        ("lhcb-conv", "lhcb-ecal", "lhcb.npz"),
    ],
)
def test_calorimeter_shards_merge_to_the_unsharded_file(kind, geometry, name, tmp_path):
    data = tmp_path / name
    save_showers(simulate(CaloSimConfig(geometry=geometry, batch_size=40), 40, seed=3), data)
    tiny = {"latent_dim": 8, "iterations": 1, "batch_size": 8, "checkpoint_every": 1}
    tiny.update({"channels": 8, "regressor_steps": 1} if kind == "lhcb-conv" else {"hidden": 16})
    run = train_calo(calo_preset(kind, "quick").with_overrides(tiny), data, tmp_path / "run")
    base = ["generate", str(run), "--energy", str(data), "--seed", "2", *CPU]
    full, merged = tmp_path / f"full{data.suffix}", tmp_path / f"merged{data.suffix}"
    assert main([*base, "-o", str(full)]) == 0
    parts = [tmp_path / f"p{i}{data.suffix}" for i in range(3)]
    for i, part in enumerate(parts):
        assert main([*base, "--shards", "3", "--shard-index", str(i), "-o", str(part)]) == 0
    assert main(["merge", str(merged), *map(str, parts[::-1])]) == 0
    same_content(full, merged)
