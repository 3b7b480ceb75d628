"""downsample_label against a plain per-block loop (the MonoScene ``_downsample_label`` rule)."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from occ_core.data.prepare.downsample import downsample_label


def reference_downsample(label: np.ndarray, ds: int) -> np.ndarray:
    """MonoScene / SSCNet ``_downsample_label``, one block at a time (the slow reference)."""
    X, Y, Z = label.shape
    out = np.zeros((X // ds, Y // ds, Z // ds), dtype=np.uint8)
    empty_t = 0.95 * ds * ds * ds
    for i in range(X // ds):
        for j in range(Y // ds):
            for k in range(Z // ds):
                s = label[i * ds : (i + 1) * ds, j * ds : (j + 1) * ds, k * ds : (k + 1) * ds]
                s = s.flatten()
                z0 = int((s == 0).sum())
                z255 = int((s == 255).sum())
                if z0 + z255 > empty_t:
                    out[i, j, k] = 0 if z0 > z255 else 255
                else:
                    s = s[(s > 0) & (s < 255)]
                    out[i, j, k] = np.argmax(np.bincount(s))
    return out


def check(label: np.ndarray, factor: int) -> np.ndarray:
    before = label.copy()
    got = downsample_label(label, factor)
    np.testing.assert_array_equal(label, before)  # the input is never modified
    want = reference_downsample(label, factor)
    assert got.dtype == np.uint8
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    return got


def blocks_from(values: list[np.ndarray], factor: int, grid: tuple[int, int, int]) -> np.ndarray:
    """Assemble a label grid whose blocks (C order) are the given flat arrays of factor**3."""
    gx, gy, gz = grid
    b = np.stack(values).reshape(gx, gy, gz, factor, factor, factor)
    return np.ascontiguousarray(b.transpose(0, 3, 1, 4, 2, 5)).reshape(
        gx * factor, gy * factor, gz * factor
    )


# ------------------------------------------------------------------------------------------
# random labels, many regimes
# ------------------------------------------------------------------------------------------

SHAPES = [(16, 16, 16), (16, 16, 8), (8, 24, 16), (32, 8, 8)]


def _random_label(rng: np.random.Generator, shape, regime: str) -> np.ndarray:
    if regime == "uniform256":
        return rng.integers(0, 256, shape, dtype=np.uint8)
    if regime == "few":  # a handful of classes: many ties
        return rng.choice(np.array([0, 1, 2, 3, 255], np.uint8), shape)
    if regime == "mostly_empty":  # empty+ignore share near the 95 % threshold
        p_class = rng.uniform(0.0, 0.12)
        lab = rng.choice(np.array([0, 255], np.uint8), shape, p=[0.7, 0.3])
        cls = rng.random(shape) < p_class
        lab[cls] = rng.integers(1, 255, int(cls.sum()), dtype=np.uint8)
        return lab
    if regime == "high_ids":  # ids above 19
        return rng.choice(np.array([0, 20, 77, 200, 254, 255], np.uint8), shape)
    if regime == "two":  # two classes and 0 / 255: ties everywhere
        return rng.choice(np.array([0, 5, 9, 255], np.uint8), shape, p=[0.4, 0.2, 0.2, 0.2])
    raise AssertionError(regime)


@pytest.mark.parametrize("factor", [2, 4, 8])
@pytest.mark.parametrize("regime", ["uniform256", "few", "mostly_empty", "high_ids", "two"])
@pytest.mark.parametrize("shape", SHAPES)
def test_random_regimes(factor, regime, shape):
    rng = np.random.default_rng(zlib.crc32(repr((factor, regime, shape)).encode()))
    check(_random_label(rng, shape, regime), factor)


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_blocky_scene(factor):
    """Mix of uniform blocks (all one class, all 0, all 255) and mixed ones."""
    rng = np.random.default_rng(factor)
    coarse = rng.choice(np.array([0, 0, 0, 255, 1, 9, 40], np.uint8), (8, 8, 4))
    lab = np.repeat(np.repeat(np.repeat(coarse, 4, 0), 4, 1), 4, 2)
    noise = rng.random(lab.shape) < 0.05
    lab[noise] = rng.integers(0, 256, int(noise.sum()), dtype=np.uint8)
    check(lab, factor)


# ------------------------------------------------------------------------------------------
# hand-built edge cases
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_threshold_exact(factor):
    """Blocks with void counts just below, at and above ``0.95 * factor**3``."""
    n = factor**3
    t = 0.95 * n
    rng = np.random.default_rng(n)
    blocks = []
    # every void count from floor(t) - 2 to n, with various 0/255 splits and class fills
    for n_void in range(max(0, int(t) - 2), n + 1):
        for n0 in sorted({0, n_void // 2, (n_void + 1) // 2, n_void}):
            for fill in ([7], [3, 4], [200, 30, 30]):
                s = np.empty(n, np.uint8)
                s[:n0] = 0
                s[n0:n_void] = 255
                s[n_void:] = np.resize(np.array(fill, np.uint8), n - n_void)
                blocks.append(rng.permutation(s))
    while len(blocks) % 4:
        blocks.append(np.zeros(n, np.uint8))
    got = check(blocks_from(blocks, factor, (len(blocks) // 4, 2, 2)), factor)
    assert set(np.unique(got)) >= {0, 255}


def test_threshold_factor8_486_vs_487():
    """486 void voxels of 512 is not above 486.4 -> class; 487 is -> void."""
    s486 = np.r_[np.zeros(300), np.full(186, 255), np.full(26, 12)].astype(np.uint8)
    s487 = np.r_[np.zeros(300), np.full(187, 255), np.full(25, 12)].astype(np.uint8)
    lab = blocks_from([s486, s487], 8, (2, 1, 1))
    got = check(lab, 8)
    assert got.ravel().tolist() == [12, 0]


def test_factor2_needs_all_eight_void():
    seven = np.array([0, 0, 0, 0, 255, 255, 255, 3], np.uint8)  # 7 > 7.6? no -> class 3
    eight = np.array([0, 0, 0, 0, 255, 255, 255, 255], np.uint8)  # tie 4/4 -> 255
    eight0 = np.array([0, 0, 0, 0, 0, 255, 255, 255], np.uint8)  # 5 > 3 -> 0
    lab = blocks_from([seven, eight, eight0, np.full(8, 255, np.uint8)], 2, (2, 2, 1))
    assert check(lab, 2).ravel().tolist() == [3, 255, 0, 255]


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_zero_255_ties_go_to_255(factor):
    n = factor**3
    s = np.r_[np.zeros(n // 2), np.full(n // 2, 255)].astype(np.uint8)
    assert check(blocks_from([s], factor, (1, 1, 1)), factor).item() == 255


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_class_ties_go_to_lowest(factor):
    n = factor**3
    s = np.r_[np.full(n // 2, 201), np.full(n // 2, 23)].astype(np.uint8)
    s2 = np.r_[np.full(n // 4, 9), np.full(n // 4, 8), np.full(n // 2, 0)].astype(np.uint8)
    lab = blocks_from([s, s2], factor, (2, 1, 1))
    assert check(lab, factor).ravel().tolist() == [23, 8]


@pytest.mark.parametrize("factor", [2, 4, 8])
@pytest.mark.parametrize("value", [0, 1, 19, 254, 255])
def test_uniform_blocks(factor, value):
    lab = np.full((16, 16, 8), value, np.uint8)
    got = check(lab, factor)
    assert (got == value).all()


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_blocks_that_only_vary_along_z(factor):
    """Every (x, y) column of a block repeats one z pattern: the z runs of the blocks are all
    equal but the blocks are not uniform (guards word-wise uniformity shortcuts)."""
    rng = np.random.default_rng(10 + factor)
    patterns = [
        np.arange(factor, 0, -1, dtype=np.uint8) + 10,  # all tied: lowest id, not the first
        np.resize(np.array([30, 7], np.uint8), factor),
        rng.choice(np.array([0, 255, 4, 90], np.uint8), factor),
        np.r_[np.full(factor - 1, 255), [0]].astype(np.uint8),
    ]
    for pattern in patterns:
        lab = np.broadcast_to(np.tile(pattern, 2)[None, None, :], (factor * 2, factor, factor * 2))
        check(np.ascontiguousarray(lab), factor)


def test_other_divisors():
    rng = np.random.default_rng(3)
    check(_random_label(rng, (9, 18, 6), "few"), 3)
    check(_random_label(rng, (12, 6, 6), "mostly_empty"), 6)
    check(_random_label(rng, (16, 16, 16), "two"), 16)
    check(_random_label(rng, (32, 32, 16), "uniform256"), 16)


@pytest.mark.parametrize("factor", [3, 4, 8])
def test_small_bincount_chunks(monkeypatch, factor):
    """The bincount runs in chunks of rows; a tiny chunk (with a ragged last one) is exact too."""
    import occ_core.data.prepare.downsample as ds

    monkeypatch.setattr(ds, "_CHUNK_ROWS", 3)
    rng = np.random.default_rng(20 + factor)
    check(_random_label(rng, (factor * 5, factor * 2, factor), "uniform256"), factor)
    check(_random_label(rng, (factor * 4, factor * 3, factor), "two"), factor)


def test_factor1_is_copy():
    rng = np.random.default_rng(1)
    lab = rng.integers(0, 256, (4, 6, 2), dtype=np.uint8)
    got = downsample_label(lab, 1)
    np.testing.assert_array_equal(got, lab)
    assert not np.shares_memory(got, lab)
    got[0, 0, 0] ^= 1
    assert got[0, 0, 0] != lab[0, 0, 0]


def test_non_contiguous_and_input_untouched():
    rng = np.random.default_rng(2)
    big = _random_label(rng, (32, 32, 32), "few")
    view = big[::2, 1::2, :16]  # strided, 16x16x16
    before = big.copy()
    check(view, 4)
    check(np.asfortranarray(big[:16, :16, :8]), 2)
    np.testing.assert_array_equal(big, before)


def test_full_frame_shape():
    rng = np.random.default_rng(4)
    lab = _random_label(rng, (256, 256, 32), "mostly_empty")
    assert downsample_label(lab, 8).shape == (32, 32, 4)
    check(lab[:64, :64], 8)
    check(lab[:32, :32, :16], 2)


# ------------------------------------------------------------------------------------------
# dtypes and errors
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.int64, np.uint16, np.int32, np.uint32, np.int8])
def test_integer_dtypes_in_range_are_cast(dtype):
    rng = np.random.default_rng(5)
    lab = _random_label(rng, (8, 8, 8), "few")
    hi = 127 if dtype == np.int8 else 255
    lab = np.minimum(lab, hi).astype(dtype)
    got = downsample_label(lab, 2)
    np.testing.assert_array_equal(got, reference_downsample(lab.astype(np.uint8), 2))


def test_bool_is_cast():
    lab = np.zeros((4, 4, 4), bool)
    lab[:2, :2, :2] = True
    assert downsample_label(lab, 2)[0, 0, 0] == 1


@pytest.mark.parametrize(
    "bad",
    [
        np.full((4, 4, 4), 256, np.uint16),
        np.full((4, 4, 4), -1, np.int16),
        np.zeros((4, 4, 4), np.float32),
        np.zeros((4, 4, 4), np.float64),
    ],
)
def test_unsafe_dtypes_raise(bad):
    with pytest.raises(ValueError, match="label"):
        downsample_label(bad, 2)


@pytest.mark.parametrize("shape,factor", [((16, 16, 12), 8), ((6, 4, 4), 4), ((3, 4, 4), 2)])
def test_indivisible_shape_raises(shape, factor):
    with pytest.raises(ValueError, match="not divisible"):
        downsample_label(np.zeros(shape, np.uint8), factor)


@pytest.mark.parametrize("factor", [0, -2, 2.0, True, "2"])
def test_bad_factor_raises(factor):
    with pytest.raises(ValueError, match="factor"):
        downsample_label(np.zeros((4, 4, 4), np.uint8), factor)


def test_not_3d_raises():
    with pytest.raises(ValueError, match="3-D"):
        downsample_label(np.zeros((4, 4), np.uint8), 2)


# ------------------------------------------------------------------------------------------
# property-based
# ------------------------------------------------------------------------------------------


@st.composite
def labels(draw):
    factor = draw(st.sampled_from([2, 4, 8]))
    gx, gy, gz = (draw(st.integers(1, 3)) for _ in range(3))
    n = gx * gy * gz * factor**3
    # a small palette drawn per example so ties and threshold cases are common
    palette = draw(
        st.lists(st.integers(0, 255), min_size=1, max_size=5, unique=True).map(
            lambda p: np.array(p, np.uint8)
        )
    )
    void_share = draw(st.sampled_from([0.0, 0.5, 0.9, 0.95, 0.97, 1.0]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    lab = rng.choice(palette, n)
    void = rng.random(n) < void_share
    lab[void] = rng.choice(np.array([0, 255], np.uint8), int(void.sum()))
    return lab.reshape(gx * factor, gy * factor, gz * factor), factor


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(labels())
def test_property_matches_reference(case):
    lab, factor = case
    check(lab, factor)
