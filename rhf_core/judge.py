"""The ShapesWorld judge: a classical-vision oracle that plays the human rater for images of this
world, rendered or generated (docs/design.md section 3).

    v = judge(image, "two red circles on the grass")
    v.aligned, v.misaligned_words, v.implausibility, v.scene

1. Background and contrast: the border ring's median colour is matched against every background
   colour under every contrast in the world's range (contrast pulls colours toward grey).
2. Objects: pixels far from the background colour, cleaned by a morphological opening, split into
   connected components; specks smaller than any object are ignored.
3. Each object: its colour is the nearest palette colour (under the same contrast); its shape is
   the clean template (the renderer's own outline, fitted to the object's centroid and area) that
   best matches its soft coverage (how far each pixel moved from the background toward the
   object's colour, so anti-aliased and blurred edges count partially). What the best template does not explain — extra blobs (appendages, fused
   twins, smears) and missing parts (bites, melted edges) — is the implausible region.
4. Against the prompt: count, colour, shape and background; each mismatch names its prompt words.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from scipy import ndimage

from rhf_core.images import load_image
from rhf_core.shapes.dataset import generate_sample
from rhf_core.shapes.grammar import BACKGROUNDS, COLORS, PLURALS, SHAPES, PromptSpec, parse_prompt
from rhf_core.shapes.render import raster, shape_outline

# Bumped whenever a verdict can change; disk caches of judged results include it in their keys.
JUDGE_VERSION = 2
CONTRASTS = np.linspace(0.5, 1.0, 11)
MIN_OBJECT_AREA = 14  # pixels at 64 px; the smallest rendered object is ~30
# An object is implausible when its best clean template leaves this much unexplained.
UNEXPLAINED_BLOB = 6  # pixels in one connected blob
UNEXPLAINED_SHARE = 0.12  # of the object's area, all blobs together


@dataclass
class JudgedObject:
    color: str
    shape: str
    x: float
    y: float
    area: int
    fit: float  # IoU with the best clean template
    implausible: bool

    def to_dict(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


@dataclass
class Verdict:
    aligned: bool
    misaligned_words: list[str]
    implausibility: np.ndarray  # float32 H×W, 1 on implausible regions
    scene: dict
    reasons: list[str] = field(default_factory=list)

    @property
    def implausible(self) -> bool:
        return bool(self.implausibility.any())


def _palette(contrast: float, colors: dict) -> dict[str, np.ndarray]:
    return {n: 128 + (np.array(c, np.float64) - 128) * contrast for n, c in colors.items()}


def _background(img: np.ndarray) -> tuple[str, float, np.ndarray]:
    """(background name, contrast, its colour) that best explain the border ring."""
    ring = np.concatenate([img[:3].reshape(-1, 3), img[-3:].reshape(-1, 3), img[:, :3].reshape(-1, 3), img[:, -3:].reshape(-1, 3)])
    observed = np.median(ring, axis=0)
    best = None
    for c in CONTRASTS:
        for name, rgb in _palette(c, {b: d["rgb"] for b, d in BACKGROUNDS.items()}).items():
            d = np.linalg.norm(observed - rgb)
            if best is None or d < best[0]:
                best = (d, name, float(c))
    return best[1], best[2], observed


_UNIT_CACHE: dict = {}


def _unit(shape: str) -> tuple[float, float, float]:
    """(area per r², centroid offset x, y per r) of a shape's outline, measured once."""
    if shape not in _UNIT_CACHE:
        cov = raster([shape_outline(shape, 32, 32, 10)], 64)
        cy, cx = ndimage.center_of_mass(cov)
        _UNIT_CACHE[shape] = (cov.sum() / 100.0, (32 - cx) / 10, (32 - cy) / 10)
    return _UNIT_CACHE[shape]


# gaussian_filter(t, 0.8) as its two 1-D passes with the kernel made once: the same correlations scipy
# runs (reflect mode, truncate 4), without rebuilding the kernel for each of the ~800 templates an object
# is fitted with. The kernel is read off scipy's own filter of a unit impulse (exact: 1·w + 0·… = w).
_BLUR_SIGMA = 0.8
_BLUR_RADIUS = int(4.0 * _BLUR_SIGMA + 0.5)
_impulse = np.zeros(4 * _BLUR_RADIUS + 1)
_impulse[2 * _BLUR_RADIUS] = 1.0
_BLUR_WEIGHTS = ndimage.gaussian_filter1d(_impulse, _BLUR_SIGMA)[_BLUR_RADIUS:3 * _BLUR_RADIUS + 1][::-1].copy()


def _blur(t: np.ndarray) -> np.ndarray:
    out = np.empty_like(t)
    ndimage.correlate1d(t, _BLUR_WEIGHTS, 0, out, "reflect", 0.0, 0)
    ndimage.correlate1d(out, _BLUR_WEIGHTS, 1, out, "reflect", 0.0, 0)
    return out


def _soft_fits(alpha: np.ndarray, mask: np.ndarray) -> dict[str, tuple[float, np.ndarray]]:
    """Each clean shape's agreement with the object's soft coverage `alpha` (1 − normalised L1,
    searching scale, sub-pixel position and a little blur), with its binary template.

    Two anchors: the coverage's centroid at about the object's area (a clean object), and the
    object's thickest point at 50–100% of its area (a shape carrying an appendage, a smear or a fused
    twin: these pull the centroid off the shape and add area, so a template anchored there misfits)."""
    total = float(alpha.sum())
    ys, xs = np.nonzero(alpha > 0.05)
    cy = float((alpha[ys, xs] * ys).sum() / total) + 0.5
    cx = float((alpha[ys, xs] * xs).sum() / total) + 0.5
    anchors = [(cx, cy, (0.9, 1.0, 1.1))]
    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    ty, tx = np.nonzero(dist >= dist.max() - 0.5)
    px, py = float(tx.mean()) + 0.5, float(ty.mean()) + 0.5
    if np.hypot(px - cx, py - cy) >= 1.0:
        anchors.append((px, py, (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)))
    out = {}
    alpha_sum = alpha.sum()
    side = alpha.shape[0]
    for shape in SHAPES:
        best = None
        k, ox, oy = _unit(shape)
        for ax, ay, scales in anchors:
            for s in scales:
                # A clean template with its centroid at (ax + dx, ay + dy) and area total·s; the outline,
                # which only translates with the offset, made once per scale (shape_outline adds the centre last).
                r = float(np.sqrt(total * s / k))
                outline = shape_outline(shape, 0.0, 0.0, r)
                for dy in (-0.5, 0.0, 0.5):
                    for dx in (-0.5, 0.0, 0.5):
                        t = raster([outline + [ax + dx + ox * r, ay + dy + oy * r]], side)
                        for tb in (t, _blur(t)):
                            score = 1.0 - np.abs(alpha - tb).sum() / max(alpha_sum + tb.sum(), 1e-6)
                            if best is None or score > best[0]:
                                best = (float(score), t > 0.5)
        out[shape] = best
    return out


# A prompt's shape is accepted when its template fits nearly as well as the best one: small shapes
# at 64 px are ambiguous (a 6-px star is round), and a defect (a melted star) changes the outline.
# The margin shrinks as the best fit gets better: a crisp 0.95 square is not a 0.90 circle.
SHAPE_MARGIN = 0.06
SHAPE_MARGIN_IMPLAUSIBLE = 0.08
SHAPE_MARGIN_SLOPE = 0.25  # margin ≤ slope × (1 − best fit)


def _unexplained(mask: np.ndarray, tmpl: np.ndarray, area: int) -> tuple[bool, np.ndarray]:
    """Is the object implausible under this template, and where (extra blobs, missing parts)?"""
    extra = mask & ~ndimage.binary_dilation(tmpl, iterations=1)
    missing = tmpl & ~ndimage.binary_dilation(mask, iterations=1)
    unexplained = extra | missing
    blobs, nb = ndimage.label(unexplained)
    sizes = ndimage.sum(unexplained, blobs, range(1, nb + 1)) if nb else []
    bad = (max(sizes, default=0) >= UNEXPLAINED_BLOB) or (unexplained.sum() >= UNEXPLAINED_SHARE * area)
    if not bad:
        return False, np.zeros_like(mask)
    big = [i + 1 for i, sz in enumerate(sizes) if sz >= 3]
    region = np.isin(blobs, big) if big else unexplained
    return True, ndimage.binary_dilation(region, iterations=1)


def parse_scene(image, expected_shape: str | None = None) -> tuple[dict, list[JudgedObject], np.ndarray]:
    """Parse an image of ShapesWorld: (scene dict, objects, implausibility map).

    With `expected_shape` (the prompt's), an object takes that shape when it fits nearly as well
    as the best shape (see SHAPE_MARGIN)."""
    img = load_image(image, max_side=None) if not isinstance(image, Image.Image) else image.convert("RGB")
    if img.size != (64, 64):
        img = img.resize((64, 64), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.float64)
    background, contrast, bg_rgb = _background(arr)
    # Foreground: far from the background colour; the cut sits halfway to the nearest object colour.
    palette = _palette(contrast, COLORS)
    gap = min(np.linalg.norm(bg_rgb - rgb) for rgb in palette.values())
    dist = np.linalg.norm(arr - bg_rgb, axis=-1)
    fg = dist > max(0.45 * gap, 18.0)
    fg = ndimage.binary_opening(fg, structure=np.ones((2, 2)))
    labels, n = ndimage.label(fg)
    objects: list[JudgedObject] = []
    implausibility = np.zeros(arr.shape[:2], np.float32)
    for k in range(1, n + 1):
        mask = labels == k
        area = int(mask.sum())
        if area < MIN_OBJECT_AREA:
            continue
        y, x = ndimage.center_of_mass(mask)
        core = ndimage.binary_erosion(mask, iterations=1)
        pixels = arr[core if core.sum() >= 4 else mask]
        median = np.median(pixels, axis=0)
        color = min(palette, key=lambda c: np.linalg.norm(median - palette[c]))
        # Soft coverage of this object: how far each pixel moved from the background toward the
        # object's colour (anti-aliasing and blur make edges partial), within the object's reach.
        axis = median - bg_rgb
        near = ndimage.binary_dilation(mask, iterations=2) & ((labels == 0) | mask)
        alpha = np.clip(((arr - bg_rgb) @ axis) / max(float(axis @ axis), 1e-6), 0, 1) * near
        fits = _soft_fits(alpha, mask)
        shape = max(fits, key=lambda sh: fits[sh][0])
        bad, region = _unexplained(mask, fits[shape][1], area)
        if expected_shape in fits and expected_shape != shape:
            margin = min(SHAPE_MARGIN_IMPLAUSIBLE if bad else SHAPE_MARGIN,
                         SHAPE_MARGIN_SLOPE * (1.0 - fits[shape][0]))
            if fits[expected_shape][0] >= fits[shape][0] - margin:
                shape = expected_shape
                bad, region = _unexplained(mask, fits[shape][1], area)
        implausibility[region] = 1.0
        objects.append(JudgedObject(color, shape, float(x), float(y), area, fits[shape][0], bool(bad)))
    scene = {"background": background, "contrast": round(contrast, 2), "objects": [o.to_dict() for o in objects]}
    return scene, objects, implausibility


def judge(image, prompt: str | PromptSpec) -> Verdict:
    """Judge an image against a ShapesWorld prompt: alignment, misaligned words, implausible regions."""
    spec = prompt if isinstance(prompt, PromptSpec) else parse_prompt(prompt)
    if spec is None:
        raise ValueError(f"not a ShapesWorld prompt: {prompt!r} (e.g. 'two red circles on the grass')")
    scene, objects, implausibility = parse_scene(image, expected_shape=spec.shape)
    words, reasons = [], []
    noun = PLURALS[spec.shape] if spec.n_objects > 1 else spec.shape
    if len(objects) != spec.n_objects:
        words.append(spec.count_word)
        reasons.append(f"{len(objects)} objects, the prompt asks for {spec.n_objects}")
    if spec.color and any(o.color != spec.color for o in objects):
        words.append(spec.color)
        reasons.append(f"colours {sorted({o.color for o in objects})}, the prompt asks for {spec.color}")
    if any(o.shape != spec.shape for o in objects):
        words.append(noun)
        reasons.append(f"shapes {sorted({o.shape for o in objects})}, the prompt asks for {spec.shape}")
    if spec.background and scene["background"] != spec.background:
        words += BACKGROUNDS[spec.background]["words"]
        reasons.append(f"background {scene['background']}, the prompt asks for {spec.background}")
    if not objects:
        reasons.append("no object found")
    return Verdict(aligned=not words, misaligned_words=words, implausibility=implausibility, scene=scene, reasons=reasons)


# --- how far the judge can be trusted ----------------------------------------------------------

def degrade(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Blur, noise and JPEG compression, like a diffusion model's output."""
    import io

    arr = np.asarray(image, dtype=np.float64)
    arr = ndimage.gaussian_filter(arr, sigma=(rng.uniform(0.3, 1.0), rng.uniform(0.3, 1.0), 0))
    arr = arr + rng.normal(0, rng.uniform(3, 8), size=arr.shape)
    img = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "RGB")
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=int(rng.integers(40, 81)))
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def evaluate_judge(n: int = 500, seed: int = 0, degraded: bool = False) -> dict:
    """Accuracy of each verdict on rendered ShapesWorld records with known scenes and defects."""
    rng = np.random.default_rng([seed, 1])
    hits = {"aligned": 0, "misaligned_words": 0, "implausible": 0, "count": 0, "background": 0}
    by_kind: dict[str, list[int]] = {}
    for i in range(n):
        s = generate_sample(i, seed)
        img = s.image()
        if degraded:
            img = degrade(img, rng)
        v = judge(img, s.spec)
        mis = [d for d in s.defects if d.type == "misalignment"]
        gt_words = sorted({w for d in mis for w in d.words})
        hits["aligned"] += v.aligned == (not mis)
        hits["misaligned_words"] += sorted(set(v.misaligned_words)) == gt_words
        hits["implausible"] += v.implausible == any(d.type == "implausibility" for d in s.defects)
        hits["count"] += len(v.scene["objects"]) == len(s.scene.objects)
        hits["background"] += v.scene["background"] == s.scene.background
        kinds = [d.kind for d in s.defects] or ["clean"]
        for k in kinds:
            by_kind.setdefault(k, []).append(int(v.aligned == (not mis)))
    return {
        "records": n, "seed": seed, "degraded": degraded,
        "accuracy": {k: round(v / n, 4) for k, v in hits.items()},
        "aligned_accuracy_by_defect": {k: round(float(np.mean(v)), 4) for k, v in sorted(by_kind.items())},
    }
