"""Checked readers of text, JSON and YAML files: every way a file can be wrong is one FormatError.

Every text file a user can hand to occ (calibration, poses, times, manifest, vanishing points, configs)
is read through :func:`read_text` (or :func:`read_json` / :func:`read_yaml` on top of it), so binary
garbage, a wrong encoding, invalid syntax or a value of the wrong shape end as one
:class:`~occ_core.errors.FormatError` naming the file, never as a ``UnicodeDecodeError`` traceback::

    text = read_text(path, "calibration file")
    manifest = read_json(path, "prepared manifest", expect=dict)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from occ_core.errors import FormatError, MissingError, OccError

_JSON_KINDS = {dict: "a JSON object", list: "a JSON list", str: "a string", int: "an integer", float: "a number",
               bool: "true or false", type(None): "null"}
_YAML_KINDS = {**_JSON_KINDS, dict: "a mapping", list: "a list"}


def kind_of(value: Any, words: dict[type, str] = _JSON_KINDS) -> str:
    """'a JSON object', 'a JSON list', ... for messages."""
    for t, word in words.items():
        if type(value) is t:
            return word
    return type(value).__name__


def read_bytes(path: str | Path, what: str = "file") -> bytes:
    """The bytes of ``path``; a missing file, a folder or an unreadable file is one OccError naming it."""
    path = Path(path)
    if path.is_dir():
        raise FormatError(f"is a folder, expected a {what}", path)
    if not path.is_file():
        raise MissingError(f"{what} not found", path)
    try:
        return path.read_bytes()
    except PermissionError:
        raise OccError(f"cannot read the {what} (permission denied)", path) from None
    except OSError as e:
        raise OccError(f"cannot read the {what} ({e.strerror or e})", path) from None


def read_text(path: str | Path, what: str = "text file") -> str:
    """The UTF-8 text of ``path`` (a byte-order mark is dropped).

    Raises FormatError naming the file when it is not UTF-8 text or holds NUL bytes (a binary file).
    """
    path = Path(path)
    data = read_bytes(path, what)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise FormatError(f"not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
                          f"expected a {what}", path) from None
    nul = text.find("\0")
    if nul >= 0:
        raise FormatError(f"not a text file (NUL byte at offset {nul}); expected a {what}", path)
    return text


def read_lines(path: str | Path, what: str = "text file") -> list[str]:
    """The lines of a checked text file (see :func:`read_text`)."""
    return read_text(path, what).splitlines()


def _check_kind(value: Any, expect: type | tuple[type, ...] | None, path: Path, what: str,
                words: dict[type, str] = _JSON_KINDS) -> Any:
    if expect is None:
        return value
    kinds = expect if isinstance(expect, tuple) else (expect,)
    if isinstance(value, bool) and bool not in kinds:
        ok = False
    else:
        ok = isinstance(value, kinds)
    if not ok:
        wanted = " or ".join(words.get(k, k.__name__) for k in kinds)
        raise FormatError(f"expected {wanted} at the top level of the {what}, got {kind_of(value, words)}", path)
    return value


def read_json(path: str | Path, what: str = "JSON file", expect: type | tuple[type, ...] | None = None) -> Any:
    """Parsed JSON of ``path``; ``expect`` (dict, list, ...) checks the top-level value.

    Raises FormatError naming the file: not UTF-8 text, "invalid JSON at line N, column C (...)",
    "expected an object at the top level of the ..., got a list".
    """
    path = Path(path)
    text = read_text(path, what)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise FormatError(f"invalid JSON at line {e.lineno}, column {e.colno} ({e.msg}); expected a {what}",
                          path) from None
    except RecursionError:
        raise FormatError(f"invalid JSON (nested too deeply); expected a {what}", path) from None
    return _check_kind(value, expect, path, what)


def check_kind(value: Any, expect: type | tuple[type, ...], where: str | Path, what: str) -> Any:
    """``value`` when it is of ``expect``, else FormatError naming ``where`` (for values inside a file)."""
    kinds = expect if isinstance(expect, tuple) else (expect,)
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        wanted = " or ".join(_JSON_KINDS.get(k, k.__name__) for k in kinds)
        raise FormatError(f"{what}: expected {wanted}, got {kind_of(value)}", where)
    return value


def read_yaml(path: str | Path, what: str = "YAML file", expect: type | tuple[type, ...] | None = dict) -> Any:
    """Parsed YAML (safe loader) of ``path``; by default the top level must be a mapping.

    An empty file is an empty mapping when ``expect`` is dict.
    """
    import yaml

    path = Path(path)
    text = read_text(path, what)
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise FormatError(f"invalid YAML{where} ({problem})", path) from None
    except RecursionError:
        raise FormatError("invalid YAML (nested too deeply)", path) from None
    if value is None and expect is dict:
        value = {}
    return _check_kind(value, expect, path, what, _YAML_KINDS)
