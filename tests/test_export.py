"""ONNX export: ONNX Runtime equals PyTorch within 1e-5 (relative) on 1000 events; CLI export."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detgan import fastpath
from detgan.cli import main

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from detgan.export import check_onnx, export_onnx  # noqa: E402


@pytest.fixture(scope="module")
def pipelines():
    return {p.name: p for p in fastpath.default_pipelines()}


@pytest.mark.parametrize("name", ["footprint-paper", "footprint-dense"])
def test_onnx_runtime_equals_pytorch_on_1000_events(tmp_path, pipelines, name):
    path = export_onnx(pipelines[name], tmp_path / "model.onnx")
    check = check_onnx(path, pipelines[name], n=1000, rtol=1e-5)
    assert check["ok"], check
    assert check["n"] == 1000 and check["max_rel"] < 1e-5


def test_dynamic_batch_and_metadata(tmp_path, pipelines):
    pipe = pipelines["footprint-paper"]
    path = export_onnx(pipe, tmp_path / "paper.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    assert meta["latent_dim"] == "80" and "footprint-paper" in meta["info"]
    for n in (1, 37):
        z = np.random.default_rng(n).standard_normal((n, 80), dtype=np.float32)
        c = np.full(n, 30.0, dtype=np.float32)
        out = sess.run(None, {"z": z, "condition": c})[0]
        assert out.shape == (n, 9, 9)
        with torch.inference_mode():
            ref = pipe(torch.from_numpy(z), torch.from_numpy(c)).numpy()
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_export_refuses_existing_file(tmp_path, pipelines):
    target = tmp_path / "m.onnx"
    target.write_text("keep")
    from detgan.utils import DetganError

    with pytest.raises(DetganError, match="already exists; pass --overwrite"):
        export_onnx(pipelines["footprint-dense"], target, overwrite=False)
    assert target.read_text() == "keep"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A one-iteration footprint run of the dense design on 300 simulated events."""
    from detgan.io.native import write_arrays
    from detgan.sim.airshower import make_config, simulate
    from detgan.studies.footprint import footprint_preset, train_footprint

    tmp = tmp_path_factory.mktemp("run")
    events = simulate(make_config(), 300, 0)
    data = write_arrays(
        tmp / "data.h5",
        {k: events[k] for k in ("footprint", "energy")},
        {"trigger_threshold": 115.2},
    )
    setup = footprint_preset("quick").with_overrides(
        {"iterations": 2, "pretrain_steps": 0, "batch_size": 32, "n_critic": 1, "hidden": 32}
    )
    return train_footprint(setup, data, tmp / "run", progress=False)


def test_cli_export_of_a_run(tmp_path, run_dir, capsys):
    out = tmp_path / "gen.onnx"
    assert main(["export", str(run_dir), "--format", "onnx", "-o", str(out)]) == 0
    line = capsys.readouterr().out
    assert "ONNX Runtime = PyTorch on 1000 events" in line and out.is_file()
    pipe = fastpath.load_pipeline(run_dir)
    assert check_onnx(out, pipe, n=1000)["ok"]
    assert main(["export", str(run_dir), "-o", str(out)]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err


def test_cli_export_of_a_non_run(tmp_path, capsys):
    assert main(["export", str(tmp_path), "-o", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err
    assert "checkpoint.pt' not found; is this a training run directory?" in err
