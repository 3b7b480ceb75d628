"""The SemanticKITTI SSC submission format: prediction folders and submission zips.

A prediction folder (written by ``occ predict``, :func:`write_prediction`; read by ``occ eval --pred``,
:func:`pred_sequences_dir` / :func:`find_prediction` / :func:`load_prediction`)::

    PRED/sequences/XX/predictions/NNNNNN.label   uint16 raw SemanticKITTI ids, 256*256*32 values
    PRED/sequences/XX/predictions/NNNNNN.npy     class indices 0..19, shape [256, 256, 32] (converted
                                                  to raw ids with the inverse learning map)

``PRED`` may also be given as ``PRED/sequences`` or hold ``dataset/sequences``; when both files of a
frame exist the ``.label`` is used.

A submission zip (``occ export --pred PRED --format semantickitti-submission``, :func:`write_submission`):
the layout the CodaLab SSC server and semantic-kitti-api's ``validate_submission.py --task
completion`` expect: one zip with explicit directory entries ``sequences/``, ``sequences/XX/``,
``sequences/XX/predictions/`` and one ``sequences/XX/predictions/NNNNNN.label`` (uint16 little-endian
raw ids, 4,194,304 bytes) per frame of the split, nothing else but an optional ``description.txt``
at the root (the validator tolerates it; the server needs none). Written atomically.

Checks, per frame of the split (the prepared data's manifest): a prediction exists; ``.label`` files
have exactly 256x256x32 uint16 values and only raw ids of benchmark classes (``learning_map_inv``:
0, 10, 11, 15, 18, 20, 30, 31, 32, 40, 44, 48, 49, 50, 51, 70, 71, 72, 80, 81); ``.npy`` files have
shape [256, 256, 32] (or that many values), an integer dtype and values 0..19. Prediction files that
are no frame of the split are errors too (the validator rejects unneeded files). All problems are
collected; the error lists the first few with their file names.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from occ_core.data.formats import semantickitti as sk
from occ_core.errors import FormatError, MissingError, OccError

FORMAT = "semantickitti-submission"
PRED_DIR = "predictions"
PRED_SUFFIXES = (".label", ".npy")
LABEL_BYTES = sk.N_VOXELS * 2
BENCHMARK_RAW_IDS: tuple[int, ...] = tuple(sorted(set(sk.LEARNING_MAP_INV.values())))
"""Raw ids a submission may contain (the inverse learning map's values)."""
MAX_LISTED = 5
"""Problems listed in the error message (the count of the others follows)."""

_ALLOWED = np.zeros(1 << 16, dtype=bool)
_ALLOWED[list(BENCHMARK_RAW_IDS)] = True


# ------------------------------------------------------------------------------------------------
# Prediction files
# ------------------------------------------------------------------------------------------------


def find_prediction(pred_sequences: Path, sequence: str, frame_id: str) -> Path | None:
    """The prediction file of a frame (``.label`` first, then ``.npy``), or None."""
    folder = pred_sequences / sequence / PRED_DIR
    for suffix in PRED_SUFFIXES:
        path = folder / f"{frame_id}{suffix}"
        if path.is_file():
            return path
    return None


def load_prediction(path: str | Path, n_classes: int = sk.N_CLASSES, remap_lut: np.ndarray = sk.REMAP_LUT,
                    shape: tuple[int, int, int] = sk.GRID_SHAPE, raw_names: dict[int, str] | None = None) -> np.ndarray:
    """Read a prediction file as class indices (uint8 ``shape``, the dataset grid).

    ``.label``: uint16 raw ids mapped through ``remap_lut``; ``.npy``: class indices. Raises
    :class:`FormatError` naming the file on a wrong size, shape, dtype or value.
    """
    path = Path(path)
    if path.suffix == ".label":
        raw = sk.read_voxel_label(path, shape)  # checks the size
        classes = remap_lut[raw.astype(np.intp)]
        bad = classes >= n_classes
        if bad.any():
            value = int(raw[bad].flat[0])
            names = sk.RAW_NAMES if raw_names is None else raw_names
            what = f"'{names[value]}'" if value in names else "unknown id"
            raise FormatError(
                f"raw label id {value} ({what}) is not a benchmark class ({int(bad.sum())} voxels); "
                f"write raw ids of the classes 0..{n_classes - 1} (learning_map_inv)", path)
        return classes
    if path.suffix == ".npy":
        if not path.is_file():
            raise MissingError("prediction file not found", path)
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise FormatError(f"unreadable .npy file ({e})", path) from None
        if arr.shape != tuple(shape):
            raise FormatError(f"prediction shape {arr.shape}, expected {tuple(shape)} (x, y, z)", path)
        if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
            raise FormatError(f"prediction dtype {arr.dtype}, expected integer class indices", path)
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= n_classes:
            raise FormatError(f"class index {lo if lo < 0 else hi} outside 0..{n_classes - 1}", path)
        return arr.astype(np.uint8, copy=False)
    raise FormatError("unknown prediction format (expected .label or .npy)", path)


def pred_sequences_dir(pred: str | Path) -> Path:
    """``PRED/sequences`` (``PRED/dataset/sequences`` and ``PRED`` named ``sequences`` accepted)."""
    pred = Path(pred)
    if not pred.is_dir():
        raise MissingError("prediction folder not found", pred)
    for candidate in (pred / "sequences", pred / "dataset" / "sequences"):
        if candidate.is_dir():
            return candidate
    if pred.name == "sequences":
        return pred
    raise MissingError("no 'sequences' folder in the predictions (expected PRED/sequences/XX/predictions/NNNNNN.label)", pred)


def prediction_folder(out: str | Path, sequence: str) -> Path:
    """``OUT/sequences/XX/predictions``: where the prediction files of a sequence go."""
    return Path(out) / "sequences" / sequence / PRED_DIR


def write_prediction(out: str | Path, sequence: str, frame_id: str, raw: np.ndarray) -> Path:
    """Write ``OUT/sequences/XX/predictions/NNNNNN.label`` (uint16 little-endian raw ids, atomically)."""
    from occ_core.utils.atomic import write_bytes

    path = prediction_folder(out, sequence) / f"{frame_id}.label"
    write_bytes(path, np.asarray(raw).astype("<u2").tobytes())
    return path


# ------------------------------------------------------------------------------------------------
# Submission zips
# ------------------------------------------------------------------------------------------------


class SubmissionError(OccError):
    """The prediction folder does not make a valid submission."""


@dataclass
class SubmissionReport:
    """Result of a validation: frames checked, files found per kind, problems (file: message)."""

    split: str
    frames: int = 0
    labels: int = 0
    npy: int = 0
    problems: list[str] = field(default_factory=list)
    unchecked_split: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> dict[str, Any]:
        return {"split": self.split, "frames": self.frames, "label_files": self.labels, "npy_files": self.npy,
                "problems": len(self.problems), "split_checked": not self.unchecked_split}

    def error(self) -> SubmissionError:
        shown = "; ".join(self.problems[:MAX_LISTED])
        more = f"; ... and {len(self.problems) - MAX_LISTED} more" if len(self.problems) > MAX_LISTED else ""
        return SubmissionError(f"{len(self.problems)} problem(s) in the predictions for split '{self.split}': {shown}{more}")


def _raw_name(value: int) -> str:
    name = sk.RAW_NAMES.get(value)
    return f"'{name}'" if name else "unknown id"


def read_submission_labels(path: str | Path) -> np.ndarray:
    """One prediction file as uint16 raw ids ``[N_VOXELS]`` ready for the zip; raises
    :class:`FormatError` naming the file on a wrong size, shape, dtype or value."""
    path = Path(path)
    if path.suffix == ".label":
        size = path.stat().st_size
        if size != LABEL_BYTES:
            raise FormatError(f"{size} bytes, expected {LABEL_BYTES} (256x256x32 uint16 raw ids)", path)
        raw = np.fromfile(path, dtype="<u2")
    elif path.suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise FormatError(f"unreadable .npy file ({e})", path) from None
        if arr.size != sk.N_VOXELS or (arr.ndim != 1 and arr.shape != sk.GRID_SHAPE):
            raise FormatError(f"shape {arr.shape}, expected {sk.GRID_SHAPE} (x, y, z) class indices", path)
        if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
            raise FormatError(f"dtype {arr.dtype}, expected integer class indices 0..19", path)
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= sk.N_CLASSES:
            bad = lo if lo < 0 else hi
            raise FormatError(f"class index {bad} outside 0..{sk.N_CLASSES - 1} "
                              f"({int(((arr < 0) | (arr >= sk.N_CLASSES)).sum())} voxels)", path)
        return sk.INVERSE_LUT[arr.reshape(-1).astype(np.intp)].astype("<u2")
    else:
        raise FormatError("unknown prediction format (expected .label or .npy)", path)
    bad = ~_ALLOWED[raw]
    if bad.any():
        values = np.unique(raw[bad])
        first = int(values[0])
        others = f" (and {len(values) - 1} other id(s))" if len(values) > 1 else ""
        raise FormatError(f"raw id {first} ({_raw_name(first)}){others} is not a benchmark class "
                          f"({int(bad.sum())} voxels); write raw ids of learning_map_inv", path)
    return raw


def _split_frames(data: str | Path | None, split: str, pred_seqs: Path, report: SubmissionReport) -> list[tuple[str, str]]:
    """``(sequence, id)`` of the split's frames (from the prepared data), or of the prediction files
    found when no prepared data is given (completeness then unchecked)."""
    if data is not None:
        from occ_core.data.prepare.layout import PreparedDataset

        prepared = PreparedDataset(data)
        if prepared.dataset != "semantickitti":
            raise OccError(f"'{FORMAT}' is for SemanticKITTI; the prepared data is '{prepared.dataset}'", data)
        frames = [(f.sequence, f.id) for f in prepared.frames(split)]
        if not frames:
            raise MissingError(f"split '{split}' has no frames", Path(data) / "manifest.json")
        return frames
    report.unchecked_split = True
    found = set()
    for path in _prediction_files(pred_seqs):
        found.add((path.parent.parent.name, path.stem))
    if not found:
        raise MissingError("no prediction files (expected sequences/XX/predictions/NNNNNN.label or .npy)", pred_seqs)
    return sorted(found)


def _prediction_files(pred_seqs: Path) -> Iterator[Path]:
    for seq in sorted(p for p in pred_seqs.iterdir() if p.is_dir()):
        folder = seq / PRED_DIR
        if folder.is_dir():
            yield from sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def iter_submission(pred: str | Path, data: str | Path | None = None, split: str = "test"
                    ) -> Iterator[tuple[str, str, np.ndarray | None, SubmissionReport]]:
    """Validate frame by frame: yields ``(sequence, id, raw uint16 [N] or None on a problem, report)``;
    the report's problems are complete once the iterator is exhausted."""
    pred_seqs = pred_sequences_dir(pred)
    report = SubmissionReport(split=split)
    frames = _split_frames(data, split, pred_seqs, report)
    expected = set(frames)
    used: set[Path] = set()
    for seq, fid in frames:
        folder = pred_seqs / seq / PRED_DIR
        path = next((folder / f"{fid}{s}" for s in PRED_SUFFIXES if (folder / f"{fid}{s}").is_file()), None)
        report.frames += 1
        if path is None:
            report.problems.append(f"{folder / (fid + '.label')}: missing (frame {seq}/{fid} of split '{split}')")
            yield seq, fid, None, report
            continue
        used.add(path)
        if path.suffix == ".label":
            report.labels += 1
        else:
            report.npy += 1
        try:
            raw = read_submission_labels(path)
        except (FormatError, OSError) as e:
            report.problems.append(str(e))
            yield seq, fid, None, report
            continue
        yield seq, fid, raw, report
    for path in _prediction_files(pred_seqs):
        key = (path.parent.parent.name, path.stem)
        if path in used:
            continue
        if key in expected and path.suffix in PRED_SUFFIXES:
            continue  # the .npy beside a .label of the same frame: the .label is used
        report.problems.append(f"{path}: not a frame of split '{split}' (the server rejects unneeded files)")


def validate_predictions(pred: str | Path, data: str | Path | None = None, split: str = "test") -> SubmissionReport:
    """Check a prediction folder against a split without writing anything (``--check``)."""
    report = None
    for *_, report in iter_submission(pred, data, split):
        pass
    if report is None:  # pragma: no cover - _split_frames never returns an empty list
        raise MissingError("no frames", pred)
    return report


def _dir_entry(zf: zipfile.ZipFile, name: str) -> None:
    info = zipfile.ZipInfo(name)
    info.external_attr = (0o40755 << 16) | 0x10  # directory, rwxr-xr-x
    zf.writestr(info, b"")


def write_submission(pred: str | Path, out: str | Path, data: str | Path | None = None, split: str = "test",
                     description: str | None = None) -> dict[str, Any]:
    """Validate ``pred`` and write the submission zip ``out`` (atomically; nothing is written when a
    problem is found). Returns the report summary plus ``out`` and ``bytes``."""
    from occ_core.utils.atomic import atomic_path

    out = Path(out)
    if out.suffix != ".zip":
        raise OccError("the submission must be a .zip file (the server and validate_submission.py require it)", out)
    report: SubmissionReport | None = None
    with atomic_path(out) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
            _dir_entry(zf, "sequences/")
            seen: set[str] = set()
            for seq, fid, raw, report in iter_submission(pred, data, split):
                if report.problems:
                    continue  # keep validating, stop writing
                if seq not in seen:
                    _dir_entry(zf, f"sequences/{seq}/")
                    _dir_entry(zf, f"sequences/{seq}/{PRED_DIR}/")
                    seen.add(seq)
                assert raw is not None
                zf.writestr(f"sequences/{seq}/{PRED_DIR}/{fid}.label", raw.astype("<u2", copy=False).tobytes())
            if report is not None and report.ok and description:
                zf.writestr("description.txt", description.rstrip("\n") + "\n")
        if report is None or not report.ok:
            raise (report.error() if report is not None else MissingError("no frames", pred))
    summary = report.summary()
    summary.update({"out": str(out), "bytes": out.stat().st_size})
    return summary


def check_zip(path: str | Path, frames: list[tuple[str, str]]) -> list[str]:
    """The checks of semantic-kitti-api's ``validate_submission.py --task completion`` on a zip, for
    the given ``(sequence, id)`` frames: problems found (empty = valid)."""
    path = Path(path)
    problems: list[str] = []
    if path.suffix != ".zip":
        problems.append("competition bundle must end with .zip")
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        dirs = {i.filename for i in infos if i.filename.endswith("/")}
        files = {i.filename: i for i in infos if not i.filename.endswith("/")}
    files.pop("description.txt", None)
    if "sequences/" not in dirs:
        problems.append('directory "sequences/" missing')
    needed = set()
    for seq in sorted({s for s, _ in frames}):
        for d in (f"sequences/{seq}/", f"sequences/{seq}/{PRED_DIR}/"):
            if d not in dirs:
                problems.append(f'directory "{d}" missing')
    for seq, fid in frames:
        name = f"sequences/{seq}/{PRED_DIR}/{fid}.label"
        needed.add(name)
        if name not in files:
            problems.append(f'"{name}" missing')
        elif files[name].file_size != LABEL_BYTES:
            problems.append(f'"{name}" has {files[name].file_size // 2} labels, expected {sk.N_VOXELS}')
    extra = sorted(set(files) - needed)
    if extra:
        problems.append(f"unneeded files, e.g. {', '.join(extra[:10])}")
    return problems
