"""Timing library and fast path: FLOP counts, repetition bookkeeping, folding, precision, CLI.

Nothing here asserts a speed: benchmarks measure, tests check what is measured and how.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from detgan import bench, fastpath
from detgan.cli import main
from detgan.models.footprint import PaperGenerator
from detgan.transforms import BoxCox, Chain, Log, Standardise
from detgan.utils import DetganError

#: Table 1 of [E18], multiply-add = 2: linear 81→80, deconvs 1→3→5→7→9, 3×3 'same' head.
PAPER_FLOPS = (
    2 * 81 * 80
    + 2 * 80 * 64 * 9
    + 2 * 64 * 128 * 9 * 9
    + 2 * 128 * 128 * 9 * 25
    + 2 * 128 * 256 * 9 * 49
    + 2 * 256 * 9 * 81
)


def test_count_flops_linear_and_paper_generator():
    assert bench.count_flops(nn.Linear(10, 20), torch.zeros(4, 10)) == 2 * 4 * 10 * 20
    gen = PaperGenerator().eval()
    assert bench.count_flops(gen, torch.zeros(3, 80), torch.zeros(3)) == 3 * PAPER_FLOPS


def test_matmul_rate_is_positive():
    rate = bench.matmul_rate(n=64, repeats=2)
    assert math.isfinite(rate) and rate > 0


def test_time_batches_covers_m_events_in_batches_after_warmup():
    calls: list[int] = []
    timing = bench.time_batches(calls.append, batch=30, events=100, repeats=3, warmup=2)
    assert calls[:2] == [30, 30]  # warm-up, untimed
    assert calls[2:] == [30, 30, 30, 10] * 3  # M = 100 events per repetition
    assert len(timing.times) == 3 and timing.events == 100
    assert bench.time_batches(calls.append, batch=1, repeats=1).events == 100  # max(batch, 100)


def test_row_fraction_and_record():
    row = bench.BenchRow(
        "m",
        "cpu",
        "torch",
        "float32",
        1,
        10,
        flops_per_event=1e6,
        matmul_gflops=10.0,
        timing=bench.Timing(10, 100, [0.02, 0.01, 0.03], 0.1),
    )
    assert row.timing.ms_per_event == pytest.approx(0.2)
    assert row.gflops == pytest.approx(5.0)  # 1e6 FLOP / 0.2 ms
    assert row.fraction == pytest.approx(0.5)
    rec = json.loads(json.dumps(row.record()))
    assert rec["repetitions"] == 3 and rec["median_ms"] == pytest.approx(0.2)
    assert rec["cold_ms_per_event"] == pytest.approx(10.0) and rec["timer_scope"] == "generation"


def test_out_of_memory_is_reported_not_replaced():
    def run(n):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")

    row = bench._row_timing(bench.BenchRow("m", "cpu", "torch", "float32", 1, 10**6), run, 2, None)
    assert row.status == "out of memory" and row.timing is None
    assert "out of memory" in bench.format_table([row])
    with pytest.raises(ValueError):
        bench._row_timing(
            bench.BenchRow("m", "cpu", "torch", "float32", 1, 1),
            lambda n: (_ for _ in ()).throw(ValueError("bug")),
            1,
            None,
        )


def test_thread_recommendation():
    def row(threads, batch, ms):
        t = bench.Timing(batch, 100, [ms * 100 / 1e3], 0.0)
        return bench.BenchRow("g", "cpu", "torch", "float32", threads, batch, timing=t)

    rows = [row(1, 1, 1.0), row(2, 1, 2.0), row(1, 100, 1.0), row(2, 100, 0.5)]
    rec = bench.thread_recommendation(rows)
    assert rec["speedup_of_most_threads"] == {"g": {1: 0.5, 100: 2.0}}
    assert rec["recommended"] == 1  # 2 threads are slower at batch 1
    assert bench.thread_recommendation(rows[2:])["recommended"] == 2


def _random_bn(gen: nn.Module) -> nn.Module:
    return fastpath._randomise(gen).eval()


def test_fold_batchnorm_matches_and_removes_transposed_convs():
    gen = _random_bn(PaperGenerator())
    folded = fastpath.fold_batchnorm(gen)
    kinds = {type(m) for m in folded.modules()}
    assert nn.BatchNorm2d not in kinds and nn.ConvTranspose2d not in kinds
    z, y = torch.randn(64, 80), torch.randn(64)
    with torch.no_grad():
        ref, got = gen(z, y), folded(z, y)
    assert (ref > 0).float().mean() > 0.2  # a non-trivial output
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    assert isinstance(gen.deconv[0], nn.ConvTranspose2d)  # the original is untouched


@pytest.mark.parametrize(
    "transform",
    [
        Log(offset=1.0),
        Standardise(scalar=False),
        BoxCox(shift=1.0),
        Chain(Log(offset=0.5, base=2.0), Standardise(scalar=True)),
    ],
)
def test_transform_modules_equal_the_transforms(transform):
    x = torch.rand(200, 3) * 50 + 0.1
    transform.fit(x)
    fwd, inv = fastpath.transform_module(transform), fastpath.transform_module(transform, True)
    assert torch.allclose(fwd(x), transform.forward(x).float(), rtol=1e-5, atol=1e-5)
    y = transform.forward(x).float()
    assert torch.allclose(inv(y), transform.inverse(y).float(), rtol=1e-4, atol=1e-4)


def test_optimised_pipeline_equals_reference_and_bf16_is_close():
    pipes = fastpath.default_pipelines()
    assert [p.name for p in pipes][:2] == ["footprint-paper", "footprint-dense"]
    paper = pipes[0]
    fast = fastpath.optimise(paper)
    assert fast.info["channels_last"] and fast.info["fold"]
    check = fastpath.accuracy_check(paper, fast, n=200)
    assert check["rel_max"] < 1e-5
    bf16 = fastpath.accuracy_check(paper, fast, "bf16", n=200)
    assert 0 < bf16["rel_sum"] < 0.05  # bf16 changes the numbers, but only a little


def test_precision_and_cuda_graph_errors():
    with pytest.raises(
        DetganError, match="precision tf32 needs a CUDA device; use float32 or bf16 on the CPU"
    ):
        with fastpath.precision("tf32", "cpu"):
            pass
    with pytest.raises(DetganError, match="unknown precision 'fp8'"):
        with fastpath.precision("fp8", "cpu"):
            pass
    with pytest.raises(DetganError, match="CUDA graphs need the pipeline on a CUDA device"):
        fastpath.CudaGraphPipeline(fastpath.default_pipelines()[1], 4)


def test_bench_pipeline_rows():
    pipe = fastpath.default_pipelines()[1]
    rows = bench.bench_pipeline(pipe, threads=(1,), batches=(1, 7), repeats=2, events=14)
    assert [(r.batch, r.threads, r.status) for r in rows] == [(1, 1, "ok"), (7, 1, "ok")]
    assert all(r.flops_per_event > 0 and r.matmul_gflops > 0 for r in rows)
    assert rows[0].options["accuracy_vs_float32"]["rel_max"] < 1e-5
    table = bench.format_calogan_table(rows)
    assert "| footprint-dense | cpu | torch | float32 | 1 |" in table and "batch 7" in table


def test_refiner_pipeline_round_trips_units_and_is_skipped_above_its_cap():
    pipe = fastpath.default_refiner()
    if pipe is None:
        pytest.skip("the refiner is not installed")
    traces = pipe.sample_conditions(3, torch.Generator().manual_seed(0))
    assert traces.shape == (3, 9, 9, 80) and (traces >= 0).all()
    u = pipe.label(traces)
    assert torch.allclose(pipe.output(u), traces, rtol=1e-5, atol=1e-5)
    rows = bench.bench_pipeline(pipe, threads=(1,), batches=(2, 1000), repeats=1, events=2)
    assert [r.status for r in rows] == ["ok", "skipped (CPU time)"]


def test_bench_cli_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(
        [
            "bench",
            "--no-onnx",
            "--no-sim",
            "--batch-sizes",
            "1,4",
            "--threads",
            "1",
            "--repeats",
            "1",
            "--events",
            "4",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "ms per event" in text and "footprint-paper" in text and "load average" in text
    doc = json.loads(out.read_text())
    assert {"footprint-paper", "footprint-dense"} <= {r["name"] for r in doc["records"]}
    assert {r["batch"] for r in doc["records"]} == {1, 4}
    assert doc["hardware"]["cores_available"] >= 1
    assert main(["bench", "--json", str(out), "--no-sim"]) == 2  # refuses to overwrite
    assert "already exists; pass --overwrite" in capsys.readouterr().err


def test_bench_cli_bad_thread_list(capsys):
    assert main(["bench", "--threads", "one"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "detgan: error: --threads expects comma-separated integers, got 'one'"
