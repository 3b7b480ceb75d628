"""Crash-safe file writing: write to a temporary file in the same folder, then rename.

A killed process leaves either the old file or the new one, never a half-written one. Temporary
files are named ``.<name>.<random>.tmp`` so that readers and resumable jobs ignore them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np


TEMP_NAME = re.compile(r"^\..*\.[a-z0-9_]{8}\.tmp(\.[^./]+)?$")
"""Names of the temporary files :func:`atomic_path` creates: ``.<stem>.<8 random chars>.tmp<suffix>``
(``tempfile.mkstemp`` with prefix ``.<stem>.`` and suffix ``.tmp<suffix>``)."""


def is_temp_name(name: str) -> bool:
    """True for a file name of the form the atomic writer gives its temporary files."""
    return TEMP_NAME.match(name) is not None


def remove_temp_files(folder: str | Path) -> list[Path]:
    """Remove the atomic writer's temporary files left under ``folder`` (recursively) by a killed
    process; only plain files whose names match :data:`TEMP_NAME`. Returns the removed paths."""
    removed: list[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            if is_temp_name(name):
                path = Path(dirpath) / name
                try:
                    if path.is_file() and not path.is_symlink():
                        path.unlink()
                        removed.append(path)
                except OSError:
                    pass
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _user_error(e: BaseException, tmp: Path, path: Path) -> BaseException | None:
    """``e`` with the temporary path replaced by the user's ``path`` (None when it does not name it)."""
    from occ_core.errors import OccError

    if isinstance(e, OSError):
        names = (str(e.filename), str(e.filename2), str(e))
        if any(tmp.name in n for n in names):
            return OccError(f"cannot write ({e.strerror or str(e).replace(str(tmp), str(path))})", path)
        return None
    if isinstance(e, OccError) and os.fspath(tmp) in str(e):
        text = str(e).replace(os.fspath(tmp), os.fspath(path))
        try:
            new = type(e)(text)
        except TypeError:  # a subclass with another signature
            new = OccError(text)
        new.path = path
        return new
    return None


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    The temporary name keeps the suffix of ``path`` so that libraries which choose a format by
    extension (OpenCV, numpy) write the right thing. Errors never name the temporary file: an
    OSError (or OccError) about it is raised as an OccError naming ``path``; a ``path`` whose folder
    cannot be created (a file in the way) is an OccError naming ``path``.
    """
    from occ_core.errors import OccError
    from occ_core.utils.paths import output_file

    path = Path(path)
    if path.is_dir():
        raise OccError("is a folder, cannot write a file here", path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        output_file(path, "file")  # a file in the way or a read-only folder: names it
        raise OccError(f"cannot create the folder ({e.strerror or e})", path) from None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp" + path.suffix, dir=path.parent)
    except OSError as e:
        raise OccError(f"cannot write ({e.strerror or e})", path) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
            if tmp_path.exists():
                os.chmod(tmp_path, 0o666 & ~_umask())
            os.replace(tmp_path, path)
        except Exception as e:
            mapped = _user_error(e, tmp_path, path)
            if mapped is None:
                raise
            raise mapped from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes(path: str | Path, data: bytes) -> None:
    """Atomically write ``data`` to ``path``."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def write_text(path: str | Path, text: str) -> None:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    """Atomically write ``obj`` as JSON to ``path``."""
    write_text(path, json.dumps(obj, indent=indent) + "\n")


def save_npz(path: str | Path, compress: bool = True, **arrays: np.ndarray) -> None:
    """Atomically write arrays to an ``.npz`` file."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            (np.savez_compressed if compress else np.savez)(f, **arrays)
