""".ci/run installs like a new user: it runs exactly the README's Install and Test commands."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / ".ci" / "run"


def readme_commands(text: str) -> dict[str, str]:
    """{label: command} of the lines of README's first ```bash block that end in '# Install ...'
    or '# Test ...'."""
    block = re.search(r"^```bash[ \t]*\n(.*?)^```", text, re.S | re.M)
    assert block, "README.md has no ```bash block"
    out = {}
    for line in block.group(1).splitlines():
        m = re.match(r"\s*(.*?)\s+# (Install|Test)(?:[\s(].*)?$", line)
        if m:
            assert m.group(2) not in out, f"two '# {m.group(2)}' lines in README's first bash block"
            out[m.group(2)] = m.group(1)
    return out


def run_script(script: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["CI"] = "true"
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL, env=env)


def fake_repo(tmp_path: Path, block: str) -> Path:
    """A folder with a copy of .ci/run and a README.md whose first bash block is ``block``."""
    (tmp_path / ".ci").mkdir()
    shutil.copy(SCRIPT, tmp_path / ".ci" / "run")
    (tmp_path / "README.md").write_text(f"# x\n\n```bash\n{block}```\n\n```bash\necho later  # Test\n```\n")
    return tmp_path / ".ci" / "run"


def test_print_commands_are_the_readme_lines():
    cmds = readme_commands((REPO / "README.md").read_text(encoding="utf-8"))
    assert cmds["Install"].startswith("pip install") and "pytest" in cmds["Test"], cmds
    r = run_script(SCRIPT, "--print-commands")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [cmds["Install"], cmds["Test"]]


def test_missing_readme_line_fails_loudly(tmp_path: Path):
    script = fake_repo(tmp_path, 'pip install -e ".[dev]"   # Install\nocc quickstart   # Run\n')
    r = run_script(script, "--print-commands")
    assert r.returncode != 0
    assert "# Test" in r.stderr and r.stdout == ""


def test_only_the_first_bash_block_counts(tmp_path: Path):
    script = fake_repo(tmp_path, "echo install   # Install (note)\necho test  # Test\n")
    r = run_script(script, "--print-commands")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["echo install", "echo test"]


@pytest.mark.parametrize("block,message", [
    ("true  # Install\nexit 5  # Test\n", "collected no tests (pytest exit 5)"),
    ("exit 3  # Install\ntrue  # Test\n", "Install command failed"),
])
def test_failures_are_failures(tmp_path: Path, block: str, message: str):
    """pytest's exit 5 (no tests collected) and a failed install fail the run; each command runs in
    the fresh venv, not in the one running these tests."""
    script = fake_repo(tmp_path, block)
    r = run_script(script)
    assert r.returncode != 0
    assert message in r.stderr, r.stderr


def test_commands_run_in_a_fresh_venv(tmp_path: Path):
    script = fake_repo(tmp_path, 'test "$(command -v python)" = "$VIRTUAL_ENV/bin/python"  # Install\n'
                                 'python -c "import sys; assert sys.prefix != sys.base_prefix"  # Test\n')
    r = run_script(script)
    assert r.returncode == 0, r.stdout + r.stderr
    assert ".ci/run: OK" in r.stdout
