"""Every third-party package the code imports is declared in pyproject.toml.

A fresh ``pip install -e ".[dev]"`` must be enough to import every module of occ_core, occ_cli,
tests and bench. The rules:

* an unguarded import in ``occ_core`` / ``occ_cli`` needs ``[project].dependencies``;
* an unguarded import in ``tests`` / ``bench`` needs ``dependencies`` or the ``dev`` extra;
* an import guarded by ``try: ... except ImportError`` (anywhere in the same file) or a
  ``pytest.importorskip("x")`` may come from any optional extra (e.g. ``gsplat``);
* ``pytest.importorskip`` of a package that ``dependencies`` or ``dev`` declares is an error: a
  broken install would then show up as skips instead of failures.

Only pyproject.toml is read for the declared names; the table below maps import names to
distribution names where the two differ and the installed metadata cannot tell.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCANNED = ("occ_core", "occ_cli", "tests", "bench")
OWN_PACKAGES = {"occ_core", "occ_cli", "tests", "bench"}

# import name -> distribution name, where they differ (fallback when the package is not installed)
IMPORT_TO_DIST = {
    "cv2": "opencv-python-headless",
    "yaml": "pyyaml",
    "PIL": "pillow",
    "sklearn": "scikit-learn",
    "skimage": "scikit-image",
    "google": "protobuf",
    "nuscenes": "nuscenes-devkit",
    "spconv": "spconv",
    "cumm": "cumm",
    "mpl_toolkits": "matplotlib",
    "attr": "attrs",
    "dateutil": "python-dateutil",
    "pkg_resources": "setuptools",
    "typing_extensions": "typing-extensions",
    "ml_dtypes": "ml-dtypes",
    "onnx_ir": "onnx-ir",
    "pytest": "pytest",
    "xdist": "pytest-xdist",
}
_GUARD_EXCEPTIONS = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}


def normalize(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(req: str) -> str:
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
    assert m, f"cannot parse requirement {req!r} in pyproject.toml"
    return normalize(m.group(1))


def declared() -> tuple[set[str], dict[str, set[str]]]:
    """(names in [project].dependencies, {extra: names}) from pyproject.toml."""
    with open(REPO / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    deps = {requirement_name(r) for r in project.get("dependencies", [])}
    extras = {k: {requirement_name(r) for r in v} for k, v in project.get("optional-dependencies", {}).items()}
    return deps, extras


@functools.lru_cache(maxsize=1)
def _installed() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def candidate_dists(top: str) -> set[str]:
    """Distribution names that may provide import name ``top``."""
    out = {normalize(d) for d in _installed().get(top, [])}
    if top in IMPORT_TO_DIST:
        out.add(normalize(IMPORT_TO_DIST[top]))
    if not out:
        out.add(normalize(top))
    return out


@dataclass(frozen=True)
class Use:
    module: str  # top-level import name
    file: str  # path relative to the repo
    line: int
    guarded: bool  # try/except ImportError in the file, or pytest.importorskip
    importorskip: bool


def _is_import_guard(handler: ast.ExceptHandler) -> bool:
    t = handler.type
    if t is None:
        return True
    names = t.elts if isinstance(t, ast.Tuple) else [t]
    return any(isinstance(n, ast.Name) and n.id in _GUARD_EXCEPTIONS
               or isinstance(n, ast.Attribute) and n.attr in _GUARD_EXCEPTIONS for n in names)


def _local_modules() -> set[str]:
    """Names of the scanned files and folders: helper modules tests import by bare name
    (``_raw``, ``_probe_method``, ``conftest``) and bench scripts importing each other."""
    out = set(OWN_PACKAGES)
    for top in SCANNED:
        for p in (REPO / top).rglob("*.py"):
            out.add(p.stem)
            out.update(part for part in p.relative_to(REPO).parts[:-1])
    return out


def imports_of(path: Path) -> list[Use]:
    """Top-level names of absolute imports in ``path`` (including those inside functions), and of
    ``pytest.importorskip("x")`` calls."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    rel = path.relative_to(REPO).as_posix()
    guarded_lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(_is_import_guard(h) for h in node.handlers):
            for stmt in node.body:
                for sub in ast.walk(stmt):
                    if isinstance(sub, (ast.Import, ast.ImportFrom)):
                        guarded_lines.add(sub.lineno)
    raw: list[tuple[str, int, bool, bool]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                raw.append((alias.name.split(".")[0], node.lineno, node.lineno in guarded_lines, False))
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                raw.append((node.module.split(".")[0], node.lineno, node.lineno in guarded_lines, False))
        elif isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if name == "importorskip" and node.args and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str):
                raw.append((node.args[0].value.split(".")[0], node.lineno, True, True))
    # a module the file imports under a guard somewhere is optional for the whole file
    # (e.g. a lazy import after an availability check that itself tries the import)
    optional_here = {m for m, _, g, _ in raw if g}
    return [Use(m, rel, line, g or m in optional_here, skip) for m, line, g, skip in raw]


@functools.lru_cache(maxsize=1)
def _third_party_uses() -> tuple[Use, ...]:
    local = _local_modules()
    stdlib = set(sys.stdlib_module_names)
    uses = []
    for top in SCANNED:
        for path in sorted((REPO / top).rglob("*.py")):
            uses += [u for u in imports_of(path) if u.module not in stdlib and u.module not in local]
    return tuple(uses)


def third_party_uses() -> list[Use]:
    return list(_third_party_uses())


def _where(u: Use) -> str:
    return f"{u.file}:{u.line}"


def test_scan_sees_the_known_imports():
    """The scanner itself works: it finds imports at module level, inside functions and in
    importorskip calls, and leaves the standard library and the project's own modules out."""
    mods = {u.module for u in third_party_uses()}
    assert {"torch", "numpy", "typer", "pytest"} <= mods
    assert "hypothesis" in mods  # tests/data/prepare/test_downsample.py
    assert "onnx" in mods  # imported inside functions only
    assert not mods & {"os", "sys", "__future__", "occ_core", "occ_cli", "_raw", "_probe_method", "conftest"}


def test_every_third_party_import_is_declared():
    deps, extras = declared()
    dev = extras.get("dev", set())
    any_extra = set().union(*extras.values()) if extras else set()
    problems = []
    for u in third_party_uses():
        dists = candidate_dists(u.module)
        in_tests = u.file.split("/")[0] in ("tests", "bench")
        allowed = set(deps)
        if in_tests:
            allowed |= dev
        if u.guarded:
            allowed |= any_extra
        if dists & allowed:
            continue
        where = "[project].dependencies" + (" or the 'dev' extra" if in_tests else "")
        if u.guarded:
            where += " or an optional extra"
        elif dists & any_extra:
            where += " (it is only in an optional extra, but this import is not guarded by try/except ImportError)"
        problems.append(f"{_where(u)}: imports '{u.module}' (distribution {' / '.join(sorted(dists))}), "
                        f"which pyproject.toml does not declare in {where}")
    assert not problems, "undeclared dependencies:\n" + "\n".join(sorted(set(problems)))


def test_no_importorskip_of_declared_dependencies():
    """``pytest.importorskip`` is for genuinely optional packages (gsplat, ...); for a package the
    install always brings, a missing module must fail the test, not skip it."""
    deps, extras = declared()
    hard = deps | extras.get("dev", set())
    problems = [f"{_where(u)}: pytest.importorskip('{u.module}') of a declared dependency; import it plainly"
                for u in third_party_uses() if u.importorskip and candidate_dists(u.module) & hard]
    assert not problems, "\n".join(problems)


def test_declared_names_parse():
    deps, extras = declared()
    assert "torch" in deps and "dev" in extras
    assert {"hypothesis", "pytest", "pytest-xdist"} <= extras["dev"]


def test_available_methods_in_a_fresh_interpreter():
    """registry.available_methods() works in a bare interpreter, where nobody has imported
    ``importlib.util`` beforehand. ``-S`` keeps site (and the editable install's .pth finder, which
    imports importlib.util) out; the repo and site-packages go on sys.path by hand instead."""
    import site

    paths = [str(REPO), *site.getsitepackages()]
    code = (f"import sys; sys.path[:0] = {paths!r}; "
            "assert 'importlib.util' not in sys.modules; "
            "from occ_core.registry import available_methods; print(sorted(available_methods()))")
    r = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=REPO.parent)
    assert r.returncode == 0, r.stderr
    names = ast.literal_eval(r.stdout.strip().splitlines()[-1])
    assert {"baseline", "vpocc", "b2s"} <= set(names), names


def test_dynamo_exporter_works_on_the_default_install(tmp_path: Path):
    """``occ export --exporter dynamo`` needs onnxscript, which [project].dependencies declares (it
    is pure Python and pulls no other torch): the default install exports a small module."""
    import onnx
    import onnxscript  # noqa: F401  (the scanner above then requires it to be declared)
    import torch

    from occ_core.export.model import export_onnx

    path = export_onnx(torch.nn.Linear(3, 2).eval(), [torch.randn(1, 3)], tmp_path / "lin.onnx", ["x"],
                       exporter="dynamo")
    assert [i.name for i in onnx.load(str(path)).graph.input] == ["x"]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
