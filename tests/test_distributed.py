"""Many processes: ``torchrun --nproc_per_node 2 -m detgan train footprint`` (gloo) ends with the
weights and history of one process with the same global batch; the helpers of
:mod:`detgan.distributed` on their own."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from test_footprint_study import synthetic_footprints

from detgan import distributed
from detgan.cli import main
from detgan.io.native import write_arrays
from detgan.train import load_checkpoint
from detgan.utils import DetganError

TINY = {
    "iterations": 3,
    "n_critic": 2,
    "batch_size": 16,
    "hidden": 8,
    "latent_dim": 4,
    "pretrain_steps": 2,
    "snapshots": 2,
    "checkpoint_every": 2,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_args(data, out) -> list[str]:
    args = ["train", "footprint", "--data", str(data), "-o", str(out), "--quiet"]
    args += ["--device", "cpu", "--threads", "1", "--seed", "5"]
    for key, value in TINY.items():
        args += ["--set", f"{key}={value}"]
    return args


def _history(run) -> list[dict]:
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_two_gloo_processes_equal_one_process_with_the_global_batch(tmp_path):
    data = tmp_path / "train.h5"
    write_arrays(data, synthetic_footprints(300, 1), {"trigger_threshold": 115.2, "n_side": 9})
    env = {k: v for k, v in os.environ.items() if k not in distributed.TORCHRUN_VARIABLES}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
    command += ["-m", "detgan", *_train_args(data, tmp_path / "two")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert main(_train_args(data, tmp_path / "one")) == 0

    one, two = load_checkpoint(tmp_path / "one"), load_checkpoint(tmp_path / "two")
    assert one["step"] == two["step"] == TINY["iterations"]
    for name, weights in one["models"].items():
        for key, value in weights.items():
            other = two["models"][name][key]
            if value.is_floating_point():
                scale = value.abs().max().clamp_min(1e-3)
                assert (value - other).abs().max() <= 1e-5 * scale, f"{name}.{key}"
            else:
                assert torch.equal(value, other), f"{name}.{key}"
    # one history line per iteration (process 0 alone writes), terms of the global batch
    h1, h2 = _history(tmp_path / "one"), _history(tmp_path / "two")
    assert [h["step"] for h in h2] == [1, 2, 3] and list(h1[0]) == list(h2[0])
    for a, b in zip(h1, h2):
        for key in ("C1", "C2", "C3", "C4", "generator"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir()
    )  # no temporaries or per-process files left


def test_global_batch_must_divide_among_the_processes(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 4)
    monkeypatch.setattr(distributed, "rank", lambda: 2)
    assert distributed.local_rows(32) == slice(16, 24)
    message = (
        "batch_size 30 (the global batch) does not divide among 4 processes; use a multiple "
        "of 4, e.g. --set batch_size=32"
    )
    with pytest.raises(DetganError, match=rf"^{message}$".replace("(", r"\(").replace(")", r"\)")):
        distributed.check_global_batch(30)


class Conditional(torch.nn.Module):
    """(N, 3) noise and (N,) labels → (N, 2); records the batch sizes it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.linear, self.calls = torch.nn.Linear(3, 2), []

    def forward(self, z, y, scale):
        self.calls.append((len(z), len(y)))
        return self.linear(z) * scale + y[:, None]


def test_local_rows_computes_and_differentiates_only_its_rows():
    net = Conditional()
    z, y, scale = torch.randn(8, 3), torch.randn(8), torch.tensor([2.0])  # scale: not per row
    out = distributed.LocalRows(net, slice(2, 6))(z, y, scale)
    assert net.calls == [(4, 4)] and out.shape == (8, 2)
    assert torch.equal(out[2:6], net(z[2:6], y[2:6], scale)) and not out[:2].any()
    assert not out[6:].any()
    out.sum().backward()
    expected = 2.0 * z[2:6].sum(0)  # only the four local rows contribute
    assert torch.allclose(net.linear.weight.grad[0], expected)


def test_one_process_helpers_are_identities():
    assert distributed.world_size() == 1 and distributed.rank() == 0
    assert distributed.is_main_process() and distributed.local_rows(10) == slice(0, 10)
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.full((2,), 3.0)
    distributed.average_gradients([p])
    assert torch.equal(p.grad, torch.full((2,), 3.0))
    assert distributed.average_values({"b": 1.0, "a": 2.0}) == {"b": 1.0, "a": 2.0}


def test_only_train_runs_in_several_processes(monkeypatch, tmp_path, capsys):
    env = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1"}
    for key, value in {**env, "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(key, value)
    out = ["-o", str(tmp_path / "x.h5")]
    assert main(["generate", str(tmp_path), "-n", "2", "--energy", "5", *out]) == 2
    err = capsys.readouterr().err
    assert "'detgan generate' does not run in several processes" in err
    assert "--shards K --shard-index i" in err
    monkeypatch.delenv("MASTER_PORT")
    with pytest.raises(DetganError, match="LOCAL_RANK is set but MASTER_PORT are not"):
        distributed.init_from_environment()
