"""utils: atomic outputs, output-path checks, device resolution."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from detgan.utils import DetganError, atomic_output, check_output_path, resolve_device


def test_atomic_output_renames_only_on_success(tmp_path):
    target = tmp_path / "out.txt"
    with atomic_output(target) as tmp:
        tmp.write_text("done")
        assert not target.exists()
    assert target.read_text() == "done"
    with pytest.raises(ValueError), atomic_output(target, overwrite=True) as tmp:
        tmp.write_text("half")
        raise ValueError
    assert target.read_text() == "done"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_killed_writer_leaves_no_final_file_and_rerun_cleans_up(tmp_path):
    """SIGKILL during a write: no file under the final name; the next write removes the
    orphaned temporary and produces the file."""
    target = tmp_path / "a.h5"
    code = (
        "import sys, time\n"
        "from detgan.utils import atomic_output\n"
        "with atomic_output(sys.argv[1]) as tmp:\n"
        "    tmp.write_text('partial'); print('ready', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "ready"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir()] == [f".a.h5.tmp-{proc.pid}"]
    with atomic_output(target) as tmp:
        tmp.write_text("complete")
    assert [p.name for p in tmp_path.iterdir()] == ["a.h5"]


def test_output_path_checks(tmp_path):
    with pytest.raises(DetganError, match="is a directory; give a file name"):
        check_output_path(tmp_path, overwrite=True)
    with pytest.raises(DetganError, match="does not exist; create it first"):
        check_output_path(tmp_path / "missing" / "x.h5")
    (tmp_path / "x.h5").write_text("")
    with pytest.raises(DetganError, match="already exists; pass --overwrite"):
        check_output_path(tmp_path / "x.h5")
    assert check_output_path(tmp_path / "x.h5", overwrite=True) == tmp_path / "x.h5"


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(DetganError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    if not __import__("torch").cuda.is_available():
        with pytest.raises(DetganError, match="CUDA is not available; use --device cpu"):
            resolve_device("cuda:0")
