"""Configs: nested dataclasses with documented fields, saved as plain YAML data.

* Every field carries a docstring (a string literal right below it); :func:`field_docs` reads them
  so that ``occ train --print-config`` shows each field with its meaning.
* Configs are saved as plain data (numbers, strings, lists, dicts) plus the occ version — never as
  pickled classes or import paths — so a run folder still loads after the code moves.
* ``--set a.b.c=value`` overrides (:func:`apply_overrides`): the value is parsed as YAML and checked
  against the field's type; an unknown key is a one-line error listing the valid keys.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import typing
from pathlib import Path
from typing import Any

import yaml

from occ_core.errors import FormatError, OccError


def to_dict(cfg: Any) -> Any:
    """A dataclass (tree) as plain data: dicts, lists, numbers, strings, bools, None."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {str(k): to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, Path):
        return cfg.as_posix()
    return cfg


def _join(where: str, key: str) -> str:
    """The dotted key path of ``key`` under ``where`` ("--set " + "optim" -> "--set optim")."""
    if not where or where.endswith((" ", "=")):
        return f"{where}{key}"
    return f"{where}.{key}"


def _label(where: str) -> str:
    return where.strip() or "config"


def _resolve_hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # pragma: no cover - unresolvable forward refs
        return {f.name: f.type for f in dataclasses.fields(cls)}


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check/convert a plain value to the annotated type of a field."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except OccError as e:
                errors.append(str(e))
        raise OccError(errors[0] if errors else f"{_label(where)}: invalid value {value!r}")
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise OccError(f"{_label(where)}: expected a mapping, got {value!r}")
        return from_dict(hint, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise OccError(f"{_label(where)}: expected a list, got {value!r}")
        item = args[0] if args else Any
        out = [_coerce(v, item, f"{_label(where)}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise OccError(f"{_label(where)}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise OccError(f"{_label(where)}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise OccError(f"{_label(where)}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise OccError(f"{_label(where)}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if value is None or isinstance(value, (dict, list)):
            raise OccError(f"{_label(where)}: expected a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls: type, data: dict[str, Any], where: str = "config") -> Any:
    """Build dataclass ``cls`` from plain data; unknown keys are errors, missing keys keep defaults."""
    if not isinstance(data, dict):
        raise OccError(f"{_label(where)}: expected a mapping, got {data!r}")
    hints = _resolve_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names, key=str)
    if unknown:
        raise OccError(f"{_label(where)}: unknown key '{unknown[0]}' (valid: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], _join(where, k)) for k, v in data.items()}
    return cls(**kwargs)


def merge(cfg: Any, data: dict[str, Any], where: str = "config") -> Any:
    """A copy of ``cfg`` with the (possibly partial, nested) plain ``data`` applied on top."""
    if not isinstance(data, dict):
        raise OccError(f"{_label(where)}: expected a mapping, got {data!r}")
    hints = _resolve_hints(type(cfg))
    names = {f.name for f in dataclasses.fields(cfg)}
    changes = {}
    for key, value in data.items():
        if key not in names:
            raise OccError(f"{_label(where)}: unknown key '{key}' (valid: {', '.join(sorted(names))})")
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            changes[key] = merge(current, value, _join(where, key))
        elif dataclasses.is_dataclass(current) and not isinstance(value, dict):
            keys = ", ".join(f.name for f in dataclasses.fields(current))
            raise OccError(f"{_join(where, key)}: is a section, not a value (its keys: {keys}), got {value!r}")
        else:
            changes[key] = _coerce(value, hints[key], _join(where, key))
    return dataclasses.replace(cfg, **changes)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b.c=value"`` -> (["a", "b", "c"], parsed YAML value)."""
    if "=" not in text:
        raise OccError(f"--set '{text}': expected key=value, e.g. optim.lr=1e-4")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise OccError(f"--set '{text}': empty key (expected key=value, e.g. optim.lr=1e-4)")
    parts = key.split(".")
    if any(not p.strip() for p in parts):
        raise OccError(f"--set '{text}': empty part in key '{key}'")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and _looks_like_float(value):
        value = float(value)  # YAML 1.1 reads "1e-4" as a string
    return [p.strip() for p in parts], value


def _looks_like_float(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def apply_overrides(cfg: Any, overrides: list[str], prefix: str = "") -> Any:
    """Apply ``--set key=value`` overrides to a dataclass config (returns a new config).

    ``prefix`` is the key path of ``cfg`` inside the whole config (``"model."`` for a method's model
    config), so that messages name the key as the user wrote it: ``--set model.backbone.name: ...``.
    """
    for text in overrides:
        path, value = parse_override(text)
        if prefix:
            want = prefix.rstrip(".").split(".")
            if path[:len(want)] != want:
                raise OccError(f"--set '{text}': expected a key under '{prefix.rstrip('.')}'")
            path = path[len(want):]
            if not path:
                raise OccError(f"--set '{text}': '{prefix.rstrip('.')}' is a section; set one of its keys")
        nested: Any = value
        for part in reversed(path):
            nested = {part: nested}
        cfg = merge(cfg, nested, where="--set " + prefix.rstrip("."))
    return cfg


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass (and its dataclass bases): the string literal right below each field."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            docs.update(_own_field_docs(klass))
    return docs


def _own_field_docs(cls: type) -> dict[str, str]:
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    tree = ast.parse(source)
    docs: dict[str, str] = {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    for node, nxt in zip(body, body[1:] + [None]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant) and isinstance(nxt.value.value, str):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def describe(cfg: Any, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted key, value, doc) for every leaf field of a config tree."""
    rows = []
    docs = field_docs(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            rows.extend(describe(value, key + "."))
        else:
            rows.append((key, to_dict(value), docs.get(f.name, "")))
    return rows


def to_yaml(cfg: Any, header: dict[str, Any] | None = None) -> str:
    data = dict(header or {})
    data.update(to_dict(cfg))
    return yaml.safe_dump(data, sort_keys=False)


def load_yaml(path: str | Path, what: str = "YAML config") -> dict[str, Any]:
    """A YAML file whose top level is a mapping (checked: UTF-8 text, valid YAML, a mapping)."""
    from occ_core.utils.io import read_yaml

    path = Path(path)
    if path.is_dir():
        raise OccError(f"is a folder, expected a {what} file", path)
    if not path.is_file():
        raise OccError("config file not found", path)
    return read_yaml(path, what, expect=dict)
