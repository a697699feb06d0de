"""Checkpoints: weights_only loading refuses code, a content hash refuses damage and tampering."""

from __future__ import annotations

import errno
import pickle
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detgan.checkpoint import HASH_KEY, content_hash, load_checkpoint_safely, save_checkpoint
from detgan.cli import main
from detgan.train import CHECKPOINT_NAME, load_checkpoint
from detgan.utils import DetganError

UNSAFE = (
    r"checkpoint '.*checkpoint\.pt' is not a safe detgan checkpoint: it holds a reference to "
    r"'(builtins\.)?exec', which could run code, so it was not loaded; use a checkpoint written by "
    r"detgan"
)


class Exploit:
    """Unpickling this runs ``exec``, which writes a marker file: a stand-in for any payload."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def _state() -> dict:
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters())
    net(torch.ones(1, 3)).sum().backward()
    opt.step()
    return {
        "format": 1,
        "step": 7,
        "models": {"generator": net.state_dict()},
        "optimisers": {"generator": opt.state_dict()},
        "rng": {"sampler": torch.Generator().manual_seed(3).get_state()},
        "extra": {"name": "run", "ratio": 0.25, "flag": True, "none": None, "shape": (9, 9)},
    }


def _malicious(path: Path, marker: Path, *, zip_format: bool) -> Path:
    payload = {"format": 1, "step": 1, "models": Exploit(marker)}
    if zip_format:
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    return path


@pytest.mark.parametrize("zip_format", [True, False], ids=["torch-zip", "raw-pickle"])
def test_malicious_pickle_is_live_but_refused_without_running(tmp_path, zip_format):
    marker = tmp_path / "pwned"
    path = _malicious(tmp_path / CHECKPOINT_NAME, marker, zip_format=zip_format)
    with pytest.raises(DetganError, match=UNSAFE):
        load_checkpoint_safely(path)
    with pytest.raises(DetganError, match=UNSAFE):
        load_checkpoint(tmp_path)
    assert not marker.exists()
    # Control: an unsafe loader really runs the payload, so the refusal above is meaningful.
    if zip_format:
        torch.load(path, weights_only=False)
    else:
        pickle.loads(path.read_bytes())
    assert marker.read_text() == "pwned"


@pytest.mark.parametrize(
    "argv",
    [
        ["generate", "{run}", "-n", "3", "--energy", "10", "-o", "{tmp}/g.h5", "--device", "cpu"],
        ["train", "footprint", "--data", "{tmp}/none.h5", "-o", "{run}", "--resume", "--quiet"],
        ["refine", "{run}", "{tmp}/none.h5", "-o", "{tmp}/r.h5", "--device", "cpu"],
    ],
    ids=["generate", "train-resume", "refine"],
)
def test_cli_refuses_malicious_checkpoint_in_one_line(tmp_path, capsys, argv):
    run, marker = tmp_path / "run", tmp_path / "pwned"
    run.mkdir()
    _malicious(run / CHECKPOINT_NAME, marker, zip_format=True)
    argv = [a.format(run=run, tmp=tmp_path) for a in argv]
    (tmp_path / "none.h5").write_bytes(b"")  # never reached: the checkpoint is read first
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and not marker.exists()
    assert err.count("\n") == 1 and "Traceback" not in err
    assert (
        err.startswith("detgan: error: checkpoint '") and "is not a safe detgan checkpoint" in err
    )
    assert not (tmp_path / "g.h5").exists() and not (tmp_path / "r.h5").exists()


def test_round_trip_keeps_every_value_and_is_plain_weights_only(tmp_path):
    state = _state()
    path = save_checkpoint(state, tmp_path / "c.pt")
    raw = torch.load(path, weights_only=True)
    assert raw[HASH_KEY] == content_hash(state) and len(raw[HASH_KEY]) == 64
    back = load_checkpoint_safely(path)
    assert HASH_KEY not in back and content_hash(back) == content_hash(state)
    assert back["extra"] == state["extra"]
    w = state["models"]["generator"]["weight"]
    assert torch.equal(back["models"]["generator"]["weight"], w)
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_content_hash_is_canonical_and_sensitive():
    state = _state()
    h = content_hash(state)
    assert content_hash(dict(reversed(list(state.items())))) == h  # key order is irrelevant
    assert content_hash({**state, "extra": {**state["extra"], "shape": [9, 9]}}) == h
    weight = state["models"]["generator"]["weight"]
    flipped = weight.clone()
    flipped.view(torch.int32)[0, 0] ^= 1  # one bit of one float
    changed = {**state, "models": {"generator": OrderedDict(weight=flipped)}}
    assert content_hash(changed) != content_hash(
        {**state, "models": {"generator": {"weight": weight}}}
    )
    same_bytes = {"a": torch.zeros(4, dtype=torch.float32)}
    assert content_hash(same_bytes) != content_hash({"a": torch.zeros(4, dtype=torch.int32)})
    assert content_hash({"a": torch.zeros(2, 2)}) != content_hash({"a": torch.zeros(4)})
    assert content_hash({"a": 1}) != content_hash({"a": 1.0}) != content_hash({"a": True})
    assert content_hash({"a": "1"}) != content_hash({"a": 1})
    with pytest.raises(TypeError, match="cannot store a set in a checkpoint"):
        content_hash({"a": {1, 2}})


def test_tampered_value_is_refused(tmp_path):
    path = save_checkpoint(_state(), tmp_path / "c.pt")
    raw = torch.load(path, weights_only=True)
    raw["models"]["generator"]["bias"] += 1e-6  # a plausible edit that keeps the old hash
    torch.save(raw, path)
    with pytest.raises(
        DetganError,
        match=r"fails its content check \(SHA-256 mismatch\): it was "
        "modified or damaged after writing",
    ):
        load_checkpoint_safely(path)


def test_unhashed_truncated_and_foreign_files_are_refused(tmp_path):
    torch.save(_state(), tmp_path / "plain.pt")
    with pytest.raises(DetganError, match="carries no content hash"):
        load_checkpoint_safely(tmp_path / "plain.pt")
    data = save_checkpoint(_state(), tmp_path / "c.pt").read_bytes()
    (tmp_path / "t.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(
        DetganError,
        match=r"checkpoint '.*t\.pt' cannot be read \(.*corrupt or "
        r"truncated\?\)",
    ):
        load_checkpoint_safely(tmp_path / "t.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(DetganError, match="is not a detgan checkpoint"):
        load_checkpoint_safely(tmp_path / "list.pt")


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_damaged_byte_is_refused_or_harmless(tmp_path, data):
    """Overwrite 1-8 bytes anywhere: loading either refuses in one line or returns the exact
    original content (bytes the format does not use); it never returns altered values."""
    state = _state()
    path = tmp_path / "c.pt"
    raw = bytearray(save_checkpoint(state, path).read_bytes())
    start = data.draw(st.integers(0, len(raw) - 1))
    junk = data.draw(st.binary(min_size=1, max_size=8))
    raw[start : start + len(junk)] = junk
    path.write_bytes(bytes(raw))
    try:
        back = load_checkpoint_safely(path)
    except DetganError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)
    else:
        assert content_hash(back) == content_hash(state)


def test_full_disk_keeps_previous_checkpoint_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = save_checkpoint(_state(), tmp_path / "c.pt")
    before = path.read_bytes()

    def full(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError, match="No space left on device"):
        save_checkpoint({**_state(), "step": 8}, path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["c.pt"]
    assert load_checkpoint_safely(path)["step"] == 7
