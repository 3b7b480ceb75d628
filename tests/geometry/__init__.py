"""Geometry tests (a package, so that test_cameras.py may share its name with tests/render/test_cameras.py)."""
