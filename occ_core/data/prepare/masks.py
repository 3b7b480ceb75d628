"""Per-image instance masks in a prepared folder (SAM's automatic masks, the synthetic generator's
instances, or any external generator's), read by the loader as ``masks`` (``DataConfig.load_masks``).

::

    OUT/masks/<sequence>/<frame_id>/<camera_name>.png    uint16 id image of the raw camera image
                                                           (same W x H), 0 = no mask, 1..K = mask k,
                                                           higher score first; each pixel holds the
                                                           best-scored mask covering it
    OUT/masks/<sequence>/<frame_id>/<camera_name>.json   {"format": "occ-masks", "version": 1,
                                                           "source", "size": [W, H],
                                                           "scores": [K], "areas": [K], ...}
    OUT/masks/masks.json                                  how the masks were made (options record)

``scores[k-1]`` is mask k's score (SAM: predicted IoU; synthetic and external masks without scores:
1.0), ``areas[k-1]`` its visible pixels in the id image. The id image is stored at the raw image's
size, so the loader crops, resizes (nearest) and flips it exactly like the image.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from occ_core.errors import FormatError, MissingError, OccError

MASKS_DIR = "masks"
RECORD = "masks.json"
"""``OUT/masks/masks.json``: the options the masks were made with (source, model, settings)."""
FORMAT = "occ-masks"
VERSION = 1
MAX_MASKS = 65535


def mask_path(root: str | Path, sequence: str, frame_id: str, camera: str) -> Path:
    """The id image of one camera image: ``OUT/masks/<sequence>/<frame_id>/<camera>.png``."""
    return Path(root) / MASKS_DIR / sequence / frame_id / f"{camera}.png"


def info_path(root: str | Path, sequence: str, frame_id: str, camera: str) -> Path:
    """The scores/areas file beside the id image (``<camera>.json``)."""
    return Path(root) / MASKS_DIR / sequence / frame_id / f"{camera}.json"


def read_id_image(path: str | Path, size: tuple[int, int] | None = None, what: str = "mask id image") -> np.ndarray:
    """A single-channel 8- or 16-bit PNG id image as uint16 [H, W]; FormatError naming ``path`` when it
    is unreadable, has colour channels or another bit depth, or is not ``size`` (W, H)."""
    import cv2

    path = Path(path)
    if not path.is_file():
        raise MissingError(f"{what} missing (run 'occ prepare masks')", path)
    ids = cv2.imread(os.fspath(path), cv2.IMREAD_UNCHANGED)
    if ids is None:
        raise FormatError(f"unreadable {what} (not a PNG, truncated or damaged)", path)
    if ids.ndim != 2:
        raise FormatError(f"{what} has {ids.shape[2]} channels, expected one (a single-channel id image)", path)
    if ids.dtype not in (np.uint8, np.uint16):
        raise FormatError(f"{what} is {ids.dtype}, expected an 8- or 16-bit PNG", path)
    if size is not None and (ids.shape[1], ids.shape[0]) != tuple(size):
        raise FormatError(f"{what} is {ids.shape[1]}x{ids.shape[0]}, its camera image is {size[0]}x{size[1]}", path)
    return ids.astype(np.uint16, copy=False)


def image_size(path: str | Path) -> tuple[int, int]:
    """(W, H) of an image file from its header (PIL, no decoding); FormatError when unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, UnidentifiedImageError) as e:
        raise FormatError(f"cannot read image ({e.__class__.__name__})", path) from None


def id_image(masks: list[np.ndarray], scores: list[float]) -> tuple[np.ndarray, list[int], list[int]]:
    """Masks (bool [H, W]) with scores -> (uint16 id image, kept mask indices by decreasing score,
    visible areas): id k marks the k-th best mask; where masks overlap the better score wins; masks left
    with no visible pixel get no id."""
    if not masks:
        raise ValueError("no masks: use np.zeros for the id image")
    order = sorted(range(len(masks)), key=lambda i: -float(scores[i]))  # stable: ties keep input order
    h, w = masks[0].shape
    best = np.full((h, w), -1, np.int64)
    for rank in reversed(range(len(order))):  # worst first, so better masks overwrite
        best[masks[order[rank]]] = rank
    counts = np.bincount(best[best >= 0].ravel(), minlength=len(order))
    visible = [r for r in range(len(order)) if counts[r] > 0][:MAX_MASKS]
    new_id = np.zeros(len(order) + 1, np.uint16)  # rank -> id (0 for dropped); index -1 -> 0
    for k, r in enumerate(visible):
        new_id[r] = k + 1
    ids = new_id[best]  # best == -1 reads new_id[-1] = 0
    return ids.astype(np.uint16), [order[r] for r in visible], [int(counts[r]) for r in visible]


def write_masks(root: str | Path, sequence: str, frame_id: str, camera: str, ids: np.ndarray,
                scores: list[float], areas: list[int], source: str, extra: dict[str, Any] | None = None) -> None:
    """Write one camera image's id image and its ``.json`` atomically (the PNG last: its presence marks
    the image done)."""
    import cv2

    from occ_core.utils.atomic import atomic_path, write_json

    ids = np.ascontiguousarray(ids, dtype=np.uint16)
    if len(scores) != int(ids.max(initial=0)) or len(areas) != len(scores):
        raise ValueError(f"{len(scores)} scores / {len(areas)} areas for ids up to {int(ids.max(initial=0))}")
    info = {"format": FORMAT, "version": VERSION, "source": source, "size": [int(ids.shape[1]), int(ids.shape[0])],
            "scores": [round(float(s), 6) for s in scores], "areas": [int(a) for a in areas]}
    info.update(extra or {})
    write_json(info_path(root, sequence, frame_id, camera), info, indent=None)
    png = mask_path(root, sequence, frame_id, camera)
    with atomic_path(png) as tmp:
        if not cv2.imwrite(os.fspath(tmp), ids, [cv2.IMWRITE_PNG_COMPRESSION, 3]):
            raise OSError(f"could not write {png}")


def read_info(root: str | Path, sequence: str, frame_id: str, camera: str) -> dict[str, Any]:
    """The ``.json`` of one camera image's masks (scores, areas, source, size)."""
    from occ_core.utils.io import read_json

    path = info_path(root, sequence, frame_id, camera)
    if not path.is_file():
        raise MissingError("mask scores missing (run 'occ prepare masks')", path)
    info = read_json(path, "mask scores", expect=dict)
    if info.get("format") != FORMAT or not isinstance(info.get("scores"), list):
        raise FormatError(f"not an {FORMAT} file (keys format, scores, areas)", path)
    return info


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)


# ------------------------------------------------------------------------------------------------
# occ prepare masks
# ------------------------------------------------------------------------------------------------

SAM_SETTINGS = ("points_per_side", "pred_iou_thresh", "stability_score_thresh", "stability_score_offset",
                "box_nms_thresh", "crop_n_layers", "min_mask_region_area")
"""Generator settings that change the masks (recorded in masks.json; points_per_batch does not)."""

EXTERNAL_MODES = ("L", "I", "I;16", "I;16B", "I;16L")
"""PIL modes of single-channel 8/16-bit PNGs."""


def _jobs(data, force: bool) -> tuple[list[dict[str, Any]], int, int]:
    """One job per camera image of every frame (frames without that camera's image are left out):
    (jobs still to do, images in all, images already done)."""
    jobs, total, done = [], 0, 0
    for f in data.frames():
        for cam in data.spec.cameras:
            image = data.raw_path(f, cam.name)
            if image is None:
                continue
            total += 1
            out = mask_path(data.root, f.sequence, f.id, cam.name)
            if out.is_file() and not force:
                done += 1
                continue
            jobs.append({"sequence": f.sequence, "id": f.id, "camera": cam.name, "image": image})
    return jobs, total, done


def _check_images(jobs: list[dict[str, Any]]) -> None:
    """Every camera image exists (stat only), before anything is written."""
    for job in jobs:
        if not Path(job["image"]).is_file():
            raise MissingError("camera image missing (the prepared folder's raw data moved?)", job["image"])


def _external_path(folder: Path, job: dict[str, Any]) -> Path:
    return folder / job["sequence"] / job["id"] / f"{job['camera']}.png"


def _check_external(folder: Path, jobs: list[dict[str, Any]]) -> None:
    """Every external id image exists, is a single-channel 8/16-bit PNG and has its camera image's size
    (PNG headers only), before anything is written."""
    from PIL import Image, UnidentifiedImageError

    for job in jobs:
        path = _external_path(folder, job)
        if not path.is_file():
            raise MissingError(f"no mask id image for camera image {Path(job['image']).name} of frame "
                               f"{job['sequence']}/{job['id']} (expected <masks>/<sequence>/<frame_id>/<camera>.png)",
                               path)
        try:
            with Image.open(path) as im:
                size, mode, fmt = im.size, im.mode, im.format
        except (OSError, UnidentifiedImageError):
            raise FormatError("unreadable mask id image (not a PNG, truncated or damaged)", path) from None
        if fmt != "PNG" or mode not in EXTERNAL_MODES:
            raise FormatError(f"mask id image is a {fmt} of mode {mode}, expected a single-channel 8- or 16-bit PNG",
                              path)
        want = image_size(job["image"])
        if size != want:
            raise FormatError(f"mask id image is {size[0]}x{size[1]}, its camera image {job['image']} is "
                              f"{want[0]}x{want[1]}", path)


PER_MASK_KEYS = ("kinds", "stability")
"""Per-mask lists of an external ``.json`` that the import keeps (reordered with the ids)."""


def _external_info(folder: Path, job: dict[str, Any]) -> dict[str, Any] | None:
    """The optional ``<camera>.json`` beside an external id image: ``scores`` (score of id k at position
    k-1, as this layout writes it) and optionally per-mask ``kinds`` / ``stability`` lists."""
    from occ_core.utils.io import read_json

    path = folder / job["sequence"] / job["id"] / f"{job['camera']}.json"
    if not path.is_file():
        return None
    info = read_json(path, "mask scores", expect=dict)
    scores = info.get("scores")
    if not isinstance(scores, list) or not all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in scores):
        raise FormatError("'scores' must be a list of numbers (the score of id k at position k-1)", path)
    for key in PER_MASK_KEYS:
        if key in info and (not isinstance(info[key], list) or len(info[key]) != len(scores)):
            raise FormatError(f"'{key}' must be a list as long as 'scores'", path)
    return info


def import_external(folder: Path, job: dict[str, Any], out: Path) -> int:
    """Renumber one external id image (any ids, 0 = none) into this layout: ids by decreasing score (from
    its ``.json`` when given, else 1.0) and, for equal scores, decreasing area. Returns the mask count."""
    path = _external_path(folder, job)
    raw = read_id_image(path, image_size(job["image"]))
    values, counts = np.unique(raw, return_counts=True)
    keep = values != 0
    values, counts = values[keep], counts[keep]
    info = _external_info(folder, job)
    given = {k + 1: float(v) for k, v in enumerate(info["scores"])} if info else {}
    scores = [given.get(int(v), 1.0) for v in values]
    order = sorted(range(len(values)), key=lambda i: (-scores[i], -int(counts[i]), int(values[i])))
    lut = np.zeros(int(raw.max(initial=0)) + 1, np.uint16)
    for k, i in enumerate(order):
        lut[values[i]] = k + 1
    extra: dict[str, Any] = {"ids": [int(values[i]) for i in order]}  # the external ids of masks 1..K
    if info:
        if isinstance(info.get("source"), str):
            extra["origin"] = info["source"]
        for key in PER_MASK_KEYS:
            if key in info:
                extra[key] = [info[key][int(values[i]) - 1] if int(values[i]) <= len(info[key]) else None
                              for i in order]
    write_masks(out, job["sequence"], job["id"], job["camera"], lut[raw], [scores[i] for i in order],
                [int(counts[i]) for i in order], "external", extra)
    return len(order)


_WORKER: dict[str, Any] = {}


def _init_sam_worker(checkpoint: str, model: str | None, device: str, settings: dict[str, Any], threads: int,
                     parent: int | None = None) -> None:
    import torch

    from occ_core.sam.generator import AutomaticMaskGenerator, GeneratorConfig
    from occ_core.sam.model import load_sam

    if parent is not None:
        from occ_core.utils.procs import die_with_parent

        die_with_parent(parent)
    if threads > 0:
        torch.set_num_threads(threads)
    sam = load_sam(checkpoint, model, device)
    _WORKER["generator"] = AutomaticMaskGenerator(sam, GeneratorConfig(**settings))
    _WORKER["model"] = sam.name


def sam_masks(job: dict[str, Any], out: Path) -> int:
    """Run the automatic mask generator on one camera image and write its id image; the mask count."""
    import cv2

    image = cv2.imread(os.fspath(job["image"]), cv2.IMREAD_COLOR)
    if image is None:
        raise FormatError("cannot read image", job["image"])
    records = _WORKER["generator"].generate(np.ascontiguousarray(image[:, :, ::-1]))
    h, w = image.shape[:2]
    if records:
        ids, kept, areas = id_image([r["segmentation"] for r in records], [r["predicted_iou"] for r in records])
    else:
        ids, kept, areas = np.zeros((h, w), np.uint16), [], []
    write_masks(out, job["sequence"], job["id"], job["camera"], ids, [records[i]["predicted_iou"] for i in kept],
                areas, "sam", {"model": _WORKER["model"],
                               "stability": [round(float(records[i]["stability_score"]), 6) for i in kept]})
    return len(kept)


def _run_job(args: tuple[str, dict[str, Any], str, str | None]) -> int:
    kind, job, out, folder = args
    if kind == "sam":
        return sam_masks(job, Path(out))
    return import_external(Path(folder), job, Path(out))


def _check_record(out: Path, options: dict[str, Any], force: bool) -> None:
    """Refuse to mix masks of other options in one folder (``--force`` redoes them)."""
    from occ_core.utils.io import read_json

    path = out / MASKS_DIR / RECORD
    if force or not path.is_file():
        return
    old = read_json(path, "masks options record", expect=dict)
    for key, value in options.items():
        if key in old and old[key] != value:
            raise OccError(f"masks were made with {key} {old[key]!r}; add --force to redo them with {value!r}", path)


def prepare_masks(data_root: str | Path, sam: str | Path | None = None, masks: str | Path | None = None,
                  model: str | None = None, points_per_side: int = 32, points_per_batch: int = 64,
                  workers: int = 1, force: bool = False, device: str = "cpu", progress: bool = True,
                  settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """``occ prepare masks``: masks for every camera image of the prepared folder ``data_root``, from a SAM
    checkpoint (``sam``; automatic mask generation, official settings unless ``settings`` overrides
    them) or from an external folder of id images (``masks``, the layout of this module). Resumable
    (images whose PNG exists are skipped unless ``force``), crash-safe (atomic writes, the PNG last), one
    run at a time per folder (``OUT/.prepare.lock``), options recorded in ``masks/masks.json``.
    Returns a summary (images, written, skipped, masks, seconds)."""
    import time

    from occ_core.data.prepare.layout import PreparedDataset
    from occ_core.data.prepare.pipeline import _lock
    from occ_core.utils.atomic import remove_temp_files, write_json

    if (sam is None) == (masks is None):
        raise OccError("give either --sam CHECKPOINT (run SAM) or --masks DIR (import id images), not both or neither")
    if workers < 1:
        raise OccError(f"--workers must be at least 1 (got {workers})")
    if points_per_side < 1 or points_per_batch < 1:
        raise OccError("--points-per-side and --points-per-batch must be positive")
    t0 = time.perf_counter()
    data = PreparedDataset(data_root)
    out = data.root
    if masks is not None:
        masks = Path(masks)
        if not masks.is_dir():
            raise MissingError("mask folder not found (expected <sequence>/<frame_id>/<camera>.png)", masks)
        if masks.resolve() == (out / MASKS_DIR).resolve():
            raise OccError("--masks is the prepared folder's own masks/ folder", masks)
    jobs, total, done = _jobs(data, force)
    if total == 0:
        raise MissingError("the prepared folder lists no camera images", out / "manifest.json")
    _check_images(jobs)
    gen: dict[str, Any] = {}
    if sam is not None:
        from occ_core.sam.generator import GeneratorConfig
        from occ_core.sam.model import load_sam

        gen = {k: getattr(GeneratorConfig(), k) for k in SAM_SETTINGS}
        gen.update(settings or {})
        gen["points_per_side"] = points_per_side
        sam_path = Path(sam)
        model_obj = load_sam(sam_path, model, "cpu")  # every checkpoint problem before any write
        options = {"source": "sam", "model": model_obj.name, "checkpoint": sam_path.name,
                   "checkpoint_bytes": sam_path.stat().st_size, **gen}
        del model_obj
    else:
        _check_external(masks, jobs)
        options = {"source": "external", "masks": os.path.relpath(masks.resolve(), out.resolve())}
    lock = _lock(out)
    try:
        _check_record(out, options, force)
        remove_temp_files(out / MASKS_DIR)
        write_json(out / MASKS_DIR / RECORD, options)
        n_masks = _run(jobs, out, sam, masks, model, device, gen | {"points_per_batch": points_per_batch}, workers,
                       progress)
    finally:
        if lock is not None:
            lock.close()
    return {"images": total, "written": len(jobs), "skipped": done, "masks": n_masks,
            "seconds": time.perf_counter() - t0, "source": options["source"],
            "model": options.get("model"), "folder": str(out / MASKS_DIR)}


def import_beside(out: Path, folder: Path, workers: int = 1, force: bool = False, progress: bool = True) -> int | None:
    """``occ prepare kitti``: import the masks found beside the raw ``dataset/`` (``ROOT/masks``, which the
    synthetic generator writes) unless the prepared folder already holds masks of another source (SAM,
    another folder), which are kept. Returns the number of masks written, or None when skipped."""
    from occ_core.utils.io import read_json

    record = Path(out) / MASKS_DIR / RECORD
    if record.is_file() and not force:
        old = read_json(record, "masks options record", expect=dict)
        if old.get("source") != "external" or old.get("masks") != os.path.relpath(Path(folder).resolve(),
                                                                                   Path(out).resolve()):
            return None
    return prepare_masks(out, masks=folder, workers=workers, force=force, progress=progress)["masks"]


def _run(jobs, out: Path, sam, masks, model, device: str, gen: dict[str, Any], workers: int, progress: bool) -> int:
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from occ_core.utils.progress import track

    kind = "sam" if sam is not None else "external"
    args = [(kind, job, os.fspath(out), None if masks is None else os.fspath(masks)) for job in jobs]
    description = "SAM masks" if kind == "sam" else "import masks"
    if not jobs:
        return 0
    if workers == 1 or len(jobs) == 1:
        if kind == "sam":
            _init_sam_worker(os.fspath(sam), model, device, gen, 0)
        try:
            it = track(args, description) if progress else args
            return sum(_run_job(a) for a in it)
        finally:
            _WORKER.clear()
    from occ_core.utils.procs import pool_kwargs

    kwargs = pool_kwargs()
    if kind == "sam":  # spawned (a forked child of a process that ran torch's thread pool may hang), each
        from multiprocessing import get_context  # worker loads SAM once with its share of the threads

        import torch

        threads = max(1, torch.get_num_threads() // workers)
        kwargs = {"initializer": _init_sam_worker, "mp_context": get_context("spawn"),
                  "initargs": (os.fspath(sam), model, device, gen, threads, os.getpid())}
    total = 0
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), **kwargs) as pool:
        futures = [pool.submit(_run_job, a) for a in args]
        done = as_completed(futures)
        for fut in (track(done, description, total=len(futures)) if progress else done):
            total += fut.result()
    return total
