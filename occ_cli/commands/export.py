"""`occ export`: a run's network as ONNX / TorchScript, or predictions as a SemanticKITTI submission zip."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from occ_cli.console import console, fail, user_errors

MODEL_FORMATS = ("onnx", "torchscript")
SUBMISSION_FORMAT = "semantickitti-submission"


@user_errors
def export_command(
    run: Optional[Path] = typer.Option(None, "--run", help="Run folder (written by 'occ train'): export its network."),
    pred: Optional[Path] = typer.Option(None, "--pred", help="Prediction folder (PRED/sequences/XX/predictions/NNNNNN.label or .npy): export a submission zip."),
    fmt: str = typer.Option(..., "--format", help="onnx or torchscript (with --run); semantickitti-submission (with --pred)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output file: model.onnx / model.pt, or submission.zip."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="'best' (falls back to 'last'), 'last', or a checkpoint file."),
    outputs: str = typer.Option("logits", "--outputs", help="Model output: 'logits' [1, C, X, Y, Z] float32 (the model's logits) or 'labels' [1, X, Y, Z] uint8 (model.predict, as 'occ predict'); X, Y, Z: the run's dataset grid."),
    data: Optional[Path] = typer.Option(None, "--data", help="Prepared data folder: the split's frame list (--pred), the example frame (--run; default the run's data)."),
    split: Optional[str] = typer.Option(None, "--split", help="Split to check the predictions against (default test), or to take the example frame from (default the run's val split)."),
    check: bool = typer.Option(False, "--check", help="With --pred: validate only, write nothing."),
    description: Optional[str] = typer.Option(None, "--description", help="With --pred: add description.txt (this text, or the content of this file) to the zip."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset (17 or newer)."),
    exporter: str = typer.Option("torchscript", "--exporter", help="ONNX exporter: 'torchscript' (torch.onnx.export dynamo=False; offline, needs onnx) or 'dynamo' (needs onnxscript)."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="With --run: run the exported file on the example frame and compare with PyTorch (needs onnxruntime for ONNX)."),
) -> None:
    """Export a trained network (its own forward; fixed input size, positional tensor inputs) or a submission zip."""
    if (run is None) == (pred is None):
        fail("give exactly one of --run (export a network) or --pred (export a submission)")
    if run is not None:
        if fmt not in MODEL_FORMATS:
            fail(f"--run exports --format onnx or torchscript (got '{fmt}')")
        if outputs not in ("logits", "labels"):
            fail(f"--outputs must be logits or labels (got '{outputs}')")
        if out is None:
            fail("--out FILE is required")
        from occ_core.export.model import describe, export_model, read_metadata

        if fmt == "onnx":
            _need("onnx", "the ONNX export")
            if verify:
                _need("onnxruntime", "--verify of an ONNX export (or pass --no-verify)")
        summary = export_model(run, fmt, out, checkpoint=checkpoint, outputs=outputs, data=data, split=split,
                               verify=verify, opset=opset, exporter=exporter)
        console.print(f"[green]wrote[/] {out} ({summary['bytes'] / 1e6:.1f} MB)", soft_wrap=True)
        console.print(describe(read_metadata(out)), highlight=False, markup=False, soft_wrap=True)
        if verify:
            if "label_agreement" in summary:
                line = (f"check on the example frame: labels equal to model.predict on "
                        f"{100 * summary['label_agreement']:.4f}% of the voxels")
            else:
                line = (f"check on the example frame: argmax agreement {100 * summary['argmax_agreement']:.4f}%, "
                        f"max |logit difference| {summary['max_abs_diff']:.2e}")
            console.print(line, highlight=False, soft_wrap=True)
        return

    if fmt != SUBMISSION_FORMAT:
        fail(f"--pred exports --format {SUBMISSION_FORMAT} (got '{fmt}')")
    from occ_core.data.formats.submission import validate_predictions, write_submission

    split = split or "test"
    if description is not None and Path(description).is_file():
        description = Path(description).read_text()
    if check:
        report = validate_predictions(pred, data, split)
        if not report.ok:
            raise report.error()
        note = "" if data is not None else " (no --data: completeness of the split not checked)"
        console.print(f"[green]ok[/] {report.frames} frames of split '{split}' ({report.labels} .label, {report.npy} .npy){note}",
                      soft_wrap=True)
        return
    if out is None:
        fail("--out FILE.zip is required (or --check to validate only)")
    summary = write_submission(pred, out, data, split, description)
    note = "" if data is not None else " (no --data: completeness of the split not checked)"
    console.print(f"[green]wrote[/] {out}: {summary['frames']} frames of split '{split}', {summary['bytes'] / 1e6:.1f} MB{note}",
                  soft_wrap=True)


def _need(module: str, what: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        fail(f"{what} needs the '{module}' package (pip install {module})")
