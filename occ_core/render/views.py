"""Pictures of voxel grids rendered with Gaussian splatting: ``occ render`` and ``occ quickstart``.

* :func:`render_labels`: a class grid → colour (SemanticKITTI palette) or one-hot renders, depth, alpha;
* :func:`frame_pictures`: ground truth and prediction of one prepared frame side by side, from the
  sensor camera (with an overlay on the camera image), a bird's-eye view and an orbit (PNG / GIF),
  with a legend;
* :func:`sensor_agreement`: how well the ground-truth voxels rendered from the sensor camera agree
  with a per-pixel class image (the synthetic generator's ``semantic_2``), which checks the camera
  conventions end to end (docs/rendering.md).

Renders use the torch backend on CPU and gsplat on CUDA when installed (``backend="auto"``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from occ_core.data.formats.semantickitti import CLASS_COLORS_RGB, CLASS_NAMES, IGNORE, VOXEL_SIZE
from occ_core.errors import MissingError, OccError

BACKGROUND = np.array([40, 40, 40], np.uint8)
VIEW_NAMES = ("sensor", "bev", "orbit")


# ------------------------------------------------------------------------------------------------
# Rendering a class grid
# ------------------------------------------------------------------------------------------------


def render_labels(labels, cameras, *, mode: str = "rgb", voxel_size: float = VOXEL_SIZE, scale_factor: float = 0.5,
                  palette: np.ndarray = CLASS_COLORS_RGB, n_classes: int = len(CLASS_NAMES), backend: str = "auto",
                  device: str | torch.device = "cpu", origin=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render a class grid [X, Y, Z] (0 empty, 255 ignored: both dropped) into ``cameras``.

    ``mode="rgb"``: features are the palette colours in [0, 1] (3 channels); ``"onehot"``: one
    channel per class (argmax gives the class seen by each pixel). Returns numpy
    ``(features [V, H, W, C], expected depth [V, H, W] (0 where nothing), alpha [V, H, W])``.
    """
    from occ_core.render import render_gaussians, voxels_to_gaussians

    lab = torch.as_tensor(np.asarray(labels).astype(np.int64), device=device)
    geo = {} if origin is None else {"origin": tuple(origin)}  # default: the SemanticKITTI grid's
    g = voxels_to_gaussians(labels=lab, voxel_size=voxel_size, scale_factor=scale_factor, n_classes=n_classes, **geo)
    if mode == "rgb":
        pal = torch.as_tensor(palette[:n_classes].astype(np.float32) / 255.0, device=g.features.device)
        g.features = g.features @ pal
    elif mode != "onehot":
        raise ValueError(f"mode must be 'rgb' or 'onehot', got {mode!r}")
    with torch.no_grad():
        if len(g) == 0:
            V, C = len(cameras), g.features.shape[1]
            z = np.zeros((V, cameras.height, cameras.width), np.float32)
            return np.zeros((V, cameras.height, cameras.width, C), np.float32), z, z.copy()
        feat, depth, alpha = render_gaussians(g, cameras, backend=backend)
    return feat.cpu().numpy(), depth[..., 0].cpu().numpy(), alpha[..., 0].cpu().numpy()


def compose(feat: np.ndarray, alpha: np.ndarray, background: np.ndarray = BACKGROUND) -> np.ndarray:
    """RGB uint8 image of a colour render (features already weighted by alpha) over ``background``."""
    img = feat * 255.0 + (1.0 - alpha[..., None]) * background.astype(np.float32)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def colorize_depth(depth: np.ndarray, alpha: np.ndarray, max_depth: float, background: np.ndarray = BACKGROUND,
                   near_red: bool = True) -> np.ndarray:
    """RGB uint8 image of a depth render (turbo colour map: near = red ... far = blue, or the
    reverse with ``near_red=False``, e.g. for heights)."""
    import cv2

    v = np.clip(depth / max(max_depth, 1e-6), 0.0, 1.0)
    v = 1.0 - v if near_red else v
    img = cv2.applyColorMap(np.round(255 * v).astype(np.uint8), cv2.COLORMAP_TURBO)[..., ::-1]
    a = np.clip(alpha, 0.0, 1.0)[..., None]
    return np.round(img * a + background.astype(np.float32) * (1 - a)).astype(np.uint8)


def _label(img: np.ndarray, text: str) -> np.ndarray:
    import cv2

    img = np.ascontiguousarray(img.copy())
    scale = 0.4 if img.shape[1] < 400 else 0.55
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.rectangle(img, (0, 0), (tw + 8, th + 8), (0, 0, 0), -1)
    cv2.putText(img, text, (4, th + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return img


def legend(width: int, classes: Sequence[int] | None = None, names: Sequence[str] = CLASS_NAMES,
           palette: np.ndarray = CLASS_COLORS_RGB) -> np.ndarray:
    """RGB legend strip ``width`` pixels wide: a swatch and the name of each class (default 1..19)."""
    import cv2

    classes = list(range(1, len(names))) if classes is None else [int(c) for c in classes]
    cell_w, cell_h = 130, 18
    per_row = max(1, width // cell_w)
    rows = max(1, -(-len(classes) // per_row))
    img = np.full((rows * cell_h + 6, width, 3), 255, np.uint8)
    for k, c in enumerate(classes):
        r, q = divmod(k, per_row)
        x, y = q * cell_w + 4, r * cell_h + 4
        cv2.rectangle(img, (x, y), (x + 14, y + 12), tuple(int(v) for v in palette[c]), -1)
        cv2.rectangle(img, (x, y), (x + 14, y + 12), (0, 0, 0), 1)
        cv2.putText(img, names[c], (x + 19, y + 11), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return img


def _grid(rows: list[list[np.ndarray]], gap: int = 4) -> np.ndarray:
    """Tile equally sized RGB images (rows of columns) with white gaps."""
    h, w = rows[0][0].shape[:2]
    n_cols = max(len(r) for r in rows)
    out = np.full((len(rows) * h + (len(rows) - 1) * gap, n_cols * w + (n_cols - 1) * gap, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            out[i * (h + gap): i * (h + gap) + h, j * (w + gap): j * (w + gap) + w] = img
    return out


def _with_legend(img: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    leg = legend(img.shape[1], classes)
    return np.concatenate([img, np.full((4, img.shape[1], 3), 255, np.uint8), leg], 0)


def write_png(path: Path, rgb: np.ndarray) -> Path:
    import cv2

    from occ_core.utils.atomic import write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise OSError(f"could not encode {path}")
    write_bytes(path, buf.tobytes())
    return path


def write_gif(path: Path, frames: list[np.ndarray], fps: float = 8.0) -> Path:
    """Animated GIF with Pillow (installed with matplotlib); without Pillow, the frames as PNGs in
    ``path.with_suffix('')`` instead (returns that folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow ships with matplotlib
        folder = path.with_suffix("")
        for k, f in enumerate(frames):
            write_png(folder / f"{k:03d}.png", f)
        return folder
    ims = [Image.fromarray(f).convert("P", palette=Image.Palette.ADAPTIVE, colors=255) for f in frames]
    tmp = path.with_name(path.name + ".tmp.gif")
    ims[0].save(tmp, save_all=True, append_images=ims[1:], duration=int(1000 / fps), loop=0, optimize=False)
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------------------------------------------
# Frames of a prepared dataset
# ------------------------------------------------------------------------------------------------


def frame_sensor_camera(data, frame, scale: float = 1.0):
    """The image_2 camera of a prepared frame, rendering the benchmark crop resized by ``scale``."""
    from occ_core.losses.render import rescale_K
    from occ_core.render import sensor_camera

    geo = data.geometry(frame.sequence)
    W, H = data.image_size
    size = (max(1, round(W * scale)), max(1, round(H * scale)))
    K = rescale_K(torch.as_tensor(geo["K"], dtype=torch.float64), size[0] / W)
    return sensor_camera(K, geo["Tr"], size)


def camera_image(data, frame, size: tuple[int, int]) -> np.ndarray | None:
    """The frame's image_2 (benchmark crop) resized to ``size`` (RGB uint8), or None without one."""
    import cv2

    if not frame.files.get("image_2"):
        return None
    path = data.raw_path(frame, "image_2")
    img = cv2.imread(os.fspath(path), cv2.IMREAD_COLOR)
    if img is None:
        raise MissingError("cannot read image", path)
    W, H = data.image_size
    img = img[:H, :W, ::-1]
    return cv2.resize(np.ascontiguousarray(img), size, interpolation=cv2.INTER_AREA)


def load_frame_prediction(pred: str | Path, frame, data=None) -> np.ndarray:
    """Class indices [256, 256, 32] of ``frame`` from a prediction folder in the submission layout
    (``.label`` raw ids through REMAP_LUT, or ``.npy`` class indices); on Occ3D data (``data`` given), the
    ``<scene>/<token>/labels.npz`` that ``occ predict`` writes (Occ3D ids through the spec's from_raw)."""
    from occ_core.data.formats.submission import find_prediction, load_prediction, pred_sequences_dir

    if data is not None and data.spec.name == "occ3d":
        from occ_core.data.formats import occ3d

        sem = occ3d.read_prediction(occ3d.prediction_path(Path(pred), frame.sequence, frame.id))
        return data.spec.classes.remap_lut(256)[sem]

    seqs = pred_sequences_dir(pred)
    path = find_prediction(seqs, frame.sequence, frame.id)
    if path is None:
        raise MissingError(f"no prediction for frame {frame.name} (expected .label or .npy)",
                           seqs / frame.sequence / "predictions" / f"{frame.id}.label")
    return load_prediction(path)


def predict_frame(run: str | Path, frame, data=None, device: str = "auto", checkpoint: str = "best") -> np.ndarray:
    """Class indices [256, 256, 32] of ``frame`` predicted by a run's model (uint8)."""
    from occ_core.data.prepare.layout import PreparedDataset
    from occ_core.data.loading.dataset import OccDataset, collate
    from occ_core.engine.trainer import data_root, load_model, move_to, resolve_device

    dev = resolve_device(device)
    model, cfg = load_model(run, checkpoint, dev)
    prepared = data if data is not None else PreparedDataset(data_root(cfg, Path(run)))
    if data is not None:
        from occ_core.engine.trainer import check_data_fits

        check_data_fits(cfg, run, prepared.spec, prepared.root)
    ds = OccDataset(prepared, frame.split, cfg.data, train=False, seed=cfg.seed, frames=[frame])
    batch = move_to(collate([ds[0]]), dev)
    with torch.no_grad():
        return model.predict(batch)[0].cpu().numpy().astype(np.uint8)


def _views_of(names: Sequence[str]) -> list[str]:
    out = []
    for n in names:
        n = n.strip()
        if n not in VIEW_NAMES:
            raise OccError(f"unknown view '{n}' (known: {', '.join(VIEW_NAMES)})")
        if n not in out:
            out.append(n)
    if not out:
        raise OccError("no views given")
    return out


def frame_pictures(data, frame_name: str, out: str | Path, pred: np.ndarray | None = None,
                   views: Sequence[str] = ("sensor", "bev"), gif: bool = False, scale: float = 1.0,
                   orbit_frames: int = 36, backend: str = "auto", device: str | torch.device = "cpu",
                   scale_factor: float = 0.5) -> list[Path]:
    """Write PNGs (and an orbit GIF) of a frame's ground truth and ``pred`` (class indices
    [256, 256, 32]) side by side into ``out``; returns the paths.

    * ``SEQ_ID_sensor.png``: camera image with the renders overlaid, semantic renders, depth renders;
    * ``SEQ_ID_bev.png``: bird's-eye semantic and depth (height) renders;
    * ``SEQ_ID_orbit.png`` (first view of the orbit) and, with ``gif``, ``SEQ_ID_orbit.gif``.

    Every picture has a legend of the classes present. Without ``pred`` (or for an unlabeled frame
    without ground truth) only one column is drawn.
    """
    from occ_core.data.prepare.layout import PreparedDataset
    from occ_core.render import bev_camera, orbit_cameras

    data = data if isinstance(data, PreparedDataset) else PreparedDataset(data)
    frame = data.frame(frame_name)
    if data.spec.grid.frame != "velodyne":  # nuScenes family: six cameras, the spec's own grid and classes
        return surround_pictures(data, frame, out, pred, views=views, scale=scale, backend=backend, device=device,
                                 scale_factor=scale_factor)
    views = _views_of(views)
    if gif and "orbit" not in views:
        views.append("orbit")
    grids: list[tuple[str, np.ndarray]] = []
    if frame.labeled:
        grids.append(("ground truth", data.load_target(frame, 1)))
    if pred is not None:
        pred = np.asarray(pred)
        if pred.shape != data.spec.grid.shape:
            raise OccError(f"prediction shape {pred.shape}, expected {data.spec.grid.shape}")
        grids.append(("prediction", pred))
    if not grids:
        raise MissingError(f"frame {frame.name} is unlabeled and no prediction was given (--pred or --run)")
    present = sorted({int(c) for _, g in grids for c in np.unique(g) if 0 < int(c) < len(CLASS_NAMES) and int(c) != IGNORE})
    out = Path(out)
    stem = f"{frame.sequence}_{frame.id}"
    kw = dict(backend=backend, device=device, scale_factor=scale_factor)
    paths: list[Path] = []

    for view in views:
        if view == "sensor":
            cams = frame_sensor_camera(data, frame, scale)
            size = (cams.width, cams.height)
            renders = [(name, render_labels(g, cams, **kw)) for name, g in grids]
            image = camera_image(data, frame, size)
            rows = []
            if image is not None:
                row = []
                for name, (f, d, a) in renders:
                    over = np.where(a[0, ..., None] > 0.05, 0.45 * image + 0.55 * compose(f[0], a[0]), image)
                    row.append(_label(np.round(over).astype(np.uint8), f"{name} on image"))
                rows.append(row)
            rows.append([_label(compose(f[0], a[0]), f"{name}: semantic") for name, (f, d, a) in renders])
            rows.append([_label(colorize_depth(d[0], a[0], 50.0), f"{name}: depth (0-50 m)") for name, (f, d, a) in renders])
            paths.append(write_png(out / f"{stem}_sensor.png", _with_legend(_grid(rows), present)))
        elif view == "bev":
            cams = bev_camera(VOXEL_SIZE / max(scale, 1e-3))
            renders = [(name, render_labels(g, cams, **kw)) for name, g in grids]
            # the BEV camera sits 1 m above the grid top (z = 4.4 m): height above the grid bottom = 7.4 - depth
            rows = [[_label(compose(f[0], a[0]), f"{name}: BEV") for name, (f, d, a) in renders],
                    [_label(colorize_depth(np.where(a[0] > 0, (7.4 - d[0]).clip(0, 6.4), 0.0), a[0], 6.4, near_red=False),
                            f"{name}: height (0-6.4 m)")
                     for name, (f, d, a) in renders]]
            paths.append(write_png(out / f"{stem}_bev.png", _with_legend(_grid(rows), present)))
        elif view == "orbit":
            n = orbit_frames if gif else 1
            size = (max(32, round(480 * scale)), max(18, round(270 * scale)))
            cams = orbit_cameras(n, image_size=size)
            renders = [(name, render_labels(g, cams, **kw)) for name, g in grids]
            frames = [_with_legend(_grid([[_label(compose(f[k], a[k]), name) for name, (f, d, a) in renders]]), present)
                      for k in range(n)]
            paths.append(write_png(out / f"{stem}_orbit.png", frames[0]))
            if gif:
                paths.append(write_gif(out / f"{stem}_orbit.gif", frames))
    return paths


def surround_pictures(data, frame, out: str | Path, pred: np.ndarray | None = None,
                      views: Sequence[str] = ("sensor", "bev"), scale: float = 1.0, backend: str = "auto",
                      device: str | torch.device = "cpu", scale_factor: float = 0.5) -> list[Path]:
    """Pictures of a multi-camera frame (Occ3D): ``SEQ_ID_sensor.png``, a mosaic of every camera (front row
    FRONT_LEFT | FRONT | FRONT_RIGHT, back row BACK_LEFT | BACK | BACK_RIGHT) with the ground truth and the
    prediction overlaid on each image (one mosaic per grid, side by side), and ``SEQ_ID_bev.png``, the
    bird's-eye semantic and height renders of the spec's grid. Classes, palette and grid come from the spec;
    voxels of class 0 (free) and 255 are not drawn."""
    import cv2

    from occ_core.losses.render import cubic_voxel
    from occ_core.render import bev_camera, sensor_camera

    spec = data.spec
    views = [v for v in _views_of(views) if v != "orbit"] or ["sensor", "bev"]
    names, palette = list(spec.classes.names), spec.classes.palette()
    vs = cubic_voxel(spec.grid)
    grids: list[tuple[str, np.ndarray]] = []
    if frame.labeled:
        grids.append(("ground truth", data.load_target(frame, 1)))
    if pred is not None:
        pred = np.asarray(pred)
        if pred.shape != spec.grid.shape:
            raise OccError(f"prediction shape {pred.shape}, expected {spec.grid.shape}")
        grids.append(("prediction", pred))
    if not grids:
        raise MissingError(f"frame {frame.name} is unlabeled and no prediction was given (--pred or --run)")
    present = sorted({int(c) for _, g in grids for c in np.unique(g) if 0 < int(c) < len(names)})
    kw = dict(voxel_size=vs, palette=palette, n_classes=len(names), backend=backend, device=device,
              scale_factor=scale_factor, origin=spec.grid.origin)
    out = Path(out)
    stem = f"{frame.sequence}_{frame.id}"

    def with_legend(img):
        leg = legend(img.shape[1], present, names, palette)
        return np.concatenate([img, np.full((4, img.shape[1], 3), 255, np.uint8), leg], 0)

    paths: list[Path] = []
    if "sensor" in views:
        from occ_core.data.formats.occ3d import MOSAIC

        order = [c for row in MOSAIC for c in row if c in spec.camera_names]
        order += [c for c in spec.camera_names if c not in order]
        calib = data.calibration(frame.sequence, frame.id)
        W, H = spec.cameras[0].image_size
        size = (max(1, round(W * scale * 0.5)), max(1, round(H * scale * 0.5)))
        tiles: dict[str, list[np.ndarray]] = {name: [] for name, _ in grids}
        for cam in order:
            k = spec.camera_names.index(cam)
            K, T = calib[k]
            from occ_core.losses.render import rescale_K

            Kt = rescale_K(torch.as_tensor(K, dtype=torch.float64), size[0] / W)
            cams = sensor_camera(Kt, torch.as_tensor(T, dtype=torch.float64), size)
            path = data.raw_path(frame, cam)
            img = cv2.imread(os.fspath(path), cv2.IMREAD_COLOR) if path is not None else None
            if img is None:
                raise MissingError("cannot read image", path)
            img = cv2.resize(img[:, :, ::-1], size, interpolation=cv2.INTER_AREA).astype(np.float32)
            for name, g in grids:
                f, _, a = render_labels(g, cams, **kw)
                over = np.where(a[0, ..., None] > 0.05, 0.45 * img + 0.55 * compose(f[0], a[0]), img)
                tiles[name].append(_label(np.round(over).astype(np.uint8), f"{name}: {cam}"))
        cols = 3
        blocks = []
        for name, _ in grids:
            t = tiles[name]
            blocks.append(_grid([t[i:i + cols] for i in range(0, len(t), cols)]))
        gap = np.full((blocks[0].shape[0], 12, 3), 255, np.uint8)
        mosaic = blocks[0] if len(blocks) == 1 else np.concatenate([blocks[0], gap, blocks[1]], 1)
        paths.append(write_png(out / f"{stem}_sensor.png", with_legend(mosaic)))
    if "bev" in views:
        cams = bev_camera(vs / max(scale, 1e-3), grid=spec.grid)
        top = spec.grid.origin[2] + spec.grid.size[2]
        renders = [(name, render_labels(g, cams, **kw)) for name, g in grids]
        rows = [[_label(compose(f[0], a[0]), f"{name}: BEV") for name, (f, d, a) in renders],
                [_label(colorize_depth(np.where(a[0] > 0, (top + 1.0 - d[0]).clip(0, spec.grid.size[2] + 1.0), 0.0),
                                       a[0], spec.grid.size[2], near_red=False), f"{name}: height above the grid bottom")
                 for name, (f, d, a) in renders]]
        paths.append(write_png(out / f"{stem}_bev.png", with_legend(_grid(rows))))
    return paths


# ------------------------------------------------------------------------------------------------
# Camera conventions, end to end
# ------------------------------------------------------------------------------------------------


def sensor_agreement(data, frame_name: str, scale: float = 1.0, scale_factor: float = 0.5, border: int = 3,
                     class_image: np.ndarray | None = None, depth_image: np.ndarray | None = None,
                     backend: str = "auto") -> dict[str, Any]:
    """Agreement of the ground-truth voxels rendered from the sensor camera with a per-pixel class
    image of the same camera (default: the synthetic generator's ``semantic_2/ID.png``, uint8
    classes, 0 = sky, with ``depth_2/ID.png`` in KITTI depth format).

    A pixel *sees labelled geometry* when the class image shows an object (class > 0) whose
    surface point (from the depth image, pushed 1 % further along the ray) lies inside the grid in a
    voxel that is not ignored (255: not observed by the LiDAR, dropped from the renders). Among
    those pixels, ``agreement`` is the fraction where the render has alpha > 0.5 and its argmax
    class equals the class image; ``interior_agreement`` the same away from class boundaries
    (``border`` pixels from a change of class in either image), where the voxelisation of the
    ground truth (0.2 m voxels, objects grown by their voxels) cannot move the answer.

    ``scale`` renders a downscaled image (pixel (i, j) compared with the class image at the same
    image point, nearest pixel).
    """
    import cv2

    from occ_core.data.prepare.layout import PreparedDataset

    data = data if isinstance(data, PreparedDataset) else PreparedDataset(data)
    frame = data.frame(frame_name)
    W, H = data.image_size
    if class_image is None:
        path = data.source / frame.sequence / "semantic_2" / f"{frame.id}.png"
        class_image = cv2.imread(os.fspath(path), cv2.IMREAD_UNCHANGED)
        if class_image is None:
            raise MissingError("no per-pixel class image (synthetic data only)", path)
    if depth_image is None:
        path = data.source / frame.sequence / "depth_2" / f"{frame.id}.png"
        raw = cv2.imread(os.fspath(path), cv2.IMREAD_UNCHANGED)
        if raw is None:
            raise MissingError("no per-pixel depth image (synthetic data only)", path)
        depth_image = raw.astype(np.float32) / 256.0
    class_image, depth_image = class_image[:H, :W], depth_image[:H, :W]
    target = data.load_target(frame, 1)
    cams = frame_sensor_camera(data, frame, scale)
    w, h = cams.width, cams.height
    feat, _, alpha = render_labels(target, cams, mode="onehot", scale_factor=scale_factor, backend=backend)
    cls = np.where(alpha[0] > 0.5, feat[0].argmax(-1), 0)
    # the class image at the render's pixel centres
    us = np.clip(np.round((np.arange(w) + 0.5) * W / w - 0.5).astype(int), 0, W - 1)
    vs = np.clip(np.round((np.arange(h) + 0.5) * H / h - 0.5).astype(int), 0, H - 1)
    ref, rd = class_image[np.ix_(vs, us)].astype(np.int64), depth_image[np.ix_(vs, us)].astype(np.float64) * 1.01
    # which pixels see labelled geometry
    geo = data.geometry(frame.sequence)
    K, Tr = geo["K"], np.eye(4)
    Tr[: geo["Tr"].shape[0]] = geo["Tr"]
    uu, vv = np.meshgrid(us, vs)
    pc = np.stack([(uu - K[0, 2]) / K[0, 0] * rd, (vv - K[1, 2]) / K[1, 1] * rd, rd, np.ones_like(rd)], -1)
    pv = pc @ np.linalg.inv(Tr).T
    from occ_core.data.formats.semantickitti import GRID_ORIGIN, GRID_SHAPE

    idx = np.floor((pv[..., :3] - np.asarray(GRID_ORIGIN)) / VOXEL_SIZE).astype(np.int64)
    inside = (rd > 0) & (idx >= 0).all(-1) & (idx < np.asarray(GRID_SHAPE)).all(-1)
    lab = np.full(ref.shape, IGNORE)
    ii = idx[inside]
    lab[inside] = target[ii[:, 0], ii[:, 1], ii[:, 2]]
    sees = inside & (lab != IGNORE) & (ref > 0)
    ok = cls == ref
    k = np.ones((3, 3), np.uint8)
    kb = np.ones((2 * border + 1, 2 * border + 1), np.uint8)
    edge = np.zeros(ref.shape, bool)
    for img in (ref, cls):
        grad = cv2.morphologyEx(img.astype(np.uint8), cv2.MORPH_GRADIENT, k) > 0
        edge |= cv2.dilate(grad.astype(np.uint8), kb) > 0
    interior = sees & ~edge
    n = int(sees.sum())
    return {
        "frame": frame.name, "size": [w, h], "scale_factor": scale_factor,
        "pixels_seeing_geometry": n, "fraction_of_image": n / ref.size,
        "agreement": float(ok[sees].mean()) if n else float("nan"),
        "interior_pixels": int(interior.sum()),
        "interior_agreement": float(ok[interior].mean()) if interior.any() else float("nan"),
    }


def _main(argv: list[str] | None = None) -> None:
    """``python -m occ_core.render.views PREPARED [--scale 1] [--scale-factor 0.5 0.35]``: the sensor
    agreement of every labeled frame of a prepared synthetic dataset, at full size by default."""
    import argparse
    import time

    ap = argparse.ArgumentParser(description=_main.__doc__)
    ap.add_argument("prepared")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--scale-factor", type=float, nargs="+", default=[0.5, 0.35])
    ap.add_argument("--split", default=None)
    args = ap.parse_args(argv)
    from occ_core.data.prepare.layout import PreparedDataset

    data = PreparedDataset(args.prepared)
    for sf in args.scale_factor:
        rows = []
        for fr in data.frames(args.split, labeled=True):
            t = time.perf_counter()
            r = sensor_agreement(data, fr.name, scale=args.scale, scale_factor=sf)
            rows.append(r)
            print(f"{r['frame']}  {r['size'][0]}x{r['size'][1]}  sigma {sf} voxel  pixels seeing labelled geometry "
                  f"{r['fraction_of_image']:.1%}  agreement {r['agreement']:.2%}  interior ({r['interior_pixels'] / max(r['pixels_seeing_geometry'], 1):.0%} "
                  f"of them) {r['interior_agreement']:.2%}  [{time.perf_counter() - t:.1f} s]", flush=True)
        n = sum(r["pixels_seeing_geometry"] for r in rows)
        ni = sum(r["interior_pixels"] for r in rows)
        agree = sum(r["agreement"] * r["pixels_seeing_geometry"] for r in rows) / max(n, 1)
        inner = sum(r["interior_agreement"] * r["interior_pixels"] for r in rows) / max(ni, 1)
        print(f"ALL {len(rows)} frames, sigma {sf} voxel: agreement {agree:.2%} of {n:,} pixels; interior {inner:.2%} of {ni:,}")


if __name__ == "__main__":
    _main()
