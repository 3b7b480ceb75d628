from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from occ_cli.main import app

runner = CliRunner()


def test_help_does_not_import_torch():
    code = (
        "import sys\n"
        "from occ_cli.main import app\n"
        "from typer.testing import CliRunner\n"
        "r = CliRunner().invoke(app, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "assert 'prepare' in r.output and 'eval' in r.output\n"
        "print(sorted(m for m in ('torch', 'cv2', 'numpy') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_console_script_help_and_version():
    out = subprocess.run([sys.executable, "-m", "occ_cli.main", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("occ ")
    result = runner.invoke(app, ["prepare", "--help"])
    assert result.exit_code == 0
    for sub in ("kitti", "kitti360", "synthetic"):
        assert sub in result.output


def test_missing_root_is_one_line_and_nonzero(tmp_path: Path):
    result = runner.invoke(app, ["prepare", "kitti", "--root", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    lines = [l for l in result.output.splitlines() if l.strip()]
    assert len(lines) == 1 and "nope" in lines[0] and "folder not found" in lines[0]
    assert "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_malformed_file_is_one_line(raw_kitti: Path, tmp_path: Path):
    bad = raw_kitti / "dataset" / "sequences" / "08" / "voxels" / "000005.label"
    bad.write_bytes(b"\0" * 3)
    result = runner.invoke(app, ["prepare", "kitti", "--root", str(raw_kitti), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    lines = [l for l in result.output.splitlines() if l.strip()]
    assert len(lines) == 1 and "000005.label" in lines[0] and "wrong file size" in lines[0]
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_prepare_kitti_cli(raw_kitti: Path, tmp_path: Path):
    result = runner.invoke(app, ["prepare", "kitti", "--root", str(raw_kitti / "dataset"), "--out", str(tmp_path / "o"),
                                 "--sequences", "8", "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert "3 frames (3 labeled)" in result.output
    assert sorted(p.name for p in (tmp_path / "o" / "sequences" / "08" / "frames").iterdir()) == [
        "000000.npz", "000005.npz", "000010.npz"]


COMMANDS = ("prepare", "vp-estimate", "pretrain-binary", "train", "render", "eval", "export", "predict", "quickstart")


def test_help_order_and_plain_flags():
    out = runner.invoke(app, ["--help"]).output
    lines = [line for line in out.splitlines() if line.startswith("│ ") and line[2] != " "]
    listed = [line.split()[1] for line in lines if line.split()[1] in COMMANDS]
    assert listed == list(COMMANDS)
    helps = [["--help"], *([c, "--help"] for c in COMMANDS if c != "prepare"),
             *(["prepare", s, "--help"] for s in ("kitti", "kitti360", "synthetic"))]
    for argv in helps:
        r = runner.invoke(app, argv)
        assert r.exit_code == 0, (argv, r.output)
        assert "<bool>" not in r.output, argv
    assert "--no-force" in runner.invoke(app, ["prepare", "kitti", "--help"]).output


def test_kitti360_help_names_its_cameras():
    out = " ".join(runner.invoke(app, ["prepare", "kitti360", "--help"]).output.split())
    assert "image_00" in out and "image_01" in out
    assert "image_2" not in out and "image_3" not in out


def test_force_is_a_plain_flag(tmp_path: Path):
    for flag in ("--force", "--no-force"):
        r = runner.invoke(app, ["prepare", "kitti", "--root", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), flag])
        assert r.exit_code == 2 and "folder not found" in r.output, r.output


def test_random_init_warning_is_one_line_once_and_quiet_before_a_checkpoint(capsys):
    import warnings

    from occ_cli import console
    from occ_core.models.backbone import build_backbone, quiet_random_init

    console._shown_warnings.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        console.install_warning_printer()
        with quiet_random_init():
            build_backbone("resnet18")
        assert capsys.readouterr().err == ""
        build_backbone("resnet18")
        build_backbone("resnet18")
        build_backbone("resnet18", warn=False)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("warning: backbone resnet18: no pretrained weights"), err
    assert "UserWarning" not in err[0] and "warnings.warn" not in err[0]
