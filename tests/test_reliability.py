"""Reliability: SIGKILLed trainings resume exactly, interrupted writers leave no partial file,
non-finite losses and full disks stop a run with its last good checkpoint intact.

The kill/resume harness launches ``detgan train footprint`` as a real process and kills it with
SIGKILL at random moments — during start-up, mid-iteration, mid-checkpoint-write — then
relaunches it (``--resume`` when a checkpoint exists, else afresh) until the run ends. After
every kill the checkpoint must load (weights_only + content hash) and agree with the history;
at the end the history must be exactly that of an uninterrupted run. Set
``DETGAN_RELIABILITY_LOG=FILE`` to append the figures of each harness run to FILE (JSON lines).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest
import torch

from detgan import losses
from detgan.cli import main
from detgan.io.native import read_arrays
from detgan.io.showers import load_showers
from detgan.train import CHECKPOINT_NAME, HISTORY_NAME, load_checkpoint

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
EVERY = 4  # checkpoint interval of the harness runs: kills land between and during writes
TINY = [
    "--set",
    "hidden=32",
    "--set",
    "pretrain_steps=5",
    "--set",
    "batch_size=32",
    "--set",
    "n_critic=2",
    "--set",
    f"checkpoint_every={EVERY}",
    "--set",
    "ema_decay=0.9",
]
RUNTIME = ["--quiet", "--device", "cpu", "--threads", "1"]


def _detgan(*args: str) -> list[str]:
    return [sys.executable, "-m", "detgan", *map(str, args)]


def _train_args(data: Path, run: Path, iterations: int, resume: bool) -> list[str]:
    again = ["--resume"] if resume else ["--overwrite"]
    return [
        "train",
        "footprint",
        "--data",
        str(data),
        "-o",
        str(run),
        "--set",
        f"iterations={iterations}",
        *TINY,
        *RUNTIME,
        *again,
    ]


def _in_process(capsys, *argv: str) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def _steps(run: Path) -> list[dict]:
    """Complete history lines (a line cut by a kill has no newline yet)."""
    path = run / HISTORY_NAME
    if not path.exists():
        return []
    text = path.read_text()
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]


def _losses(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "time"} for row in rows]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Small inputs made in-process: footprint data, sim/data traces, a CaloGAN file."""
    d = tmp_path_factory.mktemp("inputs")
    for name, variant, seed in (("fp", "data", 1), ("sim", "sim", 2), ("data", "data", 3)):
        assert (
            main(
                [
                    "simulate",
                    "airshower",
                    "-n",
                    "300",
                    "--variant",
                    variant,
                    "--seed",
                    str(seed),
                    "-o",
                    str(d / f"{name}.h5"),
                    "--quiet",
                    "--workers",
                    "1",
                ]
            )
            == 0
        )
    assert (
        main(
            [
                "simulate",
                "calo",
                "--geometry",
                "calogan",
                "-n",
                "300",
                "-o",
                str(d / "calo.h5"),
                "--quiet",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "train",
                "footprint",
                "--data",
                str(d / "fp.h5"),
                "-o",
                str(d / "fprun"),
                "--set",
                "iterations=3",
                *TINY,
                *RUNTIME,
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "train",
                "refiner",
                "--sim",
                str(d / "sim.h5"),
                "--data",
                str(d / "data.h5"),
                "-o",
                str(d / "rrun"),
                "--iterations",
                "2",
                "--set",
                "batch_size=8",
                "--set",
                "n_critic=1",
                *RUNTIME,
            ]
        )
        == 0
    )
    return {k: d / f"{k}.h5" for k in ("fp", "sim", "data", "calo")} | {
        "fprun": d / "fprun",
        "rrun": d / "rrun",
    }


# ------------------------------------------------------------------------- kill and resume
@dataclasses.dataclass
class KillLog:
    """Figures of one harness run."""

    kills: int = 0
    killed_in_startup: int = 0
    fresh_starts: int = 0
    resumes: int = 0
    resumes_that_trained_on: int = 0
    resumes_killed_in_startup: int = 0
    resumes_failed: int = 0
    checkpoints_verified: int = 0
    orphan_temporaries_seen: int = 0


def _kill_at_random_moment(
    proc: subprocess.Popen, run: Path, start: int, launched: int, rng: random.Random
) -> str | None:
    """SIGKILL ``proc`` at a random moment; return 'startup'/'training', None if it ended."""
    if rng.random() < 0.25:  # anywhere in start-up: imports, data loading, checkpoint loading
        try:
            proc.wait(timeout=rng.uniform(0.05, 2.5))
            return None
        except subprocess.TimeoutExpired:
            proc.kill()
            return "startup"
    target, history = start + rng.randint(1, 2 * EVERY), run / HISTORY_NAME
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        fresh = history.exists() and history.stat().st_mtime_ns > launched
        if fresh and (_steps(run) or [{"step": 0}])[-1]["step"] >= target:
            break
        time.sleep(0.005)
    if proc.poll() is not None:
        return None
    time.sleep(rng.uniform(0.0, 0.06))  # somewhere inside the next iteration or write
    proc.kill()
    return "training"


def _check_after_kill(run: Path, log: KillLog, previous_step: int) -> int:
    """The checkpoint loads (weights_only + hash) and agrees with the history; returns its step."""
    names = {p.name for p in run.iterdir()}
    orphans = {n for n in names if n.startswith(f".{CHECKPOINT_NAME}.tmp-")}
    log.orphan_temporaries_seen += len(orphans)
    assert names - orphans <= {CHECKPOINT_NAME, HISTORY_NAME, "config.json"}, names
    if CHECKPOINT_NAME not in names:
        return 0
    state = load_checkpoint(run)
    log.checkpoints_verified += 1
    step = int(state["step"])
    assert step >= previous_step, "a checkpoint went back in time"
    assert step % EVERY == 0 or state["finished"]
    rows = _steps(run)
    assert [r["step"] for r in rows[:step]] == list(range(1, step + 1))
    assert (run / HISTORY_NAME).stat().st_size >= state["history_bytes"]
    return step


def kill_and_resume(data: Path, run: Path, iterations: int, n_kills: int, seed: int) -> KillLog:
    """Kill ``detgan train footprint`` ``n_kills`` times at random, resuming after each."""
    rng, log, step = random.Random(seed), KillLog(), 0
    while True:
        resume = (run / CHECKPOINT_NAME).exists()
        launched = time.time_ns()
        proc = subprocess.Popen(
            _detgan(*_train_args(data, run, iterations, resume)),
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        phase = None
        if log.kills < n_kills:
            phase = _kill_at_random_moment(proc, run, step, launched, rng)
        _, err = proc.communicate(timeout=600)
        if phase is None:
            assert proc.returncode == 0, err
        else:
            assert proc.returncode == -signal.SIGKILL, err
            log.kills += 1
            log.killed_in_startup += phase == "startup"
        if resume:
            log.resumes += 1
            log.resumes_failed += proc.returncode not in (0, -signal.SIGKILL)
            log.resumes_killed_in_startup += phase == "startup"
            trained_on = bool(_steps(run)) and _steps(run)[-1]["step"] > step
            log.resumes_that_trained_on += proc.returncode == 0 or trained_on
        else:
            log.fresh_starts += 1
        step = _check_after_kill(run, log, step)
        if proc.returncode == 0:
            return log


def _record(name: str, log: KillLog, **extra) -> None:
    figures = {"test": name, **dataclasses.asdict(log), **extra}
    print(json.dumps(figures))
    if os.environ.get("DETGAN_RELIABILITY_LOG"):
        with open(os.environ["DETGAN_RELIABILITY_LOG"], "a") as f:
            f.write(json.dumps(figures) + "\n")


def _assert_exact_and_complete(run: Path, reference: Path, iterations: int) -> None:
    rows = _steps(run)
    assert [r["step"] for r in rows] == list(range(1, iterations + 1))  # continuous, no repeats
    assert _losses(rows) == _losses(_steps(reference))  # identical to the uninterrupted run
    state = load_checkpoint(run)
    assert state["step"] == iterations and state["finished"]
    ref = load_checkpoint(reference)
    for name, weights in ref["models"].items():
        for key, value in weights.items():
            assert torch.equal(state["models"][name][key], value), (name, key)
    assert sorted(p.name for p in run.iterdir()) == sorted(
        [CHECKPOINT_NAME, HISTORY_NAME, "config.json"]
    )


def _kill_resume_case(
    files, tmp_path, capsys, iterations: int, n_kills: int, seed: int, name: str
) -> KillLog:
    reference = tmp_path / "reference"
    code, err = _in_process(capsys, *_train_args(files["fp"], reference, iterations, False))
    assert code == 0, err
    log = kill_and_resume(files["fp"], tmp_path / "run", iterations, n_kills, seed)
    _record(name, log, iterations=iterations)
    assert log.kills == n_kills and log.resumes_failed == 0
    # every resume that was not killed during its start-up went on training (or finished)
    assert log.resumes_that_trained_on + log.resumes_killed_in_startup >= log.resumes
    _assert_exact_and_complete(tmp_path / "run", reference, iterations)
    return log


def test_killed_training_resumes_exactly(files, tmp_path, capsys):
    _kill_resume_case(
        files, tmp_path, capsys, iterations=24, n_kills=3, seed=11, name="kill-resume-fast"
    )


@pytest.mark.slow
@pytest.mark.parametrize("seed", [101, 202])
def test_killed_training_resumes_exactly_many_times(files, tmp_path, capsys, seed):
    _kill_resume_case(
        files,
        tmp_path,
        capsys,
        iterations=80,
        n_kills=12,
        seed=seed,
        name=f"kill-resume-slow-{seed}",
    )


# ------------------------------------------------------------------- interrupted writers
def _writer_cases(files: dict[str, Path], out: Path) -> dict[str, list[str]]:
    return {
        "simulate-airshower": [
            "simulate",
            "airshower",
            "-n",
            "4000",
            "--batch-size",
            "100",
            "--workers",
            "1",
            "--quiet",
            "-o",
            str(out),
        ],
        "simulate-calo": [
            "simulate",
            "calo",
            "--geometry",
            "calogan",
            "-n",
            "1500",
            "--batch-size",
            "50",
            "--quiet",
            "-o",
            str(out),
        ],
        "generate": [
            "generate",
            str(files["fprun"]),
            "-n",
            "200000",
            "--energy",
            "uniform:1,100",
            "--device",
            "cpu",
            "--threads",
            "1",
            "-o",
            str(out),
        ],
        "refine": [
            "refine",
            str(files["rrun"]),
            str(files["sim"]),
            "--chunk-size",
            "10",
            *RUNTIME,
            "-o",
            str(out),
        ],
        "convert": [
            "convert",
            str(files["calo"]),
            "--chunk-size",
            "3",
            "--to",
            "native",
            "-o",
            str(out),
        ],
    }


def _interrupt_while_writing(argv: list[str], out: Path, sig: int, rng: random.Random) -> str:
    """Start the command, send ``sig`` at a random moment while its temporary exists."""
    proc = subprocess.Popen(
        _detgan(*argv), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    tmp = out.with_name(f".{out.name}.tmp-{proc.pid}")
    deadline = time.monotonic() + 240
    while proc.poll() is None and not tmp.exists() and time.monotonic() < deadline:
        time.sleep(0.002)
    time.sleep(rng.uniform(0.0, 0.03))
    assert proc.poll() is None, f"{argv[0]} ended before it could be interrupted; make it longer"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    expected = -signal.SIGKILL if sig == signal.SIGKILL else 130
    assert proc.returncode == expected, err
    return err


def _check_output(name: str, out: Path) -> None:
    if name in ("simulate-calo", "convert"):
        assert len(load_showers(out)) == {"convert": 300, "simulate-calo": 1500}[name]
    else:
        with h5py.File(out) as f:
            assert len(f) > 0
        read_arrays(out, ["energy"])


def _interrupted_then_rerun(files, tmp_path, capsys, name: str, sig: int, seed: int) -> None:
    out = tmp_path / "out.h5"
    argv = _writer_cases(files, out)[name]
    err = _interrupt_while_writing(argv, out, sig, random.Random(seed))
    assert not out.exists()
    leftovers = [p.name for p in tmp_path.iterdir()]
    if sig == signal.SIGINT:  # clean interrupt: the temporary is removed at once
        assert leftovers == [] and err == "detgan: interrupted; no partial output was kept\n"
    else:  # a SIGKILLed process cannot clean up; its temporary is removed by the next write
        assert len(leftovers) == 1 and leftovers[0].startswith(".out.h5.tmp-")
    code, err = _in_process(capsys, *argv)
    assert code == 0, err
    assert [p.name for p in tmp_path.iterdir()] == ["out.h5"]
    _check_output(name, out)


@pytest.mark.parametrize(
    "name", ["simulate-airshower", "simulate-calo", "generate", "refine", "convert"]
)
def test_sigkilled_writer_leaves_no_partial_output(files, tmp_path, capsys, name):
    _interrupted_then_rerun(files, tmp_path, capsys, name, signal.SIGKILL, seed=5)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
@pytest.mark.parametrize(
    "name", ["simulate-airshower", "simulate-calo", "generate", "refine", "convert"]
)
@pytest.mark.parametrize("seed", [1, 2])
def test_interrupted_writer_at_random_moments(files, tmp_path, capsys, name, sig, seed):
    _interrupted_then_rerun(files, tmp_path, capsys, name, sig, seed)


# ------------------------------------------------------------------------ robust training
def _nan_after(monkeypatch, calls: int) -> None:
    """Make the gradient penalty NaN from its ``calls``-th evaluation on."""
    original, count = losses.gradient_penalty, [0]

    def poisoned(*args, **kwargs):
        count[0] += 1
        value = original(*args, **kwargs)
        return value * float("nan") if count[0] >= calls else value

    monkeypatch.setattr(losses, "gradient_penalty", poisoned)


def test_non_finite_loss_stops_with_last_good_checkpoint_and_resumes(
    files, tmp_path, capsys, monkeypatch
):
    run = tmp_path / "run"
    argv = _train_args(files["fp"], run, 12, False)
    _nan_after(monkeypatch, calls=2 * 6 + 1)  # n_critic = 2: the first critic step of iteration 7
    code, err = _in_process(capsys, *argv)
    assert code == 2
    assert err == (
        f"detgan: error: non-finite loss C1, C2, generator at iteration 7; training stopped, last "
        f"good checkpoint: '{run / CHECKPOINT_NAME}'; lower the learning rates or check the "
        "input data\n"
    )
    assert load_checkpoint(run)["step"] == 4 and [r["step"] for r in _steps(run)] == [
        1,
        2,
        3,
        4,
        5,
        6,
    ]
    monkeypatch.undo()
    code, err = _in_process(capsys, *_train_args(files["fp"], run, 12, True))
    assert code == 0, err
    assert [r["step"] for r in _steps(run)] == list(range(1, 13))


def test_full_disk_during_training_keeps_last_checkpoint(files, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    real_save, calls = torch.save, [0]

    def disk_fills(obj, f, *args, **kwargs):
        calls[0] += 1
        if calls[0] >= 2:  # the second checkpoint finds the disk full half-way
            f.write(b"PK\x03\x04 partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_fills)
    code, err = _in_process(capsys, *_train_args(files["fp"], run, 12, False))
    assert code == 1
    assert err == "detgan: error: No space left on device; free some space or write elsewhere\n"
    assert sorted(p.name for p in run.iterdir()) == [CHECKPOINT_NAME, "config.json", HISTORY_NAME]
    assert load_checkpoint(run)["step"] == EVERY
    monkeypatch.undo()
    code, err = _in_process(capsys, *_train_args(files["fp"], run, 12, True))
    assert code == 0, err
    assert [r["step"] for r in _steps(run)] == list(range(1, 13))
