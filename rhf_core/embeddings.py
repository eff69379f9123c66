"""Image embeddings of a dataset's records, their 2-D map, nearest neighbours and text search
(the explorer's Map view and "More like this").

The encoder is the reward's CLIP pair (`rhf_core.reward.encoders`): its image tower embeds the
records, its text tower embeds a query, and both land in one L2-normalised space, so cosine
similarity is a dot product.

Choices, and why:
- The 2-D map is PCA (axes from the covariance of at most 10,000 evenly spaced rows, then every
  row projected): a fraction of a second at 20K × 512, deterministic, and its axes mean the same on
  every visit. UMAP separates clusters better but takes minutes at that
  size and changes with its seed, so it is left as a later option.
- Neighbours are exact brute force in float32 chunks: 200K × 512 is 400 MB of floats and one query
  is a single matrix–vector product (tens of ms on CPU); an approximate index (faiss, pynndescent)
  would only pay for all-pairs queries, which the explorer never makes.
- Embeddings are computed once per (dataset, its records, encoder weights) and cached under the
  runtime cache as `.npy`, written atomically.
"""

from __future__ import annotations

import hashlib
import io
import logging
from typing import Callable

import numpy as np
from PIL import Image

from rhf_core.cache import atomic_write_bytes, cache_dir, cache_key
from rhf_core.dataset import Dataset
from rhf_core.errors import RHFError

log = logging.getLogger(__name__)

FIT_ROWS = 10000  # rows the PCA axes are fitted on (see pca_2d)
CHUNK = 16384  # rows per block in the neighbour search: bounds the temporary scores to CHUNK × k


class EmbeddingError(RHFError, ValueError):
    """Embeddings that cannot be computed or queried (no records, a wrong shape, an empty query)."""


def frame_fingerprint(ds: Dataset) -> str:
    """A hash of the dataset's record ids in order: the cache goes stale when the records change."""
    h = hashlib.sha256()
    for rec_id in ds.frame["id"].astype(str):
        h.update(rec_id.encode())
        h.update(b"\0")
    return h.hexdigest()[:20]


def encoder_fingerprint(encoders) -> str:
    """The encoder's name, config and a checksum of its first and last weight tensors: retrained
    weights under the same name get new embeddings, without hashing every weight of a large CLIP."""
    params = list(encoders.model.state_dict().values())
    h = hashlib.sha256(encoders.model.config.to_json_string().encode())
    for t in (params[0], params[-1]):
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return f"{encoders.name}-{h.hexdigest()[:16]}"


def embeddings_key(ds: Dataset, encoders) -> str:
    return cache_key("embeddings", ds.spec, frame_fingerprint(ds), encoder_fingerprint(encoders))


def embeddings_path(ds: Dataset, encoders):
    """Where `image_embeddings` caches this dataset's embeddings under this encoder (may not exist yet)."""
    return cache_dir("embeddings") / f"{embeddings_key(ds, encoders)}.npy"


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


def image_embeddings(ds: Dataset, encoders, batch_size: int = 256, use_cache: bool = True,
                     progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """(N, D) float32 L2-normalised image embeddings of every record of `ds`, in frame order."""
    if len(ds) == 0:
        raise EmbeddingError("the dataset has no records to embed")
    path = embeddings_path(ds, encoders) if use_cache else None
    if path is not None and path.exists():
        try:
            cached = np.load(path, allow_pickle=False)
            if cached.shape == (len(ds), encoders.dim):
                return cached
        except (OSError, ValueError):  # a damaged entry is recomputed, never fatal
            pass
        path.unlink(missing_ok=True)
    out = np.zeros((len(ds), encoders.dim), np.float32)
    size = int(encoders.processor.crop_size["height"])
    for start in range(0, len(ds), batch_size):
        stop = min(start + batch_size, len(ds))
        images, _ = record_images(ds, start, stop, size)
        out[start:stop] = encoders.embed_images(images, batch_size=batch_size)
        if progress:
            progress(stop, len(ds))
    if path is not None:
        buf = io.BytesIO()
        np.save(buf, out, allow_pickle=False)
        atomic_write_bytes(path, buf.getvalue())
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
    axes = top_eigenvectors((sample.T @ sample).astype(np.float64), 2)  # (D, 2); (D, D) is small whatever N is
    if axes.shape[1] < 2:  # one-dimensional embeddings: the second coordinate is 0
        axes = np.pad(axes, ((0, 0), (0, 2 - axes.shape[1])))
    signs = np.sign(axes[np.abs(axes).argmax(0), np.arange(axes.shape[1])])
    axes = axes * np.where(signs == 0, 1.0, signs)
    return ((emb - mean) @ axes.astype(np.float32)).astype(np.float32)


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


def text_search(emb: np.ndarray, encoders, text: str, k: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """The `k` records whose images are nearest to `text` through the encoder's text tower."""
    if not str(text).strip():
        raise EmbeddingError("the search text is empty: type what the images should show, e.g. 'a red circle'")
    query = encoders.embed_texts([str(text).strip()])[0]
    return nearest(emb, query, k)
