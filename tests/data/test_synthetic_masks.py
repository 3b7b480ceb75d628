"""The synthetic generator's instance masks (the SAM stand-in): ROOT/masks/<seq>/<frame>/<camera>.png + .json."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from occ_core.data.prepare.masks import read_id_image

THING_CLASSES = set(range(1, 9))  # car .. motorcyclist: the classes whose objects carry instance ids


def test_masks_partition_the_image_by_object_and_class(synthetic_raw: Path):
    seq = synthetic_raw / "dataset" / "sequences" / "00"
    ids = read_id_image(synthetic_raw / "masks" / "00" / "000000" / "image_2.png", (1241, 376))
    info = json.loads((synthetic_raw / "masks" / "00" / "000000" / "image_2.json").read_text())
    sem = cv2.imread(str(seq / "semantic_2" / "000000.png"), cv2.IMREAD_UNCHANGED)
    k = int(ids.max())
    assert k > 20 and len(info["scores"]) == len(info["areas"]) == len(info["kinds"]) == k
    assert info["source"] == "synthetic" and set(info["scores"]) == {1.0}
    counts = np.bincount(ids.ravel(), minlength=k + 1)
    assert info["areas"] == counts[1:].tolist() and info["areas"] == sorted(info["areas"], reverse=True)
    assert np.array_equal(ids == 0, sem == 0)  # every pixel but the sky is in a mask
    for m in range(1, k + 1):
        classes = set(np.unique(sem[ids == m]).tolist())
        kind = info["kinds"][m - 1]
        if kind == "ground":  # one connected region of one ground class
            assert len(classes) == 1
            n, _ = cv2.connectedComponents((ids == m).astype(np.uint8), connectivity=4)
            assert n == 2
        elif kind == "thing":  # one object instance: one thing class (a bicyclist's rider and bike share it)
            assert len(classes) == 1 and classes <= THING_CLASSES
        else:  # one stuff primitive
            assert kind == "stuff" and len(classes) == 1 and not classes & THING_CLASSES
    assert "thing" in info["kinds"] and "stuff" in info["kinds"] and "ground" in info["kinds"]


def test_prepared_folder_gets_the_masks(synthetic_prepared: Path, synthetic_raw: Path):
    got = read_id_image(synthetic_prepared / "masks" / "08" / "000000" / "image_2.png")
    src = read_id_image(synthetic_raw / "masks" / "08" / "000000" / "image_2.png")
    assert np.array_equal(got, src)  # already in score/area order: imported unchanged
    info = json.loads((synthetic_prepared / "masks" / "08" / "000000" / "image_2.json").read_text())
    assert info["origin"] == "synthetic" and info["ids"] == list(range(1, int(src.max()) + 1))
