"""Heatmap blobs and the image patches around them, across a set of records (the explorer's
Patches view): where do raters click, and what do those regions look like side by side?

A blob is a connected region (8-neighbourhood, `scipy.ndimage.label`) of heat above a threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from rhf_core.dataset import Dataset
from rhf_core.errors import InvalidArgumentError, RHFError

SORT_KEYS = ("heat", "size")
_EIGHT_NEIGHBOURS = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Blob:
    """One connected region of heat above the threshold, in heatmap pixels."""

    box: tuple[int, int, int, int]  # (x0, y0, x1, y1), x1 and y1 exclusive
    peak: float  # the highest heat inside
    mean: float  # the mean heat inside
    area: float  # share of the map's pixels, in (0, 1]


@dataclass(frozen=True)
class Patch:
    rec_id: str
    position: int  # into the dataset the patches were collected from
    heatmap: str
    blob: Blob


def find_blobs(heatmap: np.ndarray, threshold: float, min_pixels: int = 1) -> list[Blob]:
    """The connected regions of `heatmap` where heat > `threshold`, hottest first.

    NaN counts as no heat. Regions smaller than `min_pixels` pixels are dropped (single stray
    pixels of an upsampled map)."""
    if not 0.0 <= threshold < 1.0:
        raise InvalidArgumentError(f"the blob threshold must be in [0, 1), got {threshold!r}")
    heat = np.nan_to_num(np.asarray(heatmap, dtype=np.float32), nan=0.0)
    if heat.ndim != 2 or heat.size == 0:
        raise InvalidArgumentError(f"a heatmap is a non-empty 2-D array, got shape {heat.shape}")
    labels, n = ndimage.label(heat > threshold, structure=_EIGHT_NEIGHBOURS)
    blobs = []
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        inside = labels[sl] == k
        pixels = int(inside.sum())
        if pixels < min_pixels:
            continue
        values = heat[sl][inside]
        blobs.append(Blob((sl[1].start, sl[0].start, sl[1].stop, sl[0].stop), float(values.max()),
                          float(values.mean(dtype=np.float64)), pixels / heat.size))
    return sorted(blobs, key=lambda b: -b.peak)


def collect_patches(ds: Dataset, positions, heatmap: str, threshold: float, sort_by: str = "heat",
                    max_records: int = 500, min_pixels: int = 2) -> tuple[list[Patch], int, list[str]]:
    """Blobs of the `heatmap` maps of the records at `positions` (the first `max_records` that have
    that map), sorted by peak heat or by area, largest first.

    Returns (patches, records scanned, reasons for records that could not be read)."""
    if sort_by not in SORT_KEYS:
        raise InvalidArgumentError(f"sort patches by {' or '.join(SORT_KEYS)}, not {sort_by!r}")
    positions = np.asarray(positions, dtype=np.int64)
    col = f"has_{heatmap}"
    if col in ds.frame:
        positions = positions[ds.frame[col].to_numpy(dtype=bool)[positions]]
    patches, problems = [], []
    scanned = positions[:max_records]
    for pos in scanned:
        try:
            rec = ds[int(pos)]
        except RHFError as e:  # an unreadable record is reported, the others still count
            problems.append(str(e))
            continue
        if heatmap in rec.heatmaps:
            patches += [Patch(rec.id, int(pos), heatmap, b) for b in find_blobs(rec.heatmaps[heatmap], threshold, min_pixels)]
    key = (lambda p: -p.blob.peak) if sort_by == "heat" else (lambda p: -p.blob.area)
    return sorted(patches, key=key), len(scanned), problems


def patch_box(blob: Blob, map_shape: tuple[int, int], image_size: tuple[int, int], margin: float = 0.5,
              min_share: float = 0.15) -> tuple[int, int, int, int]:
    """A square around the blob in image pixels (the map may be smaller than the image): the blob's
    longer side widened by `margin` of it on each side, at least `min_share` of the image's smaller
    side, shifted (not cut) to stay inside the image, so patches line up in a grid."""
    mh, mw = map_shape
    w, h = image_size
    x0, y0, x1, y1 = blob.box
    sx, sy = w / mw, h / mh
    cx, cy = (x0 + x1) / 2 * sx, (y0 + y1) / 2 * sy
    side = max((x1 - x0) * sx, (y1 - y0) * sy) * (1 + 2 * margin)
    side = int(round(min(max(side, min_share * min(w, h), 1), w, h)))
    left = int(np.clip(round(cx - side / 2), 0, w - side))
    top = int(np.clip(round(cy - side / 2), 0, h - side))
    return left, top, left + side, top + side


def crop_patch(image: Image.Image, blob: Blob, map_shape: tuple[int, int], margin: float = 0.5) -> Image.Image:
    """The part of `image` around `blob` (see `patch_box`)."""
    return image.crop(patch_box(blob, map_shape, image.size, margin))
