"""User-facing errors.

Every error a user can cause (a missing folder, a malformed file, a bad option) is raised as an
:class:`OccError` whose message is one line naming the file and the problem. The CLI prints that
line and exits with a non-zero status; everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class OccError(Exception):
    """An error caused by the user's input, reported as one line without a traceback."""

    exit_code = 2

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = None if path is None else Path(path)
        text = message if path is None else f"{path}: {message}"
        super().__init__(" ".join(str(text).split()))  # always one line


class FormatError(OccError):
    """A file exists but its content is not what its format requires."""


class MissingError(OccError):
    """A required file or folder is missing."""


class OccWarning(UserWarning):
    """A note for the user (e.g. a backbone without pretrained weights). The CLI prints each distinct
    one once as a single ``warning: ...`` line, without Python's source-line decoration."""
