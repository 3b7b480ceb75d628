"""The dataset spec (occ_core/data/spec.py): JSON round trip, errors, grid scaling, distance bands, class
weights, and the class frequencies ``occ prepare kitti360`` counts (the weights a KITTI-360 model trains with)."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from occ_core.data.formats import kitti360 as k360
from occ_core.data.formats import semantickitti as sk
from occ_core.data.prepare.layout import MANIFEST, PreparedDataset
from occ_core.data.spec import CameraSpec, ClassSpec, DatasetSpec, DistanceSpec, GridSpec, count_classes
from occ_core.errors import FormatError
from occ_core.losses.ssc import class_weights_from_frequencies
from occ_core.metrics.ssc import KITTI_DISTANCE_BANDS, distance_bands, spec_distance_bands


def _surround_spec() -> DatasetSpec:
    """An OpenOccupancy-like spec: 6 cameras, an ego-centred grid with non-cubic voxels, radial bands."""
    cams = tuple(CameraSpec(n, (1600, 900), None) for n in ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT",
                                                            "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT"))
    classes = ClassSpec(("empty", "car", "road"), (0, 17, 24), ((0, 0), (17, 1), (24, 2)), (1e6, 200.0, 5e4),
                        "made up", ((0, 0, 0), (255, 0, 0), (128, 64, 128)))
    return DatasetSpec("surround", GridSpec((512, 512, 40), (0.2, 0.2, 0.2), (-51.2, -51.2, -5.0), "lidar"), classes,
                       cams, {"train": ["scene-0001"], "val": ["scene-0002"]}, ("invalid", "camera", "lidar"),
                       DistanceSpec((0.0, 0.0, 0.0), "radial", (0.0, 20.0, 40.0)), (1, 2, 4))


@pytest.mark.parametrize("make", [sk.dataset_spec, lambda: sk.dataset_spec(("image_2", "image_4", "image_5")),
                                  lambda: k360.dataset_spec(tuple(float(i + 2) for i in range(19))),
                                  k360.dataset_spec, _surround_spec])
def test_json_round_trip(make):
    spec = make()
    text = json.dumps(spec.to_json())  # plain data
    back = DatasetSpec.from_json(json.loads(text), "x")
    assert back == spec
    assert back.to_json() == spec.to_json()
    assert back.classes.weights().tolist() == spec.classes.weights().tolist()


def test_dataset_module_specs():
    s = sk.dataset_spec()
    assert s.name == "semantickitti" and s.n_classes == 20 and s.camera_names == ["image_2"]
    assert s.grid.shape == sk.GRID_SHAPE and s.grid.voxel_size == (0.2, 0.2, 0.2) and s.grid.origin == sk.GRID_ORIGIN
    assert s.cameras[0].image_size == sk.IMAGE_SIZE and s.classes.names == sk.CLASS_NAMES
    assert s.splits == {k: list(v) for k, v in sk.SPLITS.items()} and s.classes.frequencies == sk.CLASS_FREQUENCIES
    k = k360.dataset_spec()
    assert k.name == "kitti360" and k.n_classes == len(k360.CLASS_NAMES) == 19
    assert k.cameras[0].image_size == k360.IMAGE_SIZE and k.splits == k360.SPLITS and k.classes.frequencies is None
    lut = k.classes.remap_lut()
    np.testing.assert_array_equal(lut, k360.REMAP_LUT)
    np.testing.assert_array_equal(s.classes.remap_lut(), sk.REMAP_LUT)
    assert s.with_cameras(["image_2"]) == s
    with pytest.raises(ValueError, match="unknown camera"):
        s.with_cameras(["image_9"])


def test_from_json_errors_name_the_file(tmp_path: Path):
    good = sk.dataset_spec().to_json()
    where = tmp_path / "manifest.json"
    cases = [
        ({k: v for k, v in good.items() if k != "grid"}, "missing key 'grid'"),
        (dict(good, grid=dict(good["grid"], shape=[256, 256])), "three values"),
        (dict(good, grid=dict(good["grid"], frame="moon")), "grid frame"),
        (dict(good, cameras=[]), "at least one camera"),
        (dict(good, masks=["invalid", "bogus"]), "unknown mask"),
        (dict(good, classes=dict(good["classes"], to_raw=[0, 1])), "to_raw"),
        (dict(good, distance={"axis": "z"}), "distance axis"),
        ([1, 2], "expected an object"),
    ]
    for data, what in cases:
        with pytest.raises(FormatError, match="malformed dataset spec") as e:
            DatasetSpec.from_json(data, where)
        assert str(where) in str(e.value) and what in str(e.value), str(e.value)
        assert e.value.path == where


def test_malformed_spec_in_a_manifest_names_the_manifest(tmp_path: Path):
    from occ_core.data.prepare.layout import FORMAT_NAME, FORMAT_VERSION

    spec = sk.dataset_spec().to_json()
    del spec["classes"]
    (tmp_path / MANIFEST).write_text(json.dumps({"format": FORMAT_NAME, "version": FORMAT_VERSION, "source": ".",
                                                 "spec": spec, "frames": []}))
    with pytest.raises(FormatError, match="missing key 'classes'") as e:
        PreparedDataset(tmp_path).spec
    assert e.value.path == tmp_path / MANIFEST


def test_grid_scaled_and_divisor():
    g = sk.grid_spec()
    h = g.scaled(2)
    assert h.shape == (128, 128, 16) and h.voxel_size == (0.4, 0.4, 0.4) and h.origin == g.origin and h.frame == g.frame
    assert h.size == pytest.approx(g.size) and g.scaled(1) == g
    assert g.scaled(8).shape == (32, 32, 4) and g.scaled(8).voxel_size == pytest.approx((1.6, 1.6, 1.6))
    with pytest.raises(ValueError, match="not divisible"):
        g.scaled(3)
    with pytest.raises(ValueError, match="not divisible"):
        g.scaled(64)  # 32 / 64
    for s in (1, 2, 4, 8, 16, 32):
        assert g.divisor(g.scaled(s).shape) == s
    for bad in ((64, 64, 16), (256, 256), (0, 0, 0), (300, 300, 30), (3, 3, 1)):
        with pytest.raises(ValueError, match="not the dataset grid"):
            g.divisor(bad)
    o = _surround_spec().grid
    assert o.scaled(4).shape == (128, 128, 10) and o.divisor((128, 128, 10)) == 4 and o.n_voxels == 512 * 512 * 40
    # centres at a scale are the centres of the scaled grid's voxels, C order
    c = g.centres(8)
    assert c.shape == (32 * 32 * 4, 3)
    np.testing.assert_allclose(c[0], [0.8, -24.8, -1.2]) and np.testing.assert_allclose(c[4 * 32 + 4 + 1], [0.8, -23.2, -1.2 + 1.6])


@pytest.mark.parametrize("scale", [1, 2, 4, 8])
def test_distance_bands_are_the_kitti_x_index_bands(scale: int):
    spec = sk.dataset_spec()
    bands = spec.distance_bands(scale)
    old = distance_bands(sk.DISTANCE_EDGES_M, sk.VOXEL_SIZE * scale, sk.GRID_SHAPE[0] // scale)
    assert list(bands) == list(old) == ["0-17.1m", "17.1-34.2m", "34.2-51.2m"]
    shape = spec.grid_at(scale)
    for label, (start, stop) in old.items():
        expected = np.zeros(shape, bool)
        expected[start:stop] = True
        np.testing.assert_array_equal(bands[label], expected)
    assert spec_distance_bands(spec, scale) == old
    if scale == 1:
        assert old == KITTI_DISTANCE_BANDS == {"0-17.1m": (0, 85), "17.1-34.2m": (85, 171), "34.2-51.2m": (171, 256)}


def test_radial_distance_bands():
    spec = _surround_spec()
    bands = spec.distance_bands(4)
    g = spec.grid.scaled(4)
    c = g.centres().reshape(*g.shape, 3)
    r = np.hypot(c[..., 0], c[..., 1])
    np.testing.assert_array_equal(bands["0-20m"], r < 20)
    np.testing.assert_array_equal(bands["20-40m"], (r >= 20) & (r < 40))
    assert spec_distance_bands(spec) == {}  # not x-slices


def test_weights():
    w = sk.class_spec().weights()
    assert w.dtype == np.float32 and w.shape == (20,)
    np.testing.assert_allclose(w, class_weights_from_frequencies(sk.CLASS_FREQUENCIES).numpy(), rtol=1e-6)
    for c in range(20):
        assert math.isclose(w[c], 1 / math.log(sk.CLASS_FREQUENCIES[c] + 0.001), rel_tol=1e-6)
    no_freq = ClassSpec(("empty", "a", "b"), (0, 1, 2), ((0, 0), (1, 1), (2, 2)))
    assert no_freq.weights().tolist() == [1.0, 1.0, 1.0]
    # classes never seen (count 0 or 1) get the largest weight of the seen ones
    unseen = ClassSpec(("empty", "a", "b", "c"), (0, 1, 2, 3), (), (1e6, 0.0, 100.0, 1.0))
    u = unseen.weights()
    assert math.isclose(u[0], 1 / math.log(1e6 + 0.001), rel_tol=1e-6) and math.isclose(u[2], 1 / math.log(100.001), rel_tol=1e-6)
    assert u[1] == u[3] == u[2] == u.max() > u[0]
    with pytest.raises(ValueError, match="3 class frequencies for 4 classes"):
        ClassSpec(("empty", "a", "b", "c"), (0, 1, 2, 3), (), (1.0, 2.0, 3.0))


def test_count_classes():
    t = np.array([[0, 0, 1], [255, 2, 2]], np.uint8)
    assert count_classes(t, 4).tolist() == [2, 1, 2, 0]


def test_kitti360_prepared_frequencies_and_model_weights(tmp_path: Path):
    """Defect 3: SSCBench-KITTI360 publishes no class frequencies, and models trained on it with all-ones CE
    weights although ``loss.class_weighting`` is on. ``occ prepare kitti360`` counts them over the prepared
    training split; the spec carries them; a model built on the spec weights its CE with them."""
    from occ_core.data.prepare.pipeline import prepare
    from occ_core.engine.config import build_config
    from occ_core.engine.trainer import build_model

    from _raw import write_raw_kitti360

    rng = np.random.default_rng(0)
    raw = tmp_path / "raw"
    write_raw_kitti360(raw, "00", [0, 5], rng, classes=(1, 7, 11, 13))  # train
    write_raw_kitti360(raw, "06", [0], rng, classes=(18,))  # val: other-object only, must not be counted
    out = tmp_path / "prep"
    prepare("kitti360", raw, out, workers=1, progress=False)
    data = PreparedDataset(out)
    spec = data.spec
    assert spec.name == "kitti360" and data.manifest["version"] == 2 and "spec" in data.manifest
    counts = np.zeros(19, np.int64)
    for f in data.frames("train", labeled=True):
        t = data.load_target(f, 1)
        counts += np.bincount(t[t != 255].reshape(-1), minlength=19)[:19]
    assert len(data.frames("train")) == 2 and len(data.frames("val")) == 1
    assert spec.classes.frequencies == tuple(float(c) for c in counts)
    assert spec.classes.frequencies_source == "counted over the prepared training split"
    assert counts[18] == 0 and counts[[0, 1, 7, 11, 13]].min() > 1000
    w = spec.classes.weights()
    assert len(np.unique(w)) > 2  # not all ones
    for c in (0, 1, 7, 11, 13):
        assert math.isclose(w[c], 1 / math.log(counts[c] + 0.001), rel_tol=1e-6)
    assert w[18] == w[[1, 7, 11, 13]].max() and w[0] < w[1]

    cfg = build_config("baseline", "tiny", overrides=[f"data.root={out}", "model.lifting.embed_dims=16",
                                                      "model.lifting.num_heads=2"])
    assert cfg.loss.class_weighting
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random-init backbone warning
        model = build_model(cfg, spec)
    cw = model.class_weights.numpy()
    assert cw.shape == (19,) and not np.allclose(cw, 1.0)
    np.testing.assert_array_equal(cw, w)
