"""The output-path rule and plain names: checked up front, before any work, without creating anything.

Every command checks where it will write before it reads or computes anything::

    out = output_dir(out, "output folder")        # --out FOLDER (created later by the writer)
    json_out = output_file(json_out, "results file")  # --json FILE
    name = safe_name(name, "run name")            # --name NAME: a single folder name

All three raise :class:`~occ_core.errors.OccError` naming the user's path (one line at the CLI):

* ``output_dir``: the path is not an existing file; the nearest existing ancestor is a folder (not a
  file) that we may write into.
* ``output_file``: the path is not an existing folder; the same rule for its parent folder.
* ``safe_name``: a plain name (no ``/`` or ``\\``, not ``.`` or ``..``, not absolute, no NUL), so that
  ``OUT / name`` stays inside ``OUT``.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

from occ_core.errors import OccError


def _nearest_existing(path: Path) -> Path:
    p = path
    while not os.path.lexists(p):
        parent = p.parent
        if parent == p:
            break
        p = parent
    return p


def _check_parent_chain(path: Path, what: str) -> None:
    """The nearest existing ancestor of ``path`` must be a writable folder."""
    base = _nearest_existing(path.parent if path.parent != path else path)
    if not base.is_dir():
        raise OccError(f"cannot write the {what}: '{base}' is a file, not a folder", path)
    if not os.access(base, os.W_OK | os.X_OK):
        raise OccError(f"cannot write the {what}: folder '{base}' is not writable", path)


def output_dir(path: str | Path, what: str = "output folder") -> Path:
    """``path`` as a folder to write into (existing or to be created); checked, not created."""
    path = Path(path)
    if str(path) == "":
        raise OccError(f"empty path for the {what}")
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise OccError(f"exists and is not a folder (expected the {what})", path)
        if not os.access(path, os.W_OK | os.X_OK):
            raise OccError(f"cannot write the {what}: folder is not writable", path)
        return path
    _check_parent_chain(path, what)
    return path


def output_file(path: str | Path, what: str = "output file") -> Path:
    """``path`` as a file to (over)write; checked, not created (nor its folder)."""
    path = Path(path)
    if str(path) == "" or path.name in ("", ".", ".."):
        raise OccError(f"not a file name (expected the {what})", path)
    if path.is_dir():
        raise OccError(f"is a folder (expected the {what}, a file)", path)
    if path.exists():
        if not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK | os.X_OK):
            raise OccError(f"cannot write the {what}: not writable", path)
        return path
    _check_parent_chain(path, what)
    return path


def is_plain_name(name: str) -> bool:
    """True for a single path component: not empty, no separators, not '.', '..', absolute or a drive."""
    if not isinstance(name, str) or not name or name in (".", ".."):
        return False
    if "/" in name or "\\" in name or "\0" in name:
        return False
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() or PureWindowsPath(name).drive:
        return False
    return True


def safe_name(name: str, what: str = "name") -> str:
    """``name`` when it is a plain name (see :func:`is_plain_name`), else OccError naming it."""
    if not is_plain_name(name):
        raise OccError(f"{what} '{name}' must be a plain name (no '/', '\\', '..', not absolute)")
    return name
