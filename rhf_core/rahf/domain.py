"""Is an image like the images a RAHF checkpoint was trained on? (issue #19, "honest pages")

A predictor scores anything it is given: the embedded ShapesWorld checkpoint gave a photograph of a
pagoda plausibility 0.16 and flagged six of its eight correct prompt words, and nothing said that
this number means nothing. This module lets a checkpoint say which images it knows.

What is compared. The feature of an image is the mean and the standard deviation, over the patch
tokens, of the predictor's *own* image encoder (`model.vision`): every head reads these tokens, so
an image whose tokens are unlike any training image's is one the heads were never fitted on. (A
generic encoder would measure "unlike ShapesWorld" in someone else's terms; pixels would flag a
harmless change of brightness.) The two statistics together keep both what is in the image (mean)
and how varied it is (spread: a photograph's tokens differ from patch to patch far more).

How far is far. The training domain is one or more *parts* (for the embedded checkpoint: ShapesWorld
renders, and the embedded generator's samples, which the app feeds it). Each part's features are
summarised by a Gaussian with a low-rank-plus-isotropic covariance (probabilistic PCA, Tipping &
Bishop 1999): the mean, the top `rank` principal directions with their variances, and one variance
for the rest; the distance is the Mahalanobis distance under it. Storing k directions (not a full
covariance) keeps the file small for a 192-d scratch encoder and a 1,536-d ViT alike, and the one
residual variance keeps directions the fitting images never moved along from being infinitely far.
Each part's threshold comes from data: a quantile (default 99.5%) of the distances of *held-out*
images of that part, not those its Gaussian was fitted on (their distances are biased low). An image
is in the domain when it is within the threshold of any part. Why parts, not one Gaussian over
everything: the generator's failures (blobs, empty scenes, washed-out colours) lie far from the
renders in their own direction, and one Gaussian wide enough to hold them also held photographs. Why
the renders part also holds mildly blurred and faded copies (`generation_jitter`): that is how the
generator's good samples differ from renders. (While choosing this design, on 42 photographs, i.e.
scikit-learn's china.jpg and flower.jpg whole and 20 crops each, and 200 generator samples: one
Gaussian over renders and 400 generator samples flagged 36% of the photographs at rank 32; renders
alone, without jittered copies, flagged 13-20% of the generator samples.)

Files, in the checkpoint folder beside config.json: `domain.safetensors` (per part: mean,
directions, variances, residual; and a probe: the features of a fixed test pattern, so statistics
fitted for other weights are noticed rather than trusted), with the name, description and each
part's threshold in its metadata; `domain.json`, the measured false-alarm and detection rates and
what they were measured on. A checkpoint without statistics is "unknown": the pages then say only what it was trained on.

    python -m rhf_core.rahf.domain fit       # refit the embedded checkpoint's statistics
    python -m rhf_core.rahf.domain measure   # false alarms and detection into domain.json
"""

from __future__ import annotations

import argparse
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save

from rhf_core.cache import atomic_write_bytes, atomic_write_text, json_text
from rhf_core.errors import InvalidArgumentError, RHFError
from rhf_core.images import load_image
from rhf_core.rahf.predictor import DEFAULT_CHECKPOINT, images_to_tensor

STATS_FILE = "domain.safetensors"
RATES_FILE = "domain.json"
DEFAULT_QUANTILE = 0.995
DEFAULT_RANK = 32
PUBLISHED_WEIGHTS_GUIDE = "docs/guides/published-weights.md"
# What the embedded checkpoint was trained on, in the words the pages show.
SHAPESWORLD = {"name": "shapesworld", "description": "ShapesWorld renders"}
UNKNOWN = {"name": "unknown", "description": "not recorded with this checkpoint"}
PROBE_SIZE = 64
# Probe features may differ by float rounding across devices and batch sizes; other weights move them far more.
PROBE_TOLERANCE = 1e-3


class DomainStatsError(RHFError, ValueError):
    """A domain statistics file that cannot be read, or too few images to fit statistics on."""


@dataclass
class DomainPart:
    """One part of a training domain: a low-rank-plus-isotropic Gaussian over features and its threshold."""

    name: str
    mean: np.ndarray  # (d,)
    components: np.ndarray  # (k, d) orthonormal principal directions
    variances: np.ndarray  # (k,) variance along each direction
    residual: float  # variance along every other direction
    threshold: float  # distance above which an image is outside this part
    quantile: float  # the held-out quantile the threshold is
    fitted_on: str  # what the Gaussian and the threshold were fitted on

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each row of `features` (N, d) under the Gaussian."""
        z = np.asarray(features, np.float64) - self.mean  # (N, d)
        along = z @ self.components.T  # (N, k)
        rest = np.maximum((z * z).sum(1) - (along * along).sum(1), 0.0)
        return np.sqrt((along * along / self.variances).sum(1) + rest / self.residual)


@dataclass
class DomainStats:
    name: str
    description: str
    parts: list[DomainPart]
    probe: np.ndarray  # (d,) features of `probe_image()` under the weights these were fitted for

    def nearest(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each row: the index of the part it is relatively nearest (distance / threshold), and that ratio."""
        ratios = np.stack([p.distance(features) / p.threshold for p in self.parts], 1)  # (N, parts)
        best = ratios.argmin(1)
        return best, ratios[np.arange(len(best)), best]


@dataclass
class DomainCheck:
    """One image against a predictor's training domain."""

    status: str  # "in", "out" or "unknown" (no usable statistics)
    domain: dict  # {"name", "description"}: what the predictor was trained on
    distance: float | None  # to the nearest part
    threshold: float | None  # of that part
    part: str | None  # its name
    message: str  # what the pages show: a warning for "out", the training domain otherwise

    @property
    def in_domain(self) -> bool | None:
        return None if self.status == "unknown" else self.status == "in"


# --- features --------------------------------------------------------------------------------

def probe_image() -> Image.Image:
    """A fixed colour pattern: its features identify the image encoder the statistics were fitted with."""
    yy, xx = np.mgrid[0:PROBE_SIZE, 0:PROBE_SIZE] / PROBE_SIZE
    rgb = np.stack([xx, yy, 0.5 + 0.5 * np.sin(8 * np.pi * xx * yy)], -1)
    return Image.fromarray((rgb * 255).astype(np.uint8))


def as_rgb(image, index: int) -> Image.Image:
    """A PIL image, path or bytes, decoded as the predictor does (load_image; a PIL image keeps its size)."""
    if isinstance(image, Image.Image):
        return load_image(image, max_side=None, name=f"image {index + 1}")
    return load_image(image, name=None if isinstance(image, (str, Path)) else f"image {index + 1}")


@torch.no_grad()
def image_features(predictor, images: Sequence, batch_size: int = 64) -> np.ndarray:
    """(N, 2·D) float64: mean and standard deviation over patch tokens of the predictor's image encoder."""
    images = list(images)
    out = []
    for start in range(0, len(images), batch_size):
        batch = [as_rgb(im, start + i) for i, im in enumerate(images[start:start + batch_size])]
        pixels = images_to_tensor(batch, predictor.config.image_size).to(predictor.device)
        tokens = predictor.model.vision(pixels).float()  # (B, N, D)
        out.append(torch.cat([tokens.mean(1), tokens.std(1)], -1).cpu().numpy())
    return np.concatenate(out).astype(np.float64) if out else np.zeros((0, 0))


# --- fitting, saving, loading ----------------------------------------------------------------

def fit_part(name: str, features: np.ndarray, held_out: np.ndarray, quantile: float = DEFAULT_QUANTILE,
             rank: int = DEFAULT_RANK, fitted_on: str = "") -> DomainPart:
    """The Gaussian on `features` (N, d), the threshold: the `quantile` of `held_out`'s distances (see the module doc)."""
    if not 0.5 <= quantile < 1:
        raise InvalidArgumentError(f"quantile must be in [0.5, 1), got {quantile!r}")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise InvalidArgumentError(f"rank must be a whole number ≥ 1, got {rank!r}")
    features, held_out = np.asarray(features, np.float64), np.asarray(held_out, np.float64)
    if features.ndim != 2 or len(features) < 2 * rank or len(held_out) < 20:
        raise DomainStatsError(f"{name}: need at least {2 * rank} images to fit and 20 held out, got "
                               f"{len(features)} and {len(held_out)}")
    if not (np.isfinite(features).all() and np.isfinite(held_out).all()):
        raise DomainStatsError(f"{name}: the image features are not finite")
    mean = features.mean(0)
    _, sing, vt = np.linalg.svd(features - mean, full_matrices=False)
    var = sing ** 2 / (len(features) - 1)
    k = min(rank, len(var) - 1)
    floor = max(float(var[0]) * 1e-6, 1e-12)  # a direction no image moved along must not divide by zero
    part = DomainPart(name, mean, vt[:k], np.maximum(var[:k], floor), float(max(var[k:].mean(), floor)),
                      threshold=1.0, quantile=float(quantile), fitted_on=fitted_on)
    part.threshold = float(np.quantile(part.distance(held_out), quantile))
    return part


def fit_domain(predictor, parts: dict[str, tuple[Sequence, Sequence]], name: str, description: str,
               fitted_on: dict[str, str] | None = None, quantile: float | dict[str, float] = DEFAULT_QUANTILE,
               rank: int = DEFAULT_RANK) -> DomainStats:
    """Statistics of a predictor's training domain: `parts` maps a part's name to (images to fit on,
    held-out images for its threshold), both from the training domain and not overlapping. `quantile`:
    one for every part, or a part's name → its quantile (others get DEFAULT_QUANTILE)."""
    if not parts:
        raise InvalidArgumentError("a domain needs at least one part: {name: (images, held_out)}")
    q = quantile if isinstance(quantile, dict) else {part: quantile for part in parts}
    fitted = [fit_part(part, image_features(predictor, fit), image_features(predictor, held),
                       q.get(part, DEFAULT_QUANTILE), rank, (fitted_on or {}).get(part, ""))
              for part, (fit, held) in parts.items()]
    return DomainStats(name, description, fitted, image_features(predictor, [probe_image()])[0])


def save_domain(stats: DomainStats, directory: str | Path) -> Path:
    """Write `domain.safetensors` into a checkpoint folder (atomically)."""
    path = Path(directory) / STATS_FILE
    tensors = {"probe": stats.probe}
    for i, p in enumerate(stats.parts):
        tensors |= {f"{i}.mean": p.mean, f"{i}.components": p.components, f"{i}.variances": p.variances,
                    f"{i}.residual": np.array([p.residual])}
    meta = {"name": stats.name, "description": stats.description, "rhf": "rahf-domain",
            "parts": json.dumps([{"name": p.name, "threshold": p.threshold, "quantile": p.quantile,
                                  "fitted_on": p.fitted_on} for p in stats.parts])}
    atomic_write_bytes(path, save({k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}, metadata=meta))
    return path


def load_domain(directory: str | Path) -> DomainStats | None:
    """The statistics in a checkpoint folder; None when it has none. Raises DomainStatsError when unreadable."""
    path = Path(directory) / STATS_FILE
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
        t = {k: v.astype(np.float64) for k, v in load_file(str(path)).items()}
        parts = [DomainPart(p["name"], t[f"{i}.mean"], t[f"{i}.components"], t[f"{i}.variances"],
                            float(t[f"{i}.residual"][0]), float(p["threshold"]), float(p["quantile"]),
                            str(p.get("fitted_on", ""))) for i, p in enumerate(json.loads(meta["parts"]))]
        stats = DomainStats(str(meta["name"]), str(meta["description"]), parts, t["probe"])
    except (SafetensorError, OSError, KeyError, ValueError, TypeError, IndexError) as e:
        raise DomainStatsError(f"{path.name} is not readable domain statistics ({e})") from None
    d = stats.probe.shape[0] if stats.probe.ndim == 1 else -1
    for p in stats.parts:
        if (d < 1 or p.mean.shape != (d,) or p.components.ndim != 2 or p.components.shape[1:] != (d,)
                or p.variances.shape != p.components.shape[:1] or not (p.variances > 0).all()
                or not p.residual > 0 or not (np.isfinite(p.threshold) and p.threshold > 0)):
            raise DomainStatsError(f"{path.name} holds inconsistent domain statistics (part {p.name!r})")
    if not stats.parts:
        raise DomainStatsError(f"{path.name} holds no domain parts")
    return stats


# --- checking ---------------------------------------------------------------------------------

def predictor_domain(predictor, stats: DomainStats | None = None) -> dict:
    """What the predictor was trained on: its own `domain` record if it has one, else its statistics'."""
    declared = getattr(predictor, "domain", None)
    if isinstance(declared, dict) and declared.get("name"):
        return {"name": str(declared["name"]), "description": str(declared.get("description") or declared["name"])}
    if stats is not None:
        return {"name": stats.name, "description": stats.description}
    return dict(UNKNOWN)


def out_of_domain_message(domain: dict) -> str:
    return (f"This image looks unlike the images this predictor was trained on ({domain['description']}). "
            f"Its scores and heatmaps are not meaningful here. Use the published RAHF weights "
            f"({PUBLISHED_WEIGHTS_GUIDE}) or your own checkpoint.")


def trained_on_message(domain: dict) -> str:
    if domain["name"] == UNKNOWN["name"]:
        return "This checkpoint does not record what it was trained on."
    return f"This predictor was trained on {domain['description']}."


def usable_stats(predictor) -> tuple[DomainStats | None, str]:
    """The predictor's statistics if they exist and were fitted for its weights; otherwise None and why not."""
    if getattr(predictor, "path", None) is None:
        return None, "an unsaved predictor has no domain statistics"
    try:
        stats = load_domain(predictor.path)
    except DomainStatsError as e:
        return None, str(e)
    if stats is None:
        return None, "this checkpoint has no domain statistics"
    probe = image_features(predictor, [probe_image()])[0]
    if probe.shape != stats.probe.shape or not np.allclose(probe, stats.probe, atol=PROBE_TOLERANCE,
                                                           rtol=PROBE_TOLERANCE):
        return None, ("its domain statistics were fitted for other weights (refit them: python -m "
                      "rhf_core.rahf.domain fit --checkpoint …)")
    return stats, ""


def check_domain(predictor, images: Sequence, stats: DomainStats | None = None) -> list[DomainCheck]:
    """One DomainCheck per image. Without usable statistics every check is "unknown": its message says
    what the predictor was trained on (when recorded) and why nothing was checked; it never claims an
    image is in the domain."""
    images = list(images)
    reason = ""
    if stats is None:
        stats, reason = usable_stats(predictor)
    domain = predictor_domain(predictor, stats)
    if stats is None:
        note = f"{trained_on_message(domain)} No domain check: {reason}."
        return [DomainCheck("unknown", domain, None, None, None, note) for _ in images]
    if not images:
        return []
    feats = image_features(predictor, images)
    best, _ = stats.nearest(feats)
    checks = []
    for i, b in enumerate(best):
        part = stats.parts[int(b)]
        dist = float(part.distance(feats[i:i + 1])[0])
        out = dist > part.threshold
        checks.append(DomainCheck("out" if out else "in", domain, dist, part.threshold, part.name,
                                  out_of_domain_message(domain) if out else trained_on_message(domain)))
    return checks


# --- the embedded checkpoint: refit and measure -------------------------------------------------

def shapes_renders(seed: int, split: str, n: int) -> list[Image.Image]:
    """The first `n` renders of `split` in the ShapesWorld world `seed` (the training world is seed 0)."""
    from rhf_core.shapes.dataset import generate_sample

    out, i = [], 0
    while len(out) < n:
        sample = generate_sample(i, seed=seed)
        if sample.split == split:
            out.append(sample.image())
        i += 1
    return out


def generation_jitter(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A render softened the way the embedded generator's samples differ from renders: blur (radius
    0–1.5 px), lower contrast and saturation, a little brightness shift."""
    image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.0, 1.5))))
    image = ImageEnhance.Contrast(image).enhance(float(rng.uniform(0.6, 1.1)))
    image = ImageEnhance.Color(image).enhance(float(rng.uniform(0.6, 1.1)))
    return ImageEnhance.Brightness(image).enhance(float(rng.uniform(0.85, 1.15)))


def generator_samples(generator, n: int, seed: int, progress: Callable[[int, int], None] | None = None
                      ) -> tuple[list[Image.Image], list[str]]:
    """One sample for each of `n` distinct ShapesWorld prompts (drawn with `seed`), with the app's sampling
    settings (25 steps, guidance 7.5), and the prompts."""
    from rhf_core.shapes.grammar import all_prompts

    prompts = [p.text for p in all_prompts()]
    chosen = [prompts[i] for i in np.random.default_rng(seed).permutation(len(prompts))[:n]]
    images = generator.generate(chosen, n=1, seed=seed, steps=25, guidance=7.5, progress=progress)
    return [row[0] for row in images], chosen


# The generator part's threshold is its 95th held-out percentile, not 99.5th: its last 5% are the
# generator's worst failures, as far from the renders as photographs are (at 99.5% the whole
# china.jpg photograph passed as a generator sample; 27% of 22 photographs and crops were flagged).
# A sample outside it can still be within the renders part; domain.json has the rate that results.
QUANTILES = {"renders": DEFAULT_QUANTILE, "generator samples": 0.95}


def refit_embedded(checkpoint: str | Path = DEFAULT_CHECKPOINT, generator: str | None = None,
                   log: Callable[[str], None] = print) -> DomainStats:
    """Refit `domain.safetensors` of a ShapesWorld checkpoint: renders of its training world (seed 0;
    2,000 train-split renders and 2,000 jittered copies to fit, 400 dev-split renders and 400 jittered
    copies held out) and the generator's samples (all prompts at seed 100 to fit, 300 prompts at seed 200
    held out). The measurement (`measure_embedded`) uses neither."""
    # The generator (diffusers) is imported here: only refitting and measuring need it.
    from rhf_core.rahf.predictor import load_rahf
    from rhf_core.t2i import load_generator

    predictor, gen = load_rahf(checkpoint), load_generator(generator)
    rng = np.random.default_rng(0)
    log("rendering ShapesWorld (seed 0, train and dev splits)…")
    train, dev = shapes_renders(0, "train", 2000), shapes_renders(0, "dev", 400)
    train += [generation_jitter(im, rng) for im in train]
    dev += [generation_jitter(im, rng) for im in dev]
    log(f"sampling {gen.name}…")
    fit_samples, _ = generator_samples(gen, 10_000, seed=100)  # every prompt once
    held_samples, _ = generator_samples(gen, 300, seed=200)
    stats = fit_domain(predictor, {"renders": (train, dev), "generator samples": (fit_samples, held_samples)},
                       SHAPESWORLD["name"], SHAPESWORLD["description"], quantile=QUANTILES, fitted_on={
                           "renders": "shapes seed 0: first 2,000 train-split renders + a generation_jitter copy "
                                      "of each; threshold on the first 400 dev-split renders + jittered copies",
                           "generator samples": f"{gen.name}: one sample per prompt ({len(fit_samples)}) at seed "
                                                f"100; threshold: 95th percentile on 300 prompts at seed 200"})
    save_domain(stats, checkpoint)
    log(f"wrote {Path(checkpoint) / STATS_FILE}: " + ", ".join(f"{p.name} threshold {p.threshold:.2f}"
                                                               for p in stats.parts))
    return stats


def procedural_photographs(n: int, seed: int = 0, size: int = 256) -> list[Image.Image]:
    """Natural-looking images without a camera, JPEG-compressed like photographs: colour fields with a
    1/f amplitude spectrum (the spectrum of natural images, Field 1987), and sky-like gradients with
    texture. A stand-in where no photographs are at hand; reported apart from real ones."""
    rng = np.random.default_rng(seed)
    fy, fx = np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size), indexing="ij")
    radius = np.maximum(np.hypot(fx, fy), 1.0 / size)
    out = []
    for i in range(n):
        alpha = rng.uniform(0.8, 1.4)
        spectrum = (rng.normal(size=(3, size, size)) + 1j * rng.normal(size=(3, size, size))) / radius ** alpha
        field = np.real(np.fft.ifft2(spectrum)).transpose(1, 2, 0)  # (S, S, 3)
        field = (field - field.mean((0, 1))) / field.std((0, 1))
        base = rng.uniform(40, 215, size=3)
        if i % 2:  # a gradient (sky, wall, table top) under fainter texture
            ramp = np.linspace(-1, 1, size)[:, None, None] * rng.uniform(20, 60, size=3)
            img = base + ramp + field * rng.uniform(6, 20)
        else:
            img = base + field * rng.uniform(25, 50)
        buf = io.BytesIO()
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=int(rng.integers(70, 92)))
        out.append(Image.open(buf).convert("RGB"))
    return out


def photo_crops(paths: Sequence[str | Path], crops: int = 10, seed: int = 0) -> list[Image.Image]:
    """Each photograph whole and `crops` random square crops of it (25–100% of its shorter side)."""
    rng = np.random.default_rng(seed)
    out = []
    for path in paths:
        photo = load_image(path)
        out.append(photo)
        w, h = photo.size
        for _ in range(crops):
            side = int(rng.uniform(0.25, 1.0) * min(w, h))
            x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
            out.append(photo.crop((x, y, x + side, y + side)))
    return out


def flagged(predictor, stats: DomainStats, images: Sequence, what: str) -> dict:
    """How many of `images` a check flags, with the spread of their relative distances."""
    _, ratio = stats.nearest(image_features(predictor, images))
    return {"data": what, "n": len(ratio), "flagged": int((ratio > 1).sum()), "rate": round(float((ratio > 1).mean()), 4),
            "distance_over_threshold": {q: round(float(np.quantile(ratio, v)), 3)
                                        for q, v in (("min", 0), ("median", 0.5), ("max", 1))}}


def measure_embedded(checkpoint: str | Path = DEFAULT_CHECKPOINT, generator: str | None = None,
                     photos: Sequence[str | Path] = (), screenshots: Sequence[str | Path] = (), n: int = 200,
                     log: Callable[[str], None] = print) -> dict:
    """False alarms on `n` ShapesWorld test renders (world seed 1, as metrics.json) and `n` generator
    samples (seed 1, distinct prompts); detection on photographs (whole and cropped), procedural
    natural-like images and screenshots. Written to domain.json beside the statistics."""
    from rhf_core.rahf.predictor import load_rahf
    from rhf_core.t2i import load_generator

    predictor, gen = load_rahf(checkpoint), load_generator(generator)
    stats, why = usable_stats(predictor)
    if stats is None:
        raise DomainStatsError(f"nothing to measure: {why}")
    log("measuring false alarms…")
    samples, _ = generator_samples(gen, n, seed=1)
    result = {
        "checkpoint": Path(checkpoint).name,
        "command": "python -m rhf_core.rahf.domain measure",
        "parts": [{"name": p.name, "threshold": round(p.threshold, 3), "quantile": p.quantile,
                   "fitted_on": p.fitted_on} for p in stats.parts],
        "false_alarms": {
            "shapesworld_test_renders": flagged(predictor, stats, shapes_renders(1, "test", n),
                                                f"shapes seed 1: the first {n} test-split renders"),
            "generator_samples": flagged(predictor, stats, samples,
                                         f"{gen.name}: {n} distinct prompts, one sample each at seed 1, 25 steps"),
        },
        "detection": {"procedural_photographs": flagged(predictor, stats, procedural_photographs(100),
                                                        "100 procedural_photographs(seed 0): 1/f colour fields "
                                                        "and textured gradients, JPEG")},
    }
    if photos:
        result["detection"]["photographs"] = flagged(
            predictor, stats, photo_crops(photos), f"{len(photos)} photographs ({', '.join(Path(p).name for p in photos)}), "
                                                   "each whole and 10 random square crops (25-100% of the short side)")
    if screenshots:
        result["detection"]["screenshots"] = flagged(predictor, stats, [load_image(p) for p in screenshots],
                                                     f"{len(screenshots)} screenshots of this app's pages")
    atomic_write_text(Path(checkpoint) / RATES_FILE, json_text(result))
    log(json.dumps(result, indent=2))
    return result


def default_photos() -> list[Path]:
    """scikit-learn's two bundled photographs (a temple, a flower), when scikit-learn is installed (dev)."""
    try:
        import sklearn.datasets  # a dev dependency, imported only to find its files
    except ImportError:
        return []
    folder = Path(sklearn.datasets.__file__).parent / "images"
    return sorted(folder.glob("*.jpg"))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rhf_core.rahf.domain", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("fit", "refit domain.safetensors of a ShapesWorld checkpoint"),
                       ("measure", "false alarms and detection rates into domain.json")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
        p.add_argument("--generator", default=None, help="diffusers pipeline (default: the embedded one)")
        if name == "measure":
            p.add_argument("--photos", nargs="*", default=None, help="photographs (default: scikit-learn's two)")
            p.add_argument("--screenshots", nargs="*", default=[], help="screenshots (e.g. tests/artifacts/*.png)")
    args = parser.parse_args(argv)
    if args.command == "fit":
        refit_embedded(args.checkpoint, args.generator)
    else:
        photos = default_photos() if args.photos is None else [Path(p) for p in args.photos]
        measure_embedded(args.checkpoint, args.generator, photos, args.screenshots)


if __name__ == "__main__":
    main()
