"""occ prepare: inputs checked before any write, options recorded and refused, lock, stale temp files,
workers that die with their parent (issue 13 item 3)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from occ_core.data.formats import semantickitti as sk
from occ_core.data.prepare.pipeline import LOCK, OPTIONS, prepare_kitti
from occ_core.errors import FormatError, OccError

REPO = Path(__file__).resolve().parents[3]


def _files(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*") if p.is_file()) if out.exists() else []


@pytest.mark.parametrize("name, data, match", [
    ("voxels/000010.occluded", b"\0" * 100, r"000010.occluded: wrong file size: 100 bytes, expected 262144"),
    ("voxels/000010.bin", b"\0" * 100, r"000010.bin: wrong file size: 100 bytes, expected 262144"),
    ("velodyne/000010.bin", b"\0" * 17, r"000010.bin: wrong file size: 17 bytes is not a multiple of 16"),
    ("labels/000010.label", b"\0" * 8, r"000010.label: 2 point labels for 2000 points"),
])
def test_truncated_input_of_the_last_frame_writes_nothing(raw_kitti: Path, tmp_path: Path, name, data, match):
    (raw_kitti / "dataset" / "sequences" / "08" / name).write_bytes(data)
    out = tmp_path / "prep"
    with pytest.raises(FormatError, match=match):
        prepare_kitti(raw_kitti, out)
    assert _files(out) == []  # no geometry.npz, no frame of sequence 00, no prepare.json


def test_options_recorded_before_frames_and_refused(raw_kitti: Path, tmp_path: Path):
    out = tmp_path / "prep"
    prepare_kitti(raw_kitti, out, sequences=["00"], progress=False)
    assert json.loads((out / OPTIONS).read_text()) == {"dataset": "semantickitti", "depth": "lidar",
                                                     "cameras": ["image_2"]}
    (out / "manifest.json").unlink()  # as if killed before the manifest
    with pytest.raises(OccError, match=r"prepare.json: prepared with --depth lidar; add --force to redo it "
                                       r"with --depth sgbm") as e:
        prepare_kitti(raw_kitti, out, sequences=["00"], depth="sgbm", progress=False)
    assert Path(e.value.path).name == OPTIONS
    # the same options: a rerun goes on; another sequence too
    summary = prepare_kitti(raw_kitti, out, progress=False)
    assert summary["skipped"] == 2 and summary["written"] == 3


def test_concurrent_run_is_refused(raw_kitti: Path, tmp_path: Path):
    import fcntl

    out = tmp_path / "prep"
    out.mkdir()
    with open(out / LOCK, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(OccError, match=r"\.prepare\.lock: another 'occ prepare' is writing into this folder"):
            prepare_kitti(raw_kitti, out, sequences=["00"], progress=False)
    assert not list(out.glob("sequences/*/frames/*.npz"))
    prepare_kitti(raw_kitti, out, sequences=["00"], progress=False)  # unlocked: works


def test_stale_temp_files_are_removed(raw_kitti: Path, tmp_path: Path):
    out = tmp_path / "prep"
    prepare_kitti(raw_kitti, out, sequences=["00"], progress=False)
    frames = out / "sequences" / "00" / "frames"
    stale = [frames / ".000000.k2j_9xq1.tmp.npz", out / ".manifest.ab12cd34.tmp.json", out / ".notes.abcdefgh.tmp"]
    other = [frames / ".partial.tmp.npz", out / "notes.tmp", out / ".hidden", frames / "x.abcdefgh.tmp.npz"]
    for p in stale + other:
        p.write_bytes(b"half")
    prepare_kitti(raw_kitti, out, sequences=["00"], progress=False)
    assert [p for p in stale if p.exists()] == []
    assert all(p.read_bytes() == b"half" for p in other)


def _children(pid: int) -> set[int]:
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out |= {int(x) for x in (task / "children").read_text().split()}
        except OSError:
            pass
    return out


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


@pytest.mark.skipif(not sys.platform.startswith("linux") or not Path("/proc/self/task").is_dir(),
                    reason="needs Linux /proc")
def test_workers_die_with_a_killed_parent(tmp_path: Path):
    from _raw import write_raw_sequence

    root = tmp_path / "raw"
    write_raw_sequence(root, "00", list(range(0, 60, 5)), np.random.default_rng(0))
    code = ("import sys; from occ_core.data.prepare.pipeline import prepare_kitti; "
            "prepare_kitti(sys.argv[1], sys.argv[2], workers=2, progress=False)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-c", code, str(root), str(tmp_path / "out")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        workers: set[int] = set()
        deadline = time.monotonic() + 60
        while len(workers) < 2 and time.monotonic() < deadline and proc.poll() is None:
            workers |= _children(proc.pid)
            time.sleep(0.05)
        assert len(workers) >= 2, "the workers did not start"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [p for p in workers if _alive(p)] == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for p in workers if "workers" in locals() else ():
            if _alive(p):
                os.kill(p, signal.SIGKILL)


def test_die_with_parent_is_harmless_in_the_parent():
    from occ_core.utils.procs import die_with_parent

    die_with_parent(os.getppid())  # our own parent is alive: nothing happens
