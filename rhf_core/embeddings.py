"""Image embeddings of a dataset's records, their 2-D map, nearest neighbours and text search
(the explorer's Map view and "More like this").

Two sources embed the records (`image_embedder` wraps either):
- the reward's CLIP pair (`rhf_core.reward.encoders`): its image tower embeds the records, its text
  tower embeds a query, and both land in one L2-normalised space, so cosine similarity is a dot
  product and text search works;
- a RAHF checkpoint's image encoder (`RAHFModel.vision`, the tower before the prompt is fused in):
  its patch tokens, mean-pooled and L2-normalised. Mean-pooling because neither tower keeps a CLS
  token (the scratch ViT has none; `HFVision` drops it) and RAHF's heads read every patch token, so
  the mean is the summary of what the model sees; the vector depends on the image alone, not the
  prompt. RAHF has no text tower aligned with images, so text search stays CLIP-only.

Choices, and why:
- The 2-D map is PCA (axes from the covariance of at most 10,000 evenly spaced rows, then every
  row projected): a fraction of a second at 20K × 512, deterministic, and its axes mean the same on
  every visit, so it is the first view. UMAP (`umap_2d`) separates clusters better but takes far
  longer (see benchmarks/results/explorer_map.json), so it is an option, computed once per dataset
  and source and cached on disk.
- Neighbours are exact brute force in float32 chunks: 200K × 512 is 400 MB of floats and one query
  is a single matrix–vector product: 47 ms of one CPU core at 200K (process time; benchmarks/
  bench_explorer.py --map), under the ~100 ms that would call for an approximate index
  (faiss, pynndescent), which would also need minutes to build and its own cache.
- Embeddings are computed once per (dataset, its records, source weights) and cached under the
  runtime cache as `.npy`, written atomically.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import weakref
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from threadpoolctl import threadpool_limits

from rhf_core.cache import atomic_write_bytes, cache_dir, cache_key
from rhf_core.dataset import Dataset
from rhf_core.errors import RHFError
from rhf_core.rahf.common import images_to_tensor
from rhf_core.rahf.predictor import RAHF
from rhf_core.reward.encoders import Encoders

log = logging.getLogger(__name__)

FIT_ROWS = 10000  # rows the PCA axes are fitted on (see pca_2d)
CHUNK = 16384  # rows per block in the neighbour search: bounds the temporary scores to CHUNK × k
UMAP_MIN_ROWS = 10  # fewer points than this give UMAP no neighbourhood graph to lay out
UMAP_VERSION = "v1"  # bump when umap_2d's parameters change: the cached layouts go stale
LAST_FINGERPRINT: list = []  # [weak reference to a frame, its length, its hash] (see frame_fingerprint)


class EmbeddingError(RHFError, ValueError):
    """Embeddings that cannot be computed or queried (no records, a wrong shape, an empty query)."""


def frame_fingerprint(ds: Dataset) -> str:
    """A hash of the dataset's record ids in order: the cache goes stale when the records change.

    The last frame's hash is remembered (by a weak reference to the frame object): the Map view asks
    for it several times a run, and hashing 200,000 ids takes ~60 ms here."""
    frame = ds.frame
    if LAST_FINGERPRINT and LAST_FINGERPRINT[0]() is frame and LAST_FINGERPRINT[1] == len(frame):
        return LAST_FINGERPRINT[2]
    digest = hashlib.sha256("\0".join(frame["id"].astype(str).tolist()).encode()).hexdigest()[:20]
    LAST_FINGERPRINT[:] = [weakref.ref(frame), len(frame), digest]
    return digest


def weights_digest(module: torch.nn.Module) -> str:
    """A hash of every tensor's name, shape and a strided sample of at most ~4,096 of its values:
    retrained or fine-tuned weights (which move every tensor) get new embeddings, without reading
    every weight of a large backbone on each page run."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        flat = t.detach().reshape(-1)
        h.update(f"{name}{tuple(t.shape)}".encode())
        h.update(flat[::max(1, flat.numel() // 4096)].float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class ClipImageEncoder:
    """The reward's CLIP pair as a record embedder; its text tower also embeds search queries."""

    source = "clip"
    has_text = True

    def __init__(self, encoders: Encoders):
        self.encoders = encoders
        self.name = f"CLIP {encoders.name}"
        self.dim = encoders.dim
        self.input_size = int(encoders.processor.crop_size["height"])
        self.fingerprint = f"clip-{encoders.name}-" + weights_digest(encoders.model) + hashlib.sha256(
            encoders.model.config.to_json_string().encode()).hexdigest()[:8]

    def embed_images(self, images, batch_size: int = 256) -> np.ndarray:
        return self.encoders.embed_images(images, batch_size=batch_size)

    def embed_texts(self, texts) -> np.ndarray:
        return self.encoders.embed_texts(texts)


class RAHFImageEncoder:
    """A RAHF checkpoint's image tower as a record embedder: patch tokens, mean-pooled, L2-normalised
    (see the module docstring for why). Images are resized to the checkpoint's input size as
    `RAHF.predict` resizes them. No text tower shares this space, so it has no `embed_texts`."""

    source = "rahf"
    has_text = False

    def __init__(self, rahf: RAHF):
        self.rahf = rahf
        self.name = f"RAHF {rahf.name}"
        self.dim = int(rahf.model.vision.dim)
        self.input_size = int(rahf.config.image_size)
        config = json.dumps([rahf.config.to_dict()["vision"], self.input_size], sort_keys=True, default=str)
        self.fingerprint = (f"rahf-mean-patch-{weights_digest(rahf.model.vision)}"
                            f"{hashlib.sha256(config.encode()).hexdigest()[:8]}")

    @torch.no_grad()
    def embed_images(self, images, batch_size: int = 64) -> np.ndarray:
        out = []
        for s in range(0, len(images), batch_size):
            pixels = images_to_tensor(images[s:s + batch_size], self.input_size).to(self.rahf.device)
            tokens = self.rahf.model.vision(pixels)  # (B, patches, dim)
            out.append(F.normalize(tokens.float().mean(1), dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


def image_embedder(model) -> ClipImageEncoder | RAHFImageEncoder:
    """The record embedder of a CLIP pair (`Encoders`) or a RAHF checkpoint (`RAHF`); an embedder
    passes through."""
    if isinstance(model, (ClipImageEncoder, RAHFImageEncoder)):
        return model
    if isinstance(model, Encoders):
        return ClipImageEncoder(model)
    if isinstance(model, RAHF):
        return RAHFImageEncoder(model)
    raise EmbeddingError(f"cannot embed images with a {type(model).__name__}: use the reward's CLIP "
                         "encoders or a RAHF checkpoint")


def embeddings_key(ds: Dataset, model) -> str:
    return cache_key("embeddings", ds.spec, frame_fingerprint(ds), image_embedder(model).fingerprint)


def embeddings_path(ds: Dataset, model):
    """Where `image_embeddings` caches this dataset's embeddings under this encoder (may not exist yet)."""
    return cache_dir("embeddings") / f"{embeddings_key(ds, model)}.npy"


def load_cached(path: Path, shape: tuple) -> np.ndarray | None:
    """The array cached at `path` when it has `shape`; a missing, damaged or stale entry is removed
    and None returned (recomputed, never fatal)."""
    if not path.exists():
        return None
    try:
        cached = np.load(path, allow_pickle=False)
        if cached.shape == shape:
            return cached
    except (OSError, ValueError):
        pass
    path.unlink(missing_ok=True)
    return None


def save_cached(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def record_images(ds: Dataset, start: int, stop: int, size: int) -> tuple[list, list[int]]:
    """Images of records start..stop; an unreadable or image-less record gets a grey placeholder and
    its position is returned, so the map still has a point for it (drawn, never dropped silently)."""
    images, missing = [], []
    for pos in range(start, stop):
        try:
            img = ds[pos].image
        except RHFError as e:
            log.info("record %d unreadable for embedding: %s", pos, e)
            img = None
        if img is None:
            missing.append(pos)
            img = Image.new("RGB", (size, size), (128, 128, 128))
        images.append(img)
    return images, missing


def image_embeddings(ds: Dataset, model, batch_size: int = 256, use_cache: bool = True,
                     progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """(N, D) float32 L2-normalised image embeddings of every record of `ds`, in frame order, by the
    CLIP pair or RAHF checkpoint `model` (see `image_embedder`)."""
    if len(ds) == 0:
        raise EmbeddingError("the dataset has no records to embed")
    embedder = image_embedder(model)
    path = embeddings_path(ds, embedder) if use_cache else None
    cached = load_cached(path, (len(ds), embedder.dim)) if path is not None else None
    if cached is not None:
        return cached
    out = np.zeros((len(ds), embedder.dim), np.float32)
    for start in range(0, len(ds), batch_size):
        stop = min(start + batch_size, len(ds))
        images, _ = record_images(ds, start, stop, embedder.input_size)
        out[start:stop] = embedder.embed_images(images, batch_size=batch_size)
        if progress:
            progress(stop, len(ds))
    if path is not None:
        save_cached(path, out)
    return out


def pca_2d(emb: np.ndarray, fit_rows: int = FIT_ROWS) -> np.ndarray:
    """(N, 2) float32 projection on the two leading principal components.

    The axes are fitted on at most `fit_rows` evenly spaced rows (two directions of a 512-d cloud are
    well estimated from 10,000 points), then every row is projected: the cost stops growing with N
    beyond the projection itself. Signs are fixed (each axis points where its largest |loading| is
    positive) so the map does not flip between runs or machines."""
    emb = np.asarray(emb, dtype=np.float32)
    if emb.ndim != 2 or len(emb) == 0:
        raise EmbeddingError(f"embeddings must be a non-empty (N, D) array, not shape {emb.shape}")
    mean = emb.mean(0, keepdims=True)
    sample = emb[np.linspace(0, len(emb) - 1, min(len(emb), fit_rows)).astype(np.int64)] - mean
    # (D, D) is small whatever N is. One BLAS thread for the 150 small products: with OpenBLAS's threads
    # on this project's busy 2-core machine they took 1.3-3.2 s, on one thread 0.2 s (all of pca_2d, 20K).
    with threadpool_limits(limits=1, user_api="blas"):
        axes = top_eigenvectors((sample.T @ sample).astype(np.float64), 2)  # (D, 2)
    if axes.shape[1] < 2:  # one-dimensional embeddings: the second coordinate is 0
        axes = np.pad(axes, ((0, 0), (0, 2 - axes.shape[1])))
    signs = np.sign(axes[np.abs(axes).argmax(0), np.arange(axes.shape[1])])
    axes = axes * np.where(signs == 0, 1.0, signs)
    return ((emb - mean) @ axes.astype(np.float32)).astype(np.float32)


def umap_2d(emb: np.ndarray, seed: int | None = None) -> np.ndarray:
    """(N, 2) float32 UMAP layout (cosine metric, 15 neighbours, min_dist 0.1, the library's defaults
    otherwise). No seed by default: a seed makes umap-learn single-threaded (20,000 × 512 on this
    project's busy 2-core machine, one run each: 245 s seeded, 48 s unseeded; later unseeded runs
    69-155 s); the layout is computed once and cached (`dataset_umap`), so visits still see the same
    map. umap-learn is imported here, not at the top: its import and first fit compile numba code
    (25-50 s per process here), and only this option needs it."""
    emb = np.asarray(emb, dtype=np.float32)
    if emb.ndim != 2 or len(emb) < UMAP_MIN_ROWS:
        raise EmbeddingError(f"UMAP needs at least {UMAP_MIN_ROWS} embedded records, not shape {emb.shape}; "
                             "use the PCA map for fewer")
    import umap  # noqa: PLC0415 (heavy optional dependency, see above)

    reducer = umap.UMAP(n_components=2, n_neighbors=min(15, len(emb) - 1), min_dist=0.1, metric="cosine",
                        random_state=seed, n_jobs=1 if seed is not None else -1, low_memory=True)
    return reducer.fit_transform(emb).astype(np.float32)


def umap_path(ds: Dataset, model) -> Path:
    """Where `dataset_umap` caches the UMAP layout of this dataset under this encoder."""
    return cache_dir("embeddings") / f"{embeddings_key(ds, model)}-umap-{UMAP_VERSION}.npy"


def dataset_umap(ds: Dataset, model, emb: np.ndarray, use_cache: bool = True) -> np.ndarray:
    """The UMAP layout of `emb` (the dataset's embeddings by `model`): read from the cache, or
    computed once and cached beside the embeddings."""
    path = umap_path(ds, model) if use_cache else None
    cached = load_cached(path, (len(emb), 2)) if path is not None else None
    if cached is not None:
        return cached
    xy = umap_2d(emb)
    if path is not None:
        save_cached(path, xy)
    return xy


def top_eigenvectors(sym: np.ndarray, k: int, block: int = 8, iters: int = 150) -> np.ndarray:
    """The `k` leading eigenvectors of a symmetric PSD matrix by block power iteration (Rayleigh–Ritz
    on a block of `block` vectors, fixed start). A full `np.linalg.eigh` of 512 × 512 took ~4 s on this
    project's loaded 2-core machine; this takes milliseconds and needs only the top of the spectrum."""
    d = sym.shape[0]
    block = min(max(block, k), d)
    q = np.linalg.qr(np.random.default_rng(0).normal(size=(d, block)))[0]
    for _ in range(iters):
        q = np.linalg.qr(sym @ q)[0]
    values, small = np.linalg.eigh(q.T @ sym @ q)  # (block, block)
    return (q @ small[:, np.argsort(values)[::-1][:k]])


def nearest(emb: np.ndarray, query: np.ndarray, k: int, exclude: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Positions and cosine similarities of the `k` rows of `emb` closest to `query`, best first.

    `emb` rows and `query` are L2-normalised; `exclude` (the query's own position) is left out.
    Ties are broken by position, so the answer is deterministic."""
    emb = np.asarray(emb, dtype=np.float32)
    query = np.asarray(query, dtype=np.float32).reshape(-1)
    if emb.ndim != 2 or query.shape[0] != emb.shape[1]:
        raise EmbeddingError(f"query of size {query.shape[0]} does not match embeddings of shape {emb.shape}")
    if k < 1:
        raise EmbeddingError(f"k must be at least 1, not {k}")
    sims = np.concatenate([emb[s:s + CHUNK] @ query for s in range(0, len(emb), CHUNK)]) if len(emb) else np.zeros(0, np.float32)
    if exclude is not None and 0 <= exclude < len(sims):
        sims[exclude] = -np.inf
    k = min(k, len(sims) - (exclude is not None and 0 <= exclude < len(sims)))
    if k <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    top = np.argpartition(-sims, k - 1)[:k]
    order = np.lexsort((top, -sims[top]))  # by similarity, then by position
    top = top[order]
    return top.astype(np.int64), sims[top].astype(np.float32)


def more_like(emb: np.ndarray, position: int, k: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """The `k` records nearest to the record at `position` (itself excluded)."""
    if not 0 <= position < len(emb):
        raise EmbeddingError(f"position {position} is outside the {len(emb)} embedded records")
    return nearest(emb, emb[position], k, exclude=position)


def text_search(emb: np.ndarray, model, text: str, k: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """The `k` records whose images are nearest to `text` through the CLIP text tower; `emb` must come
    from the same CLIP pair (a RAHF image encoder has no text tower in its space and is refused)."""
    embedder = image_embedder(model)
    if not embedder.has_text:
        raise EmbeddingError(f"{embedder.name} has no text encoder aligned with its image embeddings; "
                             "text search needs the reward's CLIP encoder as the embeddings source")
    if not str(text).strip():
        raise EmbeddingError("the search text is empty: type what the images should show, e.g. 'a red circle'")
    query = embedder.embed_texts([str(text).strip()])[0]
    return nearest(emb, query, k)
