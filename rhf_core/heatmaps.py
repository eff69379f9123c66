"""Heatmap utilities shared by the data sources and the pages.

A heatmap is a float32 H×W array in [0, 1]. Annotator clicks become heatmaps the way each real
dataset describes it:

- RichHF-18K (Liang et al. 2024, sec. 3): each clicked point becomes a disk of radius 20 px on the
  512×512 image; the per-annotator maps are averaged, so a value of 2/3 means two of three raters
  marked the pixel.
- Rapidata: each click becomes a Gaussian with σ = 5% of the image's smaller side; the heatmap is
  the average over annotators.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Iterable, Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

from rhf_core.errors import InvalidArgumentError

# RichHF-18K: disk radius 20 px on a 512 px image.
RICHHF_DISK_RADIUS_FRAC = 20 / 512
# Rapidata: Gaussian σ = 5% of the smaller side.
RAPIDATA_SIGMA_FRAC = 0.05

Point = tuple[float, float]  # (x, y) in pixels, x to the right, y down

# A map whose peak is below this has nothing marked: `heatmap_to_mask` gives an empty mask for it in
# either mode. Without it, relative mode cut a clean image's faint prediction (peak 0.004, shown as
# 0.00) at half its peak and repainted 3% of the image. Measured: the embedded RAHF's implausibility
# peak is 0.0006–0.0195 on 20 clean ShapesWorld images and 0.26–0.82 on 20 with a defect; one click
# among 40 averaged raters still peaks at 0.025.
MIN_PEAK = 0.02


def _as_heatmap(heatmap, what: str = "heatmap") -> np.ndarray:
    """A 2-D float32 copy with non-finite values made finite: NaN and −inf → 0 (no heat), +inf → 1.

    One bad pixel must not spread over its neighbours in a resize, nor turn a whole map's peak into
    NaN (which made masks and overlays empty or black)."""
    try:
        arr = np.array(heatmap, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise InvalidArgumentError(f"the {what} must be a 2-D array of numbers ({e})") from None
    if arr.ndim != 2:
        raise InvalidArgumentError(f"the {what} must be 2-D (H×W), got shape {arr.shape}")
    if arr.size == 0:
        raise InvalidArgumentError(f"the {what} is empty (shape {arr.shape})")
    return np.nan_to_num(arr, copy=False, nan=0.0, posinf=1.0, neginf=0.0)


def _check_size(size) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in size)
        ok = (w, h) == tuple(size)
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok or w < 1 or h < 1:
        raise InvalidArgumentError(f"size must be (width, height) in whole pixels ≥ 1, got {size!r}")
    return w, h


@lru_cache(maxsize=8)
def _pixel_centres(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    yy.flags.writeable = False
    xx.flags.writeable = False
    return yy, xx


def points_to_heatmap(
    points: Iterable[Point],
    size: tuple[int, int],
    kind: str = "disk",
    radius: float | None = None,
    sigma: float | None = None,
) -> np.ndarray:
    """One annotator's clicks → a heatmap of `size` = (width, height), peak value 1.

    `kind="disk"` marks every pixel within `radius` of a click (default: RichHF's 20/512 of the
    smaller side); `kind="gaussian"` places an unnormalised Gaussian of `sigma` (default: 5% of the
    smaller side) at each click. Overlapping clicks take the maximum, so one annotator contributes
    at most 1 to a pixel.
    """
    w, h = _check_size(size)
    out = np.zeros((h, w), dtype=np.float32)
    try:
        pts = np.asarray(list(points), dtype=np.float64).reshape(-1, 2)
    except (TypeError, ValueError) as e:
        raise InvalidArgumentError(f"clicks must be (x, y) pairs of numbers ({e})") from None
    if len(pts) == 0:
        return out
    if not np.isfinite(pts).all():
        raise InvalidArgumentError("click coordinates must be finite numbers (got NaN or infinity)")
    yy, xx = _pixel_centres(h, w)
    side = min(w, h)
    if kind == "disk":
        r = radius if radius is not None else RICHHF_DISK_RADIUS_FRAC * side
        reach = r
    elif kind == "gaussian":
        s = sigma if sigma is not None else RAPIDATA_SIGMA_FRAC * side
        reach = 4 * s  # beyond 4σ a Gaussian is below 3e-4 of its peak
    else:
        raise InvalidArgumentError(f"unknown heatmap kind {kind!r}; use 'disk' or 'gaussian'")
    for x, y in pts:
        # Only the window the click can reach is touched.
        x0, x1 = max(0, int(x - reach) - 1), min(w, int(x + reach) + 2)
        y0, y1 = max(0, int(y - reach) - 1), min(h, int(y + reach) + 2)
        if x0 >= x1 or y0 >= y1:
            continue
        d2 = (xx[y0:y1, x0:x1] - x) ** 2 + (yy[y0:y1, x0:x1] - y) ** 2
        if kind == "disk":
            value = (d2 <= r * r).astype(np.float32)
        else:
            value = np.exp(-d2 / (2 * s * s)).astype(np.float32)
        window = out[y0:y1, x0:x1]
        np.maximum(window, value, out=window)
    return out


def annotators_to_heatmap(
    clicks_per_annotator: Sequence[Iterable[Point]],
    size: tuple[int, int],
    kind: str = "disk",
    **kwargs,
) -> np.ndarray:
    """Average of the per-annotator heatmaps (annotators who clicked nothing count as zeros)."""
    w, h = size
    if len(clicks_per_annotator) == 0:
        return np.zeros((h, w), dtype=np.float32)
    total = np.zeros((h, w), dtype=np.float32)
    for clicks in clicks_per_annotator:
        total += points_to_heatmap(clicks, size, kind=kind, **kwargs)
    return np.clip(total / len(clicks_per_annotator), 0.0, 1.0).astype(np.float32)


def heatmap_mass(heatmap: np.ndarray | None) -> float:
    """Mean value of a heatmap: the share of the image it covers, weighted by strength. NaN if absent."""
    if heatmap is None:
        return float("nan")
    return float(np.mean(heatmap, dtype=np.float64))


def resize_heatmap(heatmap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to `size` = (width, height) with bilinear interpolation; a float32 copy in [0, 1].

    Non-finite values count as no heat (NaN, −inf) or full heat (+inf), see `_as_heatmap`."""
    w, h = _check_size(size)
    heatmap = _as_heatmap(heatmap)
    if heatmap.shape != (h, w):
        heatmap = np.asarray(Image.fromarray(heatmap, mode="F").resize((w, h), Image.BILINEAR), dtype=np.float32)
    return np.clip(heatmap, 0.0, 1.0)


COLOR_MAPS = ("inferno", "viridis", "jet", "hot", "reds")
_PLOTLY_NAMES = {"inferno": "Inferno", "viridis": "Viridis", "jet": "Jet", "hot": "Hot", "reds": "Reds"}


@lru_cache(maxsize=None)
def _colormap_lut(name: str) -> np.ndarray:
    """256×3 uint8 lookup table sampled from plotly's colour scale of that name."""
    from plotly.colors import get_colorscale, sample_colorscale, unlabel_rgb

    if name not in _PLOTLY_NAMES:
        raise InvalidArgumentError(f"unknown colour map {name!r}; choose one of {', '.join(COLOR_MAPS)}")
    scale = get_colorscale(_PLOTLY_NAMES[name])
    colors = sample_colorscale(scale, list(np.linspace(0, 1, 256)), colortype="rgb")
    return np.array([unlabel_rgb(c) for c in colors], dtype=np.float64).round().astype(np.uint8)


def colorize_heatmap(heatmap: np.ndarray, cmap: str = "inferno") -> Image.Image:
    """Heatmap → RGB image through a colour map (0 = low end of the map; NaN counts as 0)."""
    lut = _colormap_lut(cmap)
    idx = np.clip(_as_heatmap(heatmap) * 255 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(lut[idx], "RGB")


def overlay_heatmap(
    image: Image.Image, heatmap: np.ndarray, opacity: float = 0.6, cmap: str = "inferno", normalize: bool = True
) -> Image.Image:
    """Blend a coloured heatmap over `image` (the heatmap is resized to the image first).

    With `normalize`, heat is divided by the map's peak, so a region one rater of three marked is as
    visible as the strongest region of that map. Each pixel's alpha is `opacity` × heat, so cold
    pixels leave the image untouched."""
    if not isinstance(opacity, (int, float, np.number)) or not 0.0 <= opacity <= 1.0:
        raise InvalidArgumentError(f"opacity must be in [0, 1], got {opacity!r}")
    if not isinstance(image, Image.Image):
        raise InvalidArgumentError(f"overlay_heatmap needs a PIL image, got {type(image).__name__}")
    image = image.convert("RGB")
    heat = resize_heatmap(heatmap, image.size)
    peak = float(heat.max()) if heat.size else 0.0
    if normalize and peak > 0:
        heat = heat / peak
    colors = np.asarray(colorize_heatmap(heat, cmap), dtype=np.float32)
    base = np.asarray(image, dtype=np.float32)
    alpha = (opacity * heat)[..., None]
    out = base * (1 - alpha) + colors * alpha
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8), "RGB")


def heatmap_to_mask(
    heatmap: np.ndarray,
    threshold: float = 0.5,
    mode: str = "absolute",
    dilation: int = 0,
    size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Threshold and dilate a heatmap into a boolean mask (True = repaint, RichHF sec. 5.3).

    `mode="absolute"` keeps pixels with heat ≥ `threshold`; `mode="relative"` keeps pixels with
    heat ≥ `threshold` × the map's maximum. A map whose peak is below MIN_PEAK (0.02) has nothing
    marked and gives an empty mask either way. NaN pixels count as no heat.
    The heatmap is first resized to `size` = (width, height) when given, so `dilation` (a disk
    radius) is in pixels of that image.
    """
    if not isinstance(threshold, (int, float, np.number)) or not 0.0 <= threshold <= 1.0:
        raise InvalidArgumentError(f"threshold must be in [0, 1], got {threshold!r}")
    if not isinstance(dilation, (int, float, np.number)) or not 0 <= dilation < float("inf"):
        raise InvalidArgumentError(f"dilation must be ≥ 0 pixels, got {dilation!r}")
    if mode not in ("absolute", "relative"):
        raise InvalidArgumentError(f"unknown threshold mode {mode!r}; use 'absolute' or 'relative'")
    heat = resize_heatmap(heatmap, size) if size is not None else _as_heatmap(heatmap)
    peak = float(heat.max())
    if peak < float(np.float32(MIN_PEAK)):  # the map is float32: a pixel set to MIN_PEAK counts
        return np.zeros(heat.shape, dtype=bool)
    cut = threshold if mode == "absolute" else threshold * peak
    mask = heat >= max(cut, 1e-6)
    if dilation > 0 and mask.any():
        # Exact disk dilation: every pixel within `dilation` of the mask.
        mask = ndimage.distance_transform_edt(~mask) <= dilation
    return mask


def mask_to_image(mask: np.ndarray) -> Image.Image:
    """Boolean mask → diffusers-style mask image ("L", white = repaint)."""
    return Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), "L")
