"""Downsampling of SSC target grids (the SemanticKITTI benchmark rule).

:func:`downsample_label` reproduces ``_downsample_label`` of SSCNet / MonoScene bit for bit, fully
vectorised. For every block of ``factor ** 3`` voxels:

* if MORE than 95 % of its voxels are 0 (empty) or 255 (ignore), i.e. ``z0 + z255 > 0.95 *
  factor ** 3`` (compared in floating point exactly as the reference does), the block is 0 when
  the zeros strictly outnumber the 255s, else 255;
* otherwise it is the most frequent label among 1..254 in the block, ties going to the lowest id.

How it is fast (see ``docs/downsampling.md`` for measurements):

* factor 2: the 8 voxels of each block become 8 contiguous byte columns (one transposed copy);
  uniform blocks are answered directly, the others by the 28 pairwise column comparisons (each
  voxel's count in its block) and a max over ``count * 256 + (255 - label)``;
* other factors: blocks become rows of ``factor ** 3`` bytes with one transposed copy done on
  wide words (the ``factor`` contiguous z voxels of a block move as one uint16/32/64; the order
  inside a row does not matter for counting); uniform rows are answered directly, void rows from
  their 0/255 counts, and the rest by a ``bincount`` over ``row * nbins + (label + 1) % 256`` in
  cache-sized chunks of rows, where ``nbins`` is the largest class present plus two, then an
  ``argmax`` over the class bins (the first maximum, i.e. the lowest id).
"""

from __future__ import annotations

import numpy as np

__all__ = ["downsample_label", "EMPTY_FRACTION"]

EMPTY_FRACTION = 0.95
"""A block is empty/ignore when MORE than this fraction of it is 0 or 255."""

_CHUNK_BYTES = 1 << 18  # labels per bincount chunk (its int64 keys: 2 MiB)
_CHUNK_ROWS = 1024  # rows per bincount chunk (its histogram: 2 MiB)


def _as_uint8(label: object) -> np.ndarray:
    """``label`` as a C-contiguous uint8 array, or ``ValueError`` if that would change values."""
    arr = np.asarray(label)
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype == np.bool_:
        return np.ascontiguousarray(arr, dtype=np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(
            f"downsample_label: label must be an integer array with values in 0..255 "
            f"(uint8 preferred), got dtype {arr.dtype}"
        )
    if arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise ValueError(
                f"downsample_label: label of dtype {arr.dtype} cannot be cast to uint8 safely: "
                f"values span {lo}..{hi}, outside 0..255 (map raw ids to 0..254 and 255 first)"
            )
    return np.ascontiguousarray(arr, dtype=np.uint8)


def _check(label: np.ndarray, factor: object) -> int:
    if isinstance(factor, (bool, np.bool_)) or not isinstance(factor, (int, np.integer)):
        raise ValueError(f"downsample_label: factor must be a positive integer, got {factor!r}")
    factor = int(factor)
    if factor < 1:
        raise ValueError(f"downsample_label: factor must be a positive integer, got {factor}")
    if label.ndim != 3:
        raise ValueError(
            f"downsample_label: label must be 3-D [X, Y, Z], got shape {tuple(label.shape)}"
        )
    if any(n % factor for n in label.shape):
        raise ValueError(
            f"downsample_label: shape {tuple(label.shape)} is not divisible by factor {factor}"
        )
    return factor


def _blocks(label: np.ndarray, f: int) -> np.ndarray:
    """Rows of ``f ** 3`` bytes, one per output voxel in C order (voxel order inside a row is
    unspecified). The copy moves the ``f`` contiguous z bytes of a block as wide words."""
    X, Y, Z = label.shape
    w = next(w for w in (8, 4, 2, 1) if f % w == 0)
    words = label.view(np.dtype(f"u{w}")) if w > 1 else label  # (X, Y, Z // w)
    six = words.reshape(X // f, f, Y // f, f, Z // f, f // w)
    rows = np.ascontiguousarray(six.transpose(0, 2, 4, 1, 3, 5))
    return rows.reshape(-1).view(np.uint8).reshape(-1, f * f * f)


def _uniform_rows(rows: np.ndarray) -> np.ndarray:
    """Boolean mask of rows whose bytes are all equal."""
    m = rows.shape[1]
    if m % 8 == 0 and m <= 128:
        words = rows.view(np.uint64)  # (n, m // 8)
        first = words[:, 0]
        same = first == ((first >> np.uint64(8)) | (first << np.uint64(56)))  # byte rotation
        for j in range(1, words.shape[1]):
            same &= words[:, j] == first
        return same
    return rows.min(axis=1) == rows.max(axis=1)


def _void_value(n0: np.ndarray, n255: np.ndarray) -> np.ndarray:
    """0 where the zeros strictly outnumber the 255s, else 255 (uint8)."""
    return (n0 <= n255).view(np.uint8) * np.uint8(255)


def _downsample_2(label: np.ndarray) -> np.ndarray:
    """Factor 2: the 8 voxels of each block as 8 contiguous columns, counted by comparisons."""
    X, Y, Z = label.shape
    six = label.reshape(X // 2, 2, Y // 2, 2, Z // 2, 2)
    cols = np.ascontiguousarray(six.transpose(1, 3, 5, 0, 2, 4)).reshape(8, -1)
    n = cols.shape[1]
    eq = np.empty(n, np.bool_)
    same = cols[1] == cols[0]
    for j in range(2, 8):
        same &= np.equal(cols[j], cols[0], out=eq)
    out = cols[0].copy()  # final for uniform blocks: a uniform block is its value
    mixed = np.flatnonzero(~same)
    if mixed.size == 0:
        return out.reshape(X // 2, Y // 2, Z // 2)
    everything = mixed.size > 0.7 * n
    sub = cols if everything else np.take(cols, mixed, axis=1)  # (8, m)
    m = sub.shape[1]
    eq = eq[:m]
    # counts[j] = occurrences of sub[j] in its block, from the 28 pairwise comparisons
    counts = np.ones((8, m), np.uint8)
    for j in range(8):
        for k in range(j + 1, 8):
            e = np.equal(sub[j], sub[k], out=eq).view(np.uint8)
            counts[j] += e
            counts[k] += e
    real = ((sub + np.uint8(1)) >= 2).view(np.uint8)  # 1 for labels 1..254; 0 for 0 and 255
    n_void = 8 - real.sum(axis=0, dtype=np.uint8)
    counts *= real
    # key = count * 256 + (255 - label): the larger count wins, then the lower label
    key = counts.astype(np.uint16)
    key <<= 8
    key |= ~sub
    best = key.max(axis=0)
    res = ~(best.astype(np.uint8))  # low byte is 255 - label
    is_void = n_void > EMPTY_FRACTION * 8
    if is_void.any():
        n0 = (sub == 0).sum(axis=0, dtype=np.uint8)
        np.copyto(res, _void_value(n0, n_void - n0), where=is_void)
    if everything:
        return res.reshape(X // 2, Y // 2, Z // 2)
    out[mixed] = res
    return out.reshape(X // 2, Y // 2, Z // 2)


def _mode_bincount(shifted: np.ndarray) -> np.ndarray:
    """Most frequent label in 1..254 per row (ties: lowest), by a ``bincount`` over
    ``row * nbins + value`` in cache-sized chunks of rows. ``shifted`` holds the labels plus one,
    wrapping (255 -> 0, 0 -> 1, class c -> c + 1), so the histogram only needs as many bins as
    the largest class present plus two. Each row must hold a label in 1..254."""
    n, m = shifted.shape
    nbins = int(shifted.max()) + 1
    out = np.empty(n, np.uint8)
    chunk = max(1, min(_CHUNK_ROWS, _CHUNK_BYTES // m))
    offsets = (np.arange(min(chunk, n), dtype=np.intp) * nbins)[:, None]
    keys = np.empty((min(chunk, n), m), np.intp)
    for start in range(0, n, chunk):
        part = shifted[start : start + chunk]
        k = part.shape[0]
        np.add(offsets[:k], part, out=keys[:k])
        hist = np.bincount(keys[:k].reshape(-1), minlength=k * nbins).reshape(k, nbins)
        out[start : start + k] = hist[:, 2:].argmax(axis=1) + 1  # first maximum: lowest id
    return out


def _downsample_rows(label: np.ndarray, f: int) -> np.ndarray:
    """Any factor: blocks as rows, uniform rows answered directly, the rest by ``bincount``."""
    X, Y, Z = label.shape
    rows = _blocks(label, f)
    out = rows[:, 0].copy()  # final for uniform rows: a uniform block is its value
    mixed = np.flatnonzero(~_uniform_rows(rows))
    if mixed.size:
        sub = rows if mixed.size == rows.shape[0] else rows[mixed]
        sub = sub + np.uint8(1)  # wraps: 255 -> 0, 0 -> 1, c -> c + 1 (rows may view the input)
        n_void = (sub < 2).view(np.uint8).sum(axis=1, dtype=np.int32)
        is_void = n_void > EMPTY_FRACTION * f**3
        if is_void.any():
            n0 = (sub[is_void] == 1).view(np.uint8).sum(axis=1, dtype=np.int32)
            out[mixed[is_void]] = _void_value(n0, n_void[is_void] - n0)
            keep = ~is_void
            mixed, sub = mixed[keep], sub[keep]
        if mixed.size:
            out[mixed] = _mode_bincount(sub)
    return out.reshape(X // f, Y // f, Z // f)


def downsample_label(label: np.ndarray, factor: int) -> np.ndarray:
    """Downsample an SSC target grid by ``factor`` with the SemanticKITTI benchmark rule.

    Args:
        label: uint8 ``[X, Y, Z]`` (0 = empty, 1..254 classes, 255 = ignore). Other integer
            dtypes are accepted when every value lies in 0..255.
        factor: block edge; any positive divisor of X, Y and Z (the benchmark uses 1, 2, 4, 8).

    Returns:
        uint8 ``[X // factor, Y // factor, Z // factor]``, a new array (a copy for factor 1).
        Per block of ``factor ** 3`` voxels: if ``z0 + z255 > 0.95 * factor ** 3`` (counts of 0
        and 255), the block is 0 when ``z0 > z255`` and 255 otherwise; else it is the most
        frequent label among 1..254, ties to the lowest id. Bit-identical to MonoScene's
        ``_downsample_label``.

    Raises:
        ValueError: not 3-D, a shape not divisible by ``factor``, a bad ``factor``, or a dtype /
            values that cannot be cast to uint8 without change (floats, negatives, > 255).
    """
    label = _as_uint8(label)
    f = _check(label, factor)
    if f == 1:
        return label.copy()
    if f == 2:
        return _downsample_2(label)
    return _downsample_rows(label, f)
