"""The project's own on-disk format: images plus one labels file.

```
dir/
  labels.jsonl                      one JSON object per record (below)
  images/<name>.png                 the image (lossless)
  heatmaps/<name>.<type>.npy        float32 H×W in [0, 1] (a grayscale .png, 0–255, also reads)
```
Each line: `{"id", "prompt", "image": "images/…" | null, "scores": {name: float},
"words": [[token, strength], …], "heatmaps": {type: "heatmaps/…"}, "meta": {…},
"columns": {source-specific frame columns}}`. Hand-written folders need only `image` and `prompt`.
`export(ds, dir)` writes any dataset in this format; `open_dataset("folder:dir")` reads it back
with the same records and the same frame.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from rhf_core.cache import atomic_write_bytes, atomic_write_text, cache_key, cached_frame, file_fingerprint
from rhf_core.dataset import STANDARD_COLUMNS, Dataset, Record, SkippedRow, frame_row, with_standard_columns
from rhf_core.errors import DatasetFormatError, DatasetNotFoundError, ImageLoadError, RHFError
from rhf_core.images import encode_png, load_image

LABELS = "labels.jsonl"
def _inside(root: Path, rel: str) -> Path:
    """`root / rel`, refusing paths that leave the dataset folder."""
    path = (root / rel).resolve()
    if not path.is_relative_to(root.resolve()):
        raise DatasetFormatError(f"{rel!r} points outside the dataset folder")
    return path


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def _safe_name(rec_id: str, taken: set) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", rec_id).strip("._") or "record"
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}-{k}"
    taken.add(name)
    return name


def _npy_bytes(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, np.asarray(arr, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def export(ds: Dataset, directory: str | Path, overwrite: bool = False, progress=None) -> Path:
    """Write every record of `ds` to `directory` in the folder format; returns the directory.

    Each file is written atomically and `labels.jsonl` last, so a crash leaves either the old
    labels or the complete new ones. Refuses to overwrite an existing labels file unless asked."""
    out = Path(directory).expanduser()
    if (out / LABELS).exists() and not overwrite:
        raise RHFError(f"{out} already holds a {LABELS}; pass overwrite=True to replace it")
    out.mkdir(parents=True, exist_ok=True)
    frame = ds.frame
    extra_cols = [c for c in frame.columns if c not in STANDARD_COLUMNS]
    taken: set = set()
    lines = []
    for pos in range(len(ds)):
        rec = ds[pos]
        name = _safe_name(rec.id, taken)
        entry = {"id": rec.id, "prompt": rec.prompt, "image": None}
        img = rec.image if rec.has_image else None
        if img is not None:
            rel = f"images/{name}.png"
            atomic_write_bytes(out / rel, encode_png(img))
            entry["image"] = rel
        entry["scores"] = {k: float(v) for k, v in rec.scores.items()}
        entry["words"] = [[t, float(s)] for t, s in rec.words]
        entry["heatmaps"] = {}
        for hname, hm in rec.heatmaps.items():
            rel = f"heatmaps/{name}.{hname}.npy"
            atomic_write_bytes(out / rel, _npy_bytes(hm))
            entry["heatmaps"][hname] = rel
        entry["meta"] = rec.meta
        row = frame.iloc[pos]
        entry["columns"] = {c: (None if isinstance(row[c], float) and math.isnan(row[c]) else row[c]) for c in extra_cols}
        lines.append(json.dumps(entry, default=_json_default, ensure_ascii=False))
        if progress is not None:
            progress(pos + 1, len(ds))
    atomic_write_text(out / LABELS, "\n".join(lines) + ("\n" if lines else ""))
    return out


def _load_heatmap(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        arr = np.load(path, allow_pickle=False)
    else:
        img = load_image(path, max_side=None).convert("L")
        arr = np.asarray(img, dtype=np.float32) / 255.0
    if arr.ndim != 2:
        raise DatasetFormatError(f"{path.name}: a heatmap must be 2-D, got shape {arr.shape}")
    return np.clip(arr.astype(np.float32), 0.0, 1.0)


class FolderDataset(Dataset):
    name = "Folder"

    def __init__(self, path: str | Path, cache: bool = True):
        super().__init__()
        root = Path(path).expanduser()
        if not root.is_dir():
            raise DatasetNotFoundError(f"folder: {root} is not a directory")
        labels = root / LABELS
        if not labels.is_file():
            raise DatasetNotFoundError(f"folder: {root} has no {LABELS}")
        self.root = root
        self.spec = f"folder:{root}"
        self._entries: list[dict] = []
        for n, line in enumerate(labels.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                self._check(entry)
            except (json.JSONDecodeError, DatasetFormatError) as e:
                self.skipped.append(SkippedRow(f"{LABELS} line {n}", str(e)))
                continue
            entry.setdefault("id", f"line{n}")
            self._entries.append(entry)
        key = cache_key("folder", file_fingerprint([labels]))
        build = self._build_frame
        self._frame = cached_frame("folder", key, build) if cache else build()

    @staticmethod
    def _check(entry) -> None:
        if not isinstance(entry, dict):
            raise DatasetFormatError("a line must be a JSON object")
        if not isinstance(entry.get("prompt", ""), str):
            raise DatasetFormatError("prompt must be a string")
        scores = entry.get("scores", {})
        if not isinstance(scores, dict) or not all(isinstance(v, (int, float)) for v in scores.values()):
            raise DatasetFormatError("scores must map names to numbers")
        for key in ("heatmaps", "meta", "columns"):
            if not isinstance(entry.get(key) or {}, dict):
                raise DatasetFormatError(f"{key} must be a JSON object")
        words = entry.get("words", [])
        if not isinstance(words, list) or not all(
            isinstance(w, list) and len(w) == 2 and isinstance(w[0], str) and isinstance(w[1], (int, float)) for w in words
        ):
            raise DatasetFormatError("words must be a list of [token, strength] pairs")

    def _heatmaps(self, entry) -> dict:
        out = {}
        for name, rel in (entry.get("heatmaps") or {}).items():
            out[name] = _load_heatmap(_inside(self.root, rel))
        return out

    def _build_frame(self) -> pd.DataFrame:
        rows = []
        for entry in self._entries:
            try:
                heatmaps = self._heatmaps(entry)
            except (OSError, ValueError, RHFError):
                heatmaps = {}
            meta = entry.get("meta") or {}
            split = meta.get("split", entry.get("split", ""))
            rows.append(frame_row(
                str(entry["id"]), entry.get("prompt", ""), split or "", entry.get("scores", {}), heatmaps,
                [tuple(w) for w in entry.get("words", [])],
                **{k: v for k, v in (entry.get("columns") or {}).items() if k not in STANDARD_COLUMNS},
            ))
        if not rows:
            return with_standard_columns(pd.DataFrame())
        return pd.DataFrame(rows)

    def _load(self, pos: int) -> Record:
        entry = self._entries[pos]
        rec_id = str(entry["id"])
        try:
            heatmaps = self._heatmaps(entry)
        except (OSError, ValueError) as e:
            raise DatasetFormatError(f"{rec_id}: heatmap file unreadable ({e})") from None
        scores = {k: float(v) for k, v in (entry.get("scores") or {}).items()}
        loader = None
        if entry.get("image"):
            path = _inside(self.root, entry["image"])

            def loader(path=path):
                if not path.is_file():
                    raise ImageLoadError(f"{rec_id}: image file {path.name} is missing")
                return load_image(path, max_side=None, name=rec_id)

        return Record(rec_id, entry.get("prompt", ""), scores, heatmaps,
                      [(str(t), float(s)) for t, s in entry.get("words", [])], entry.get("meta") or {},
                      load_image=loader)


__all__ = ["export", "FolderDataset"]
