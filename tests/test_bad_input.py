"""Malformed inputs, property-based: every reader and every file-reading command refuses them
with one line naming the problem — never a traceback, never garbage passed on.

Each example starts from a valid file of one format (native air-shower HDF5, CaloChallenge,
CaloGAN, detgan showers HDF5, LHCb .npz, JSON/TOML config) and damages it: truncation,
overwritten bytes, junk files, missing or group-replaced datasets, wrong shapes or dtypes,
NaN/inf, negative or zero energies, empty datasets, inconsistent lengths, absurd declared sizes,
corrupt layout attributes, pickled object arrays. Damage that is invalid by construction must
be refused with a message naming it; damage that may leave a valid file (a flipped byte in
unused space, integer cells) must either be refused or give validated data. The number of
cases tried is printed at the end and appended to ``DETGAN_RELIABILITY_LOG`` when set.
"""

from __future__ import annotations

import collections
import io
import json
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detgan.cli import main
from detgan.config import load_config_file
from detgan.io.native import iter_chunks, n_events, read_arrays, read_attrs
from detgan.io.showers import Showers, count_events, iter_showers, load_showers, save_showers
from detgan.sim.geometry import BINNINGS, CALOGAN, GEOMETRIES
from detgan.utils import DetganError

N = 6
TRIED: collections.Counter = collections.Counter()
FAST = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SLOW = settings(
    max_examples=600,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
ABSURD = 2**40  # declared events: petabytes, never allocatable

# ------------------------------------------------------------------------- valid bases


def _airshower(rng: np.random.Generator) -> tuple[dict, dict]:
    fp = rng.uniform(0, 50, (N, 9, 9)).astype(np.float32)
    energy = rng.uniform(1, 100, N)
    arrays = {
        "footprint": fp,
        "energy": energy,
        "log10_energy": np.log10(energy) + 18,
        "triggered": fp > 10,
        "arrival_time": fp.copy(),
        "core": np.zeros((N, 3)),
    }
    return arrays, {"n_side": 9, "n_bins": 80, "trigger_threshold": 115.2}


def _calochallenge(rng: np.random.Generator) -> tuple[dict, dict]:
    return {
        "incident_energies": rng.uniform(1e3, 1e5, (N, 1)).astype(np.float32),
        "showers": rng.uniform(0, 10, (N, 368)).astype(np.float32),
    }, {}


def _calogan(rng: np.random.Generator) -> tuple[dict, dict]:
    layers = {
        f"layer_{k}": rng.uniform(0, 5, (N, *shape)).astype(np.float32)
        for k, shape in enumerate([(3, 96), (12, 12), (12, 6)])
    }
    return {
        "energy": rng.uniform(1, 100, (N, 1)).astype(np.float32),
        **layers,
        "overflow": rng.uniform(0, 1, (N, 3)).astype(np.float32),
    }, {}


def _lhcb(rng: np.random.Generator) -> tuple[dict, dict]:
    return {
        "EnergyDeposit": rng.uniform(0, 5, (N, 30, 30)).astype(np.float32),
        "ParticlePoint": rng.uniform(-10, 10, (N, 3)),
        "ParticleMomentum": rng.uniform(1, 50, (N, 3)),
        "ParticlePDG": np.full(N, 22),
    }, {}


def _native_template(rng: np.random.Generator) -> tuple[dict, dict]:
    layout = GEOMETRIES["atlas-cluster"].layout
    showers = Showers(rng.uniform(1e3, 1e5, N), rng.uniform(0, 5, (N, layout.n_cells)), layout)
    tmp = Path(tempfile.mkdtemp()) / "n.h5"
    save_showers(showers, tmp, "native")
    with h5py.File(tmp) as f:
        arrays = {k: f[k][()] for k in f}
        attrs = {k: f.attrs[k] for k in f.attrs}
    shutil.rmtree(tmp.parent)
    return arrays, attrs


BASES = {
    "airshower": _airshower,
    "calochallenge": _calochallenge,
    "calogan": _calogan,
    "native": _native_template,
    "lhcb": _lhcb,
}
ENERGY = {
    "airshower": "energy",
    "calochallenge": "incident_energies",
    "calogan": "energy",
    "native": "energy",
    "lhcb": "ParticleMomentum",
}
REQUIRED = {
    "airshower": ["energy", "footprint"],
    "calochallenge": ["incident_energies", "showers"],
    "calogan": ["energy", "layer_0", "layer_1", "layer_2"],
    "native": ["cells", "energy"],
    "lhcb": ["EnergyDeposit", "ParticleMomentum", "ParticlePoint"],
}
ATTRS = {
    "airshower": "n_side",
    "native": "layout",
    "calochallenge": "binning_xml",
    "calogan": "junk",
    "lhcb": "meta",
}

# ------------------------------------------------------------------------- damage


def _write(path: Path, fmt: str, arrays: dict, attrs: dict, special: dict) -> None:
    if fmt == "lhcb":
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        path.write_bytes(buffer.getvalue())
        return
    with h5py.File(path, "w") as f:
        for name, value in arrays.items():
            if special.get(name) == "group":
                f.create_group(name)
            elif special.get(name) == "absurd":
                f.create_dataset(
                    name,
                    shape=(ABSURD, *value.shape[1:]),
                    dtype=value.dtype,
                    chunks=(64, *value.shape[1:]),
                )
            else:
                f.create_dataset(name, data=value)
        for key, value in attrs.items():
            f.attrs[key] = value


@st.composite
def damage(draw, fmt: str) -> tuple[str, str | None, dict, dict, dict]:
    """(kind, expected-message regex or None when a valid result is acceptable, arrays,
    attrs, special dataset treatments) for one damaged file of format ``fmt``."""
    arrays, attrs = BASES[fmt](np.random.default_rng(draw(st.integers(0, 2**16))))
    names, energy, special = sorted(arrays), ENERGY[fmt], {}
    name = draw(st.sampled_from(names))
    kinds = [
        "missing",
        "group",
        "shape",
        "dtype",
        "nonfinite",
        "negative",
        "empty",
        "length",
        "absurd",
        "scalar",
        "attribute",
    ]
    kind = draw(
        st.sampled_from(
            kinds
            if fmt != "lhcb"
            else [k for k in kinds if k not in ("group", "absurd", "attribute")] + ["pickle"]
        )
    )
    if kind in ("missing", "group"):  # optional datasets may be absent, extra groups ignored
        name = draw(st.sampled_from(REQUIRED[fmt]))
    if kind == "missing":
        del arrays[name]
        return (
            kind,
            "no (dataset|array)|not a known showers format|not a detgan showers",
            arrays,
            attrs,
            special,
        )
    if kind in ("group", "absurd"):
        special.update({n: kind for n in (names if kind == "absurd" else [name])})
        expected = (
            "group|no dataset|not a known"
            if kind == "group"
            else "declares .* events|not a known showers format"
        )
        return kind, expected, arrays, attrs, special
    if kind == "shape":
        shape = tuple(draw(st.lists(st.integers(0, 4), min_size=0, max_size=4)))
        arrays[name] = np.ones((N, *shape), arrays[name].dtype)
        return kind, None, arrays, attrs, special  # some other shapes are valid alternatives
    if kind == "dtype":
        dtype = draw(st.sampled_from(["complex64", "bool", "S4", "int8", "uint16", "float16"]))
        arrays[name] = (
            np.zeros(arrays[name].shape, dtype) if dtype == "S4" else arrays[name].astype(dtype)
        )
        return kind, None, arrays, attrs, special
    if kind in ("nonfinite", "negative"):
        floats = [n for n in names if arrays[n].dtype.kind == "f"]
        target = draw(st.sampled_from(floats)) if kind == "nonfinite" else energy
        if arrays[target].dtype.kind != "f":
            arrays[target] = arrays[target].astype(np.float64)
        flat = arrays[target].reshape(-1)
        if kind == "nonfinite":
            flat[draw(st.integers(0, flat.size - 1))] = draw(
                st.sampled_from([np.nan, np.inf, -np.inf])
            )
            return kind, "nan or inf", arrays, attrs, special
        row = draw(st.integers(0, N - 1))
        arrays[target][row] = draw(st.sampled_from([0.0, -1e-3, -5.0, -1e30]))
        if fmt == "lhcb":  # a zero momentum vector is the LHCb form of a non-positive energy
            arrays[target][row] = 0.0
        return kind, "<= 0|negative|is zero|zeros", arrays, attrs, special
    if kind == "empty":
        arrays = {k: v[:0] for k, v in arrays.items()}
        return kind, "no events|empty|at least 1", arrays, attrs, special
    if kind == "length":
        arrays[name] = arrays[name][: draw(st.integers(0, N - 1))]
        return kind, "different|inconsistent|events but|no events", arrays, attrs, special
    if kind == "scalar":
        arrays[name] = np.asarray(1.0, arrays[name].dtype)
        expected = "shape|scalar|single value|no events|different|not a known"
        return kind, expected, arrays, attrs, special
    if kind == "pickle":
        arrays[name] = np.array([{"x": 1}] * N, dtype=object)
        return kind, "pickled object array", arrays, attrs, special
    attrs[ATTRS[fmt]] = draw(st.sampled_from(["", "{", "[1, 2]", "<Bins>", "not json", "-3"]))
    return kind, None, arrays, attrs, special


@st.composite
def byte_damage(draw, data: bytes) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(["truncate", "overwrite", "junk", "empty"]))
    if kind == "truncate":
        return kind, data[: draw(st.integers(0, len(data) - 1))]
    if kind == "overwrite":
        raw = bytearray(data)
        start = draw(st.integers(0, len(raw) - 1))
        junk = draw(st.binary(min_size=1, max_size=64))
        raw[start : start + len(junk)] = junk
        return kind, bytes(raw[: len(data)])
    if kind == "junk":
        return kind, draw(st.binary(min_size=1, max_size=2048))
    return kind, b""


# ------------------------------------------------------------------------- readers + checks


def _read_all(fmt: str, path: Path) -> list:
    """Every reader that applies to ``path``; returns what they produced."""
    if fmt == "airshower":
        out = [read_arrays(path), read_attrs(path), n_events(path, "energy")]
        out += [c for _, c in iter_chunks(path, ["footprint", "energy"], chunk_size=4)]
        return out
    return [load_showers(path), count_events(path), *iter_showers(path, chunk_size=4)]


def _validated(results: list) -> None:
    """Whatever a reader accepted is clean: finite, positive energies, consistent lengths."""
    for r in results:
        if isinstance(r, Showers):
            assert np.isfinite(r.cells).all() and np.isfinite(r.energy).all()
            assert (r.energy > 0).all() and len(r) > 0 and r.cells.shape[0] == len(r)
            assert all(
                len(v) == len(r) and np.isfinite(v).all()
                for v in r.conditions.values()
                if v.dtype.kind == "f"
            )
        elif isinstance(r, dict) and r and all(isinstance(v, np.ndarray) for v in r.values()):
            assert len({len(v) for v in r.values()}) == 1
            assert all(np.isfinite(v).all() for v in r.values() if v.dtype.kind == "f")
            assert (r["energy"] > 0).all() if "energy" in r else True


def _one_line(exc: DetganError, path: Path) -> str:
    message = str(exc)
    assert "\n" not in message and message.strip() == message and message
    assert str(path) in message or path.name in message or "layout" in message, message
    return message


def _expect(call, path: Path, expected: str | None) -> str:
    """Run ``call``; it must refuse (matching ``expected``) or, when allowed, give clean data."""
    try:
        _validated(call())
    except DetganError as exc:
        message = _one_line(exc, path)
        if expected is not None:
            assert re.search(expected, message, re.IGNORECASE), (expected, message)
        return "refused"
    assert expected is None, f"malformed input ({expected}) was accepted"
    return "accepted"


@pytest.fixture(scope="module")
def workdir():
    path = Path(tempfile.mkdtemp(prefix="detgan-bad-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
    total = sum(TRIED.values())
    summary = {"test": "bad-input", "cases": total, **dict(sorted(TRIED.items()))}
    print("\n" + json.dumps(summary))
    if os.environ.get("DETGAN_RELIABILITY_LOG"):
        with open(os.environ["DETGAN_RELIABILITY_LOG"], "a") as f:
            f.write(json.dumps(summary) + "\n")


def _path(workdir: Path, fmt: str) -> Path:
    return workdir / f"case{sum(TRIED.values())}{'.npz' if fmt == 'lhcb' else '.h5'}"


def _structural(workdir: Path, fmt: str, case) -> None:
    kind, expected, arrays, attrs, special = case
    path = _path(workdir, fmt)
    _write(path, fmt, arrays, attrs, special)
    outcome = _expect(lambda: _read_all(fmt, path), path, expected)
    TRIED[f"{fmt}:{kind}:{outcome}"] += 1
    path.unlink()


def _bytes(workdir: Path, fmt: str, seed: int, data) -> None:
    arrays, attrs = BASES[fmt](np.random.default_rng(seed))
    path = _path(workdir, fmt)
    _write(path, fmt, arrays, attrs, {})
    kind, content = data.draw(byte_damage(path.read_bytes()))
    path.write_bytes(content)
    outcome = _expect(
        lambda: _read_all(fmt, path),
        path,
        None
        if kind == "overwrite"
        else "corrupt|truncated|not a readable|not a known|no array|no dataset|"
        "not a detgan|different|shape",
    )
    TRIED[f"{fmt}:{kind}:{outcome}"] += 1
    path.unlink()


FORMATS = sorted(BASES)


@pytest.mark.parametrize("fmt", FORMATS)
@FAST
@given(data=st.data())
def test_structural_damage_is_refused(workdir, fmt, data):
    _structural(workdir, fmt, data.draw(damage(fmt)))


@pytest.mark.parametrize("fmt", FORMATS)
@FAST
@given(seed=st.integers(0, 100), data=st.data())
def test_byte_damage_is_refused_or_harmless(workdir, fmt, seed, data):
    _bytes(workdir, fmt, seed, data)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
@SLOW
@given(seed=st.integers(0, 2**16), data=st.data())
def test_many_damaged_files(workdir, fmt, seed, data):
    if data.draw(st.booleans()):
        _structural(workdir, fmt, data.draw(damage(fmt)))
    else:
        _bytes(workdir, fmt, seed, data)


@FAST
@given(
    content=st.binary(max_size=256) | st.text(max_size=64).map(str.encode),
    suffix=st.sampled_from([".json", ".toml"]),
)
def test_malformed_config_files_are_refused(workdir, content, suffix):
    path = workdir / f"config{suffix}"
    path.write_bytes(content)
    try:
        load_config_file(path)
    except DetganError as exc:
        _one_line(exc, path)
        TRIED["config:refused"] += 1
    else:
        TRIED["config:accepted"] += 1  # a valid (possibly empty) mapping


# ------------------------------------------------------------------------- the command line

#: Settings of a one-iteration footprint training on a tiny network.
TINY_FOOTPRINT = ["--set", "iterations=1", "--set", "pretrain_steps=0", "--set", "hidden=16",
                  "--set", "batch_size=4", "--set", "n_critic=1"]  # fmt: skip

#: Commands that read a user file, with the file's place; {f} the damaged file, {o} an output.
COMMANDS = {
    "inspect": ["inspect", "{f}"],
    "convert": ["convert", "{f}", "-o", "{o}.h5"],
    "train-footprint": [
        "train",
        "footprint",
        "--data",
        "{f}",
        "-o",
        "{o}",
        "--quiet",
        "--device",
        "cpu",
        *TINY_FOOTPRINT,
    ],
    "train-refiner": [
        "train",
        "refiner",
        "--sim",
        "{f}",
        "--data",
        "{f}",
        "-o",
        "{o}",
        "--quiet",
        "--device",
        "cpu",
        "--iterations",
        "1",
    ],
    "evaluate": [
        "evaluate",
        "--reference",
        "{f}",
        "--candidate",
        "{f}",
        "-o",
        "{o}",
        "--no-classifier",
        "--no-figures",
        "--no-fpd",
    ],
    "simulate-config": ["simulate", "airshower", "-n", "2", "--config", "{f}", "-o", "{o}.h5"],
    "generate-energy": [
        "generate",
        "{fprun}",
        "--energy",
        "{f}",
        "-o",
        "{o}.h5",
        "--device",
        "cpu",
    ],
    "refine": ["refine", "{rrun}", "{f}", "-o", "{o}.h5", "--device", "cpu", "--quiet"],
}


@pytest.fixture(scope="module")
def runs(workdir) -> dict[str, Path]:
    """A tiny footprint run and a tiny refiner run, for the commands that need one."""
    tiny = ["--quiet", "--device", "cpu", "--threads", "1"]
    for name, variant in (("sim", "sim"), ("data", "data")):
        main(
            [
                "simulate",
                "airshower",
                "-n",
                "60",
                "--variant",
                variant,
                "-o",
                str(workdir / f"{name}.h5"),
                "--quiet",
                "--workers",
                "1",
            ]
        )
    main(
        [
            "train",
            "footprint",
            "--data",
            str(workdir / "data.h5"),
            "-o",
            str(workdir / "fprun"),
            *TINY_FOOTPRINT,
            *tiny,
        ]
    )
    main(
        [
            "train",
            "refiner",
            "--sim",
            str(workdir / "sim.h5"),
            "--data",
            str(workdir / "data.h5"),
            "-o",
            str(workdir / "rrun"),
            "--iterations",
            "1",
            "--set",
            "batch_size=4",
            "--set",
            "n_critic=1",
            *tiny,
        ]
    )
    assert (workdir / "fprun" / "checkpoint.pt").exists() and (workdir / "rrun").exists()
    return {"fprun": workdir / "fprun", "rrun": workdir / "rrun"}


def _cli_case(workdir: Path, capsys, command: str, fmt: str, case, runs) -> None:
    kind, _, arrays, attrs, special = case
    path = _path(workdir, fmt)
    _write(path, fmt, arrays, attrs, special)
    out = workdir / f"out{sum(TRIED.values())}"
    argv = [a.format(f=path, o=out, **runs) for a in COMMANDS[command]]
    code = main(argv)
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    if code == 0:  # the damage left a valid input (e.g. integer cells): the command worked
        TRIED[f"cli:{command}:accepted"] += 1
    else:  # progress lines may precede it; the error itself is one line, and the last
        assert lines[-1].startswith("detgan: error: "), captured.err
        assert sum(line.startswith("detgan: error") for line in lines) == 1, captured.err
        assert "Traceback" not in captured.err
        assert not Path(f"{out}.h5").exists()
        TRIED[f"cli:{command}:refused"] += 1
    path.unlink()
    shutil.rmtree(out, ignore_errors=True)
    Path(f"{out}.h5").unlink(missing_ok=True)


_CLI_FORMATS = {
    "inspect": ["airshower"],
    "convert": ["calochallenge", "calogan", "lhcb", "native"],
    "train-footprint": ["airshower"],
    "train-refiner": ["airshower"],
    "evaluate": ["airshower", "calochallenge", "calogan", "lhcb", "native"],
    "simulate-config": ["airshower"],
    "generate-energy": ["airshower"],
    "refine": ["airshower"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_cli_refuses_damaged_files_in_one_line(workdir, runs, capsys, command, data):
    fmt = data.draw(st.sampled_from(_CLI_FORMATS[command]))
    if command == "simulate-config":
        path = workdir / "bad.json"
        path.write_bytes(data.draw(st.binary(max_size=64) | st.just(b"[1]") | st.just(b"{")))
        code = main(
            [
                "simulate",
                "airshower",
                "-n",
                "2",
                "--config",
                str(path),
                "-o",
                str(workdir / "sim.h5"),
                "--quiet",
            ]
        )
        err = capsys.readouterr().err
        if code != 0:
            assert err.count("\n") == 1 and err.startswith("detgan: error: "), err
        TRIED[f"cli:{command}:{'refused' if code else 'accepted'}"] += 1
        (workdir / "sim.h5").unlink(missing_ok=True)
        return
    _cli_case(workdir, capsys, command, fmt, data.draw(damage(fmt)), runs)


def test_zip_bomb_like_npz_header_is_refused(workdir):
    """An .npz member whose header declares petabytes: refused, nothing allocated."""
    path = workdir / "huge.npz"
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (ABSURD, 30, 30)}
    )
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("EnergyDeposit.npy", header.getvalue() + b"\0" * 64)
        for key, shape in (("ParticlePoint", (N, 3)), ("ParticleMomentum", (N, 3))):
            buffer = io.BytesIO()
            np.save(buffer, np.ones(shape))
            z.writestr(f"{key}.npy", buffer.getvalue())
    with pytest.raises(DetganError) as info:
        load_showers(path)
    _one_line(info.value, path)
    TRIED["lhcb:npz-header-absurd:refused"] += 1


def test_a_dataset_name_with_a_newline_gives_a_one_line_message(workdir):
    """Found by ``test_many_damaged_files``: a damaged name ('\\nncident_energies') used to be
    printed as it is, breaking the message over two lines."""
    path = workdir / "newline.h5"
    with h5py.File(path, "w") as f:
        f["\nncident_energies"] = np.ones((N, 1))
        f["showers"] = np.ones((N, 368))
    with pytest.raises(DetganError, match=r"it has: \\nncident_energies, showers") as info:
        load_showers(path, format="calochallenge")
    _one_line(info.value, path)


def test_binning_xml_garbage_is_refused(workdir):
    from detgan.io.calochallenge import parse_binning

    for text in [
        "<Bins>",
        "<Bins><Bin name='photon'><Layer id='1' r_edges='0,1' n_bin_alpha='1'/></Bin></Bins>",
        "<Bins><Bin/><Bin/></Bins>",
        "<Bins><Bin><Layer id='0' r_edges='1,0' n_bin_alpha='0'/></Bin></Bins>",
    ]:
        with pytest.raises(DetganError, match="binning XML"):
            parse_binning(text)
        TRIED["binning-xml:refused"] += 1
    assert BINNINGS and CALOGAN.n_cells == 504
