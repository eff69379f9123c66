"""ShapesWorld scenes: sampling, planted defects with exact pixel regions, aesthetics, rendering.

A `Scene` is what the image shows (background + objects, each an outline polygon). Sampling starts
from the scene the prompt asks for, plants *misalignment* defects (wrong colour, wrong shape, extra
or missing object, wrong background) and *implausibility* defects (melted shape, extra appendage,
missing bite, fused twin, smear), each with the exact boolean pixel region it occupies, and draws
aesthetic factors (contrast, clutter, composition, blur, noise). Rendering is anti-aliased by
supersampling and deterministic for a seed.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from rhf_core.shapes.grammar import (
    BACKGROUNDS,
    COLORS,
    PLURALS,
    SHAPES,
    UNSEEN_BACKGROUND_SHAPE,
    UNSEEN_COLOR_SHAPE,
    PromptSpec,
)

SUPERSAMPLE = 4
IMPLAUSIBILITY_KINDS = ("melted", "appendage", "bite", "fused", "smear")
MISALIGNMENT_KINDS = ("wrong_color", "wrong_shape", "extra_object", "missing_object", "wrong_background")


@dataclass
class ShapeObject:
    shape: str
    color: str
    x: float  # centre, pixels
    y: float
    r: float  # circumradius, pixels
    # Implausibility defect drawn on this object (None = clean) and its parameters.
    defect: str | None = None
    defect_params: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = {"shape": self.shape, "color": self.color, "x": round(self.x, 2), "y": round(self.y, 2), "r": round(self.r, 2)}
        if self.defect:
            d["defect"] = self.defect
        return d


@dataclass
class Defect:
    """A planted defect: its type, kind, the prompt words it contradicts and its pixel region."""

    type: str  # "implausibility" or "misalignment"
    kind: str
    words: list[str]
    region: np.ndarray  # bool H×W
    severity: float  # Likert points it costs the matching score

    def to_dict(self) -> dict:
        ys, xs = np.nonzero(self.region)
        bbox = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1] if len(xs) else None
        return {
            "type": self.type,
            "kind": self.kind,
            "words": list(self.words),
            "bbox": bbox,
            "area": int(self.region.sum()),
            "severity": round(float(self.severity), 3),
        }


@dataclass
class Aesthetics:
    contrast: float  # 1 = full contrast
    clutter: float  # 0 = clean background, 1 = many specks
    composition: float  # 1 = objects centred and clear of the borders
    blur: float  # Gaussian σ in pixels
    noise: float  # Gaussian noise σ in 0-255 units

    @property
    def quality(self) -> float:
        """Latent aesthetic quality in [0, 1] that annotators rate (noisily)."""
        contrast_pen = (1.0 - self.contrast) / 0.45
        q = (
            1.0
            - 0.30 * contrast_pen
            - 0.20 * self.clutter
            - 0.25 * (1.0 - self.composition)
            - 0.15 * min(self.blur, 1.0)
            - 0.10 * min(self.noise / 10.0, 1.0)
        )
        return float(np.clip(q, 0.0, 1.0))

    def to_dict(self) -> dict:
        return {k: round(float(v), 3) for k, v in self.__dict__.items()} | {"quality": round(self.quality, 3)}


@dataclass
class Scene:
    background: str
    objects: list[ShapeObject]
    aesthetics: Aesthetics
    size: int = 64
    texture_seed: int = 0

    def to_dict(self) -> dict:
        return {
            "background": self.background,
            "objects": [o.to_dict() for o in self.objects],
            "aesthetics": self.aesthetics.to_dict(),
            "size": self.size,
        }


# --- outlines -------------------------------------------------------------------------------

def _densify(poly: np.ndarray, n: int = 48) -> np.ndarray:
    """Resample a closed polygon to `n` points evenly spaced along its perimeter."""
    closed = np.vstack([poly, poly[:1]])
    seg = np.linalg.norm(np.diff(closed, axis=0), axis=1)
    cum = np.concatenate([[0], np.cumsum(seg)])
    t = np.linspace(0, cum[-1], n, endpoint=False)
    return np.stack([np.interp(t, cum, closed[:, 0]), np.interp(t, cum, closed[:, 1])], axis=1)


def shape_outline(shape: str, x: float, y: float, r: float) -> np.ndarray:
    """Closed outline (N×2, pixel coords) of a clean shape centred at (x, y) with circumradius r."""
    if shape == "circle":
        a = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        pts = np.stack([np.cos(a), np.sin(a)], axis=1) * r
    elif shape == "square":
        s = 0.8 * r
        pts = _densify(np.array([[-s, -s], [s, -s], [s, s], [-s, s]]))
    elif shape == "triangle":
        pts = _densify(np.array([[0, -r], [0.866 * r, 0.5 * r], [-0.866 * r, 0.5 * r]]) + [0, 0.12 * r])
    elif shape == "star":
        a = -np.pi / 2 + np.arange(10) * np.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, r, 0.5 * r)
        pts = _densify(np.stack([np.cos(a) * rad, np.sin(a) * rad], axis=1), 50)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return pts + [x, y]


def raster(polys: list[np.ndarray], size: int) -> np.ndarray:
    """Anti-aliased coverage (float32 H×W in [0, 1]) of the union of polygons."""
    ss = SUPERSAMPLE
    canvas = Image.new("L", (size * ss, size * ss), 0)
    draw = ImageDraw.Draw(canvas)
    for poly in polys:
        draw.polygon((np.asarray(poly, dtype=np.float64) * ss).ravel().tolist(), fill=255)
    # PIL's box reduction is the supersampled average, in C.
    return np.asarray(canvas.reduce(ss), dtype=np.float32) / 255.0


def _disk(x: float, y: float, r: float, n: int = 32) -> np.ndarray:
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([x + r * np.cos(a), y + r * np.sin(a)], axis=1)


# The last few objects' coverage, by geometry: sampling a scene rasterises every object for its defect
# regions and rendering it rasterises them again, a third of a record's cost (profiled: 24 gallery
# records per explorer rerun). Keyed by value, so an object changed after sampling misses; the arrays
# are read-only, so no caller can change a cached one.
COVERAGE_CACHE = 64
_COVERAGE: OrderedDict = OrderedDict()
_COVERAGE_LOCK = threading.Lock()


def object_coverage(obj: ShapeObject, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(body, clean, extra-alpha) coverage of one object with its implausibility defect applied
    (read-only arrays).

    `body` is what is drawn at full opacity, `clean` the shape without its defect, and the third
    array a partial-opacity layer (used by the smear)."""
    key = (obj.shape, obj.x, obj.y, obj.r, obj.defect, tuple(sorted(obj.defect_params.items())), size)
    with _COVERAGE_LOCK:
        hit = _COVERAGE.get(key)
        if hit is not None:
            _COVERAGE.move_to_end(key)
            return hit
    arrays = _object_coverage(obj, size)
    for a in arrays:
        a.setflags(write=False)
    with _COVERAGE_LOCK:
        _COVERAGE[key] = arrays
        while len(_COVERAGE) > COVERAGE_CACHE:
            _COVERAGE.popitem(last=False)
    return arrays


def _object_coverage(obj: ShapeObject, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    clean_poly = shape_outline(obj.shape, obj.x, obj.y, obj.r)
    clean = raster([clean_poly], size)
    faint = np.zeros_like(clean)
    p = obj.defect_params
    if obj.defect is None:
        return clean, clean, faint
    if obj.defect == "melted":
        c = np.array([obj.x, obj.y])
        d = clean_poly - c
        theta = np.arctan2(d[:, 1], d[:, 0])
        radial = 1 + p["amp"] * np.sin(p["freq"] * theta + p["phase"])
        droop = np.clip(d[:, 1] / obj.r, 0, None) * p["droop"] * obj.r
        warped = c + d * radial[:, None] + np.stack([np.zeros_like(droop), droop], axis=1)
        return raster([warped], size), clean, faint
    if obj.defect == "appendage":
        a, length, width = p["angle"], p["length"] * obj.r, p["width"] * obj.r
        u = np.array([np.cos(a), np.sin(a)])
        v = np.array([-u[1], u[0]])
        base = np.array([obj.x, obj.y]) + u * 0.5 * obj.r
        tip = np.array([obj.x, obj.y]) + u * (obj.r + length)
        limb = np.array([base + v * width / 2, tip + v * width / 3, tip - v * width / 3, base - v * width / 2])
        return raster([clean_poly, limb], size), clean, faint
    if obj.defect == "bite":
        a = p["angle"]
        bx, by = obj.x + np.cos(a) * obj.r * 0.8, obj.y + np.sin(a) * obj.r * 0.8
        bite = raster([_disk(bx, by, p["radius"] * obj.r)], size)
        return clean * (1 - bite), clean, faint
    if obj.defect == "fused":
        a = p["angle"]
        tx, ty = obj.x + np.cos(a) * obj.r * p["offset"], obj.y + np.sin(a) * obj.r * p["offset"]
        twin = shape_outline(obj.shape, tx, ty, obj.r * p["scale"])
        return raster([clean_poly, twin], size), clean, faint
    if obj.defect == "smear":
        a, length = p["angle"], p["length"] * obj.r
        u = np.array([np.cos(a), np.sin(a)])
        v = np.array([-u[1], u[0]])
        c = np.array([obj.x, obj.y])
        w = 0.8 * obj.r
        streak = np.array([c + v * w, c + u * (obj.r + length) + v * w * 0.3, c + u * (obj.r + length) - v * w * 0.3, c - v * w])
        faint = raster([streak], size) * (1 - clean) * p["alpha"]
        return clean, clean, faint
    raise ValueError(f"unknown implausibility defect {obj.defect!r}")


def implausibility_region(obj: ShapeObject, size: int, coverage=None) -> np.ndarray:
    """Exact region of an object's implausibility defect (bool H×W)."""
    body, clean, faint = coverage if coverage is not None else object_coverage(obj, size)
    if obj.defect == "melted":
        region = (body > 0.5) | (clean > 0.5)
    elif obj.defect == "bite":
        region = (clean > 0.5) & (body < 0.5)
    elif obj.defect == "smear":
        region = faint > 0.15
    else:  # appendage, fused: the part that should not be there
        region = (body > 0.5) & (clean < 0.5)
    if obj.defect != "melted":
        region = ndimage.binary_dilation(region, iterations=1)
    return region


# --- sampling --------------------------------------------------------------------------------

def _allowed_colors(shape: str) -> list[str]:
    return [c for c in COLORS if (c, shape) not in UNSEEN_COLOR_SHAPE]


def _allowed_backgrounds(shape: str) -> list[str]:
    return [b for b in BACKGROUNDS if (b, shape) not in UNSEEN_BACKGROUND_SHAPE]


def _place(rng: np.random.Generator, n: int, size: int, composition: float, taken: list[ShapeObject]) -> list[tuple]:
    """Non-overlapping (x, y, r) for n objects; low `composition` pushes them off-centre."""
    r_lo, r_hi = (0.11, 0.17) if n + len(taken) <= 2 else (0.08, 0.12)
    out: list[tuple] = []
    centre = size / 2
    spread = 0.22 + 0.2 * (1 - composition)  # of the side
    offset = (1 - composition) * 0.22 * size * rng.choice([-1, 1], size=2)
    for _ in range(n):
        for attempt in range(200):
            r = rng.uniform(r_lo, r_hi) * size
            if attempt < 150:
                x, y = centre + offset + rng.normal(0, spread * size, size=2)
            else:
                x, y = rng.uniform(r + 1, size - r - 1, size=2)
            margin = r + 1.5
            if not (margin <= x <= size - margin and margin <= y <= size - margin):
                continue
            others = [(o.x, o.y, o.r) for o in taken] + out
            if all(np.hypot(x - ox, y - oy) > r + orr + 0.22 * size * 0.5 for ox, oy, orr in others):
                out.append((x, y, r))
                break
        else:
            # Crowded: shrink and place anywhere free.
            r = r_lo * size * 0.8
            x, y = rng.uniform(r + 1, size - r - 1, size=2)
            out.append((x, y, r))
    return out


def _defect_params(kind: str, rng: np.random.Generator) -> dict:
    a = float(rng.uniform(0, 2 * np.pi))
    if kind == "melted":
        return {"amp": float(rng.uniform(0.22, 0.35)), "freq": int(rng.integers(3, 6)), "phase": a, "droop": float(rng.uniform(0.2, 0.5))}
    if kind == "appendage":
        return {"angle": a, "length": float(rng.uniform(0.8, 1.2)), "width": float(rng.uniform(0.3, 0.45))}
    if kind == "bite":
        return {"angle": a, "radius": float(rng.uniform(0.45, 0.6))}
    if kind == "fused":
        return {"angle": a, "offset": float(rng.uniform(0.9, 1.1)), "scale": float(rng.uniform(0.6, 0.75))}
    if kind == "smear":
        return {"angle": a, "length": float(rng.uniform(1.0, 1.6)), "alpha": float(rng.uniform(0.45, 0.65))}
    raise ValueError(kind)


IMPLAUSIBILITY_SEVERITY = {"melted": 1.8, "appendage": 1.5, "bite": 1.4, "fused": 1.6, "smear": 1.3}
MISALIGNMENT_SEVERITY = {"wrong_color": 1.6, "wrong_shape": 1.9, "extra_object": 1.4, "missing_object": 1.5, "wrong_background": 1.5}


def sample_scene(
    spec: PromptSpec,
    rng: np.random.Generator,
    size: int = 64,
    n_implausible: int = 0,
    n_misaligned: int = 0,
) -> tuple[Scene, list[Defect]]:
    """The scene `spec` asks for, with the requested numbers of planted defects.

    Unspecified attributes avoid held-out pairs, so a training image never shows an unseen combo.
    Returns the scene as rendered and its defects (regions at `size`)."""
    n = spec.n_objects
    color = spec.color or str(rng.choice(_allowed_colors(spec.shape)))
    background = spec.background or str(rng.choice(_allowed_backgrounds(spec.shape)))

    contrast = float(rng.uniform(0.55, 1.0)) if rng.random() < 0.5 else 1.0
    clutter = float(rng.uniform(0, 1)) if rng.random() < 0.4 else 0.0
    composition = float(rng.uniform(0.3, 1.0)) if rng.random() < 0.5 else 1.0
    blur = float(rng.uniform(0.3, 1.0)) if rng.random() < 0.3 else 0.0
    noise = float(rng.uniform(2, 10)) if rng.random() < 0.3 else 0.0

    objects = [ShapeObject(spec.shape, color, x, y, r) for x, y, r in _place(rng, n, size, composition, [])]
    defects: list[Defect] = []
    count_words = [spec.count_word]
    noun = PLURALS[spec.shape] if n > 1 else spec.shape

    # Misalignment: kinds that make sense for this prompt, at most one of each.
    kinds = ["wrong_shape", "extra_object"]
    if n >= 2:
        kinds.append("missing_object")
    if spec.color:
        kinds.append("wrong_color")
    if spec.background:
        kinds.append("wrong_background")
    chosen = [str(k) for k in rng.choice(kinds, size=min(n_misaligned, len(kinds)), replace=False)] if n_misaligned else []
    # Extra and missing object contradict each other; keep the first.
    if "extra_object" in chosen and "missing_object" in chosen:
        chosen.remove("missing_object")
    # Change the object list first, so recolouring and reshaping see the final objects.
    order = ("missing_object", "extra_object", "wrong_color", "wrong_shape", "wrong_background")
    chosen.sort(key=order.index)
    pending_regions: list[tuple[str, list[ShapeObject]]] = []
    for kind in chosen:
        sev = MISALIGNMENT_SEVERITY[kind]
        if kind in ("wrong_color", "wrong_shape"):
            targets = objects if (len(objects) == 1 or rng.random() < 0.5) else [objects[rng.integers(len(objects))]]
            for o in targets:
                if kind == "wrong_color":
                    o.color = str(rng.choice([c for c in COLORS if c != spec.color]))
                else:
                    o.shape = str(rng.choice([s for s in SHAPES if s != spec.shape]))
            pending_regions.append((kind, targets))
        elif kind == "extra_object":
            (x, y, r), = _place(rng, 1, size, 1.0, objects)
            extra = ShapeObject(objects[0].shape, objects[0].color, x, y, r)
            objects.append(extra)
            pending_regions.append((kind, [extra]))
        elif kind == "missing_object":
            gone = objects.pop(int(rng.integers(len(objects))))
            region = raster([shape_outline(gone.shape, gone.x, gone.y, gone.r)], size) > 0.3
            defects.append(Defect("misalignment", kind, count_words + [noun], region, sev))
        elif kind == "wrong_background":
            background = str(rng.choice([b for b in BACKGROUNDS if b != spec.background]))
            pending_regions.append((kind, []))

    # Implausibility: distinct objects get one defect each.
    n_imp = min(n_implausible, len(objects))
    for idx in rng.choice(len(objects), size=n_imp, replace=False) if n_imp else []:
        o = objects[int(idx)]
        o.defect = str(rng.choice(IMPLAUSIBILITY_KINDS))
        o.defect_params = _defect_params(o.defect, rng)

    scene = Scene(background, objects, Aesthetics(contrast, clutter, composition, blur, noise), size,
                  texture_seed=int(rng.integers(2**31)))

    # Regions need the final geometry (defects change outlines).
    coverage = {id(o): object_coverage(o, size) for o in objects}
    coverage_union = np.zeros((size, size), dtype=np.float32)
    for body, _, faint in coverage.values():
        coverage_union = np.maximum(coverage_union, np.maximum(body, faint))
    for kind, targets in pending_regions:
        sev = MISALIGNMENT_SEVERITY[kind]
        if kind == "wrong_background":
            words = list(BACKGROUNDS[spec.background]["words"])
            defects.append(Defect("misalignment", kind, words, coverage_union < 0.5, sev))
            continue
        region = np.zeros((size, size), dtype=bool)
        for o in targets:
            region |= coverage[id(o)][0] > 0.3
        words = {"wrong_color": [spec.color], "wrong_shape": [noun], "extra_object": count_words}[kind]
        defects.append(Defect("misalignment", kind, list(words), region, sev))
    for o in objects:
        if o.defect:
            defects.append(Defect("implausibility", o.defect, [], implausibility_region(o, size, coverage[id(o)]),
                                  IMPLAUSIBILITY_SEVERITY[o.defect]))
    return scene, defects


# --- rendering -------------------------------------------------------------------------------

def _background(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    base = np.array(BACKGROUNDS[name]["rgb"], dtype=np.float32)
    img = np.broadcast_to(base, (size, size, 3)).copy()
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if name == "grass":
        img += (rng.normal(0, 6, size=(1, size, 1)) + rng.normal(0, 3, size=(size, size, 1))) * [0.6, 1.0, 0.5]
    elif name == "night sky":
        img += (yy[..., None] * 18) * [0.3, 0.4, 1.0]
        for _ in range(int(rng.integers(0, 6))):
            sx, sy = rng.integers(0, size, size=2)
            img[sy, sx] = [190, 190, 170]
    elif name == "sand":
        img += ((np.sin(xx * 9 + yy * 4 + rng.uniform(0, 6)) * 6)[..., None])
    elif name == "ocean":
        img += ((np.sin(yy * 30 + np.sin(xx * 8) + rng.uniform(0, 6)) * 10)[..., None]) * [0.4, 0.8, 1.0]
    elif name == "snow":
        img += rng.normal(0, 2.5, size=(size, size, 1))
    return img


def render(scene: Scene) -> Image.Image:
    """Draw a scene to an RGB image (deterministic for the scene, including its texture seed)."""
    size = scene.size
    rng = np.random.default_rng(scene.texture_seed)
    img = _background(scene.background, size, rng)
    aes = scene.aesthetics
    # Clutter: tiny specks, far below the smallest object, darker or lighter than the ground.
    for _ in range(int(round(aes.clutter * 30))):
        sx, sy = rng.integers(0, size, size=2)
        img[sy, sx] = np.clip(img[sy, sx] + rng.choice([-1, 1]) * rng.uniform(40, 80), 0, 255)
    rows = np.mgrid[0:size, 0:size][0]
    for o in scene.objects:
        body, _, faint = object_coverage(o, size)
        color = np.array(COLORS[o.color], dtype=np.float32)
        shade = 1.0 - 0.12 * (rows - (o.y - o.r)) / max(2 * o.r, 1)  # gentle top light
        col = color[None, None, :] * np.clip(shade, 0.8, 1.05)[..., None]
        alpha = np.clip(body + faint, 0, 1)[..., None]
        img = img * (1 - alpha) + col * alpha
    if aes.contrast < 1.0:
        img = 128 + (img - 128) * aes.contrast
    if aes.blur > 0:
        img = ndimage.gaussian_filter(img, sigma=(aes.blur, aes.blur, 0))
    if aes.noise > 0:
        img = img + rng.normal(0, aes.noise, size=img.shape)
    return Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8), "RGB")
