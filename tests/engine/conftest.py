from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.fixture
def probe_method():
    from occ_core.registry import MethodSpec, register_method

    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    register_method(MethodSpec("probe", "test-only probe", "_probe_method"))
    return "probe"
