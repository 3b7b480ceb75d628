"""Shared fixtures: tiny raw SemanticKITTI folders written by the tests themselves."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("OCC_NO_PROGRESS", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # with `pytest -n 2` each worker gets one core: two threads per worker oversubscribe the machine
    import torch

    torch.set_num_threads(1)

from _raw import kitti_calib, write_raw_sequence  # noqa: E402,F401  (shared with the tests)

SHARED_MINI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "semantickitti-mini"


@pytest.fixture
def raw_kitti(tmp_path: Path) -> Path:
    """A raw dataset with train sequence 00 (frames 0, 5) and val sequence 08 (frames 0, 5, 10)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "raw"
    write_raw_sequence(root, "00", [0, 5], rng)
    write_raw_sequence(root, "08", [0, 5, 10], rng)
    return root


@pytest.fixture
def mini_root() -> Path:
    """The real SemanticKITTI frames in ../shared (skips when absent, as on a user's machine)."""
    if not (SHARED_MINI / "dataset" / "sequences" / "00").is_dir():
        pytest.skip(f"real SemanticKITTI mini data not found at {SHARED_MINI}")
    return SHARED_MINI


@pytest.fixture(scope="session")
def synthetic_raw(tmp_path_factory) -> Path:
    """A tiny synthetic dataset in the raw layout: train sequence 00 and val sequence 08, 2 frames each."""
    from occ_core.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("synthetic") / "raw"
    generate_dataset(root, sequences=["00", "08"], frames=2, seed=3, workers=2, progress=False)
    return root


@pytest.fixture(scope="session")
def synthetic_prepared(synthetic_raw: Path) -> Path:
    """``synthetic_raw`` prepared by ``occ prepare kitti``."""
    from occ_core.data.prepare.pipeline import prepare_kitti

    out = synthetic_raw.parent / "prepared"
    prepare_kitti(synthetic_raw, out, workers=2, progress=False)
    return out
