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

import codecs
import hashlib
import json
import math
import re
import reprlib
from pathlib import Path

import numpy as np
import pandas as pd

from rhf_core.cache import atomic_write_bytes, atomic_write_text, cache_key, cached_frame
from rhf_core.dataset import SCORE_NAMES, STANDARD_COLUMNS, Dataset, Record, SkippedRow, frame_row, with_standard_columns
from rhf_core.errors import DatasetFormatError, DatasetNotFoundError, ImageLoadError, RHFError
from rhf_core.images import encode_png, load_image

LABELS = "labels.jsonl"
# Frame columns the reader uses internally; a labels `columns` entry may not take these names.
_RESERVED = ("_entry", "_skip_where", "_skip_reason")


def inside_folder(root: Path, rel: str) -> Path:
    """`root / rel`, refusing paths that leave the dataset folder (`..`, absolute, a symlink out)."""
    try:
        path = (root / rel).resolve()
    except (OSError, ValueError) as e:  # a NUL byte, a name too long
        raise DatasetFormatError(f"{_short(rel)} is not a usable path ({type(e).__name__})") from None
    if not path.is_relative_to(root.resolve()):
        raise DatasetFormatError(f"{_short(rel)} points outside the dataset folder")
    return path


def _short(value) -> str:
    """A bounded repr for messages (labels lines can hold anything, nested arbitrarily deep)."""
    return _REPR.repr(value)


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict = 3, 60, 60, 6, 6


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


def npy_bytes(arr: np.ndarray) -> bytes:
    """`arr` as float32 .npy bytes (no pickle), the heatmap files of the folder format."""
    import io

    buf = io.BytesIO()
    np.save(buf, np.asarray(arr, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def export(ds: Dataset, directory: str | Path, overwrite: bool = False, progress=None) -> Path:
    """Write every record of `ds` to `directory` in the folder format; returns the directory.

    Each file is written atomically and `labels.jsonl` last, so a crash leaves either the old
    labels or the complete new ones. Refuses a folder that is not empty (it would overwrite images
    there) unless asked. File names are built from sanitised ids and heatmap type names, so a name
    like `/../../x` cannot write outside the folder; labels.jsonl keeps the names as they are."""
    out = Path(directory).expanduser()
    if out.exists() and not out.is_dir():
        raise RHFError(f"export: {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        what = f"already holds a {LABELS}" if (out / LABELS).exists() else "is not empty"
        raise RHFError(f"export: {out} {what}; pass overwrite=True to replace its files")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RHFError(f"export: cannot create {out} ({e.strerror or type(e).__name__})") from None
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
            atomic_write_bytes(inside_folder(out, rel), encode_png(img))
            entry["image"] = rel
        entry["scores"] = {k: float(v) for k, v in rec.scores.items()}
        entry["words"] = [[t, float(s)] for t, s in rec.words]
        entry["heatmaps"] = {}
        heat_taken: set = set()
        for hname, hm in rec.heatmaps.items():
            rel = f"heatmaps/{name}.{_safe_name(str(hname), heat_taken)}.npy"
            atomic_write_bytes(inside_folder(out, rel), npy_bytes(hm))
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
    """A 2-D float map in [0, 1] from .npy (or a grayscale image, 0–255). Anything else — not
    2-D, empty, NaN / inf, values outside [0, 1] — raises `DatasetFormatError`: refused, never
    clipped (a 0–255 array clipped to [0, 1] would read as solid)."""
    if path.suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise DatasetFormatError(f"{path.name}: not a readable .npy array ({type(e).__name__})") from None
        if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiub":
            raise DatasetFormatError(f"{path.name}: a heatmap must hold real numbers")
    else:
        img = load_image(path, max_side=None).convert("L")
        arr = np.asarray(img, dtype=np.float32) / 255.0
    if arr.ndim != 2 or arr.size == 0:
        raise DatasetFormatError(f"{path.name}: a heatmap must be a non-empty 2-D array, got shape {arr.shape}")
    arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)):
        raise DatasetFormatError(f"{path.name}: the heatmap holds NaN or infinite values")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0.0 or hi > 1.0:
        raise DatasetFormatError(f"{path.name}: heatmap values span {lo:g}…{hi:g}, outside [0, 1]")
    return arr


def _real(value) -> float | None:
    """A float from a JSON number; None for bool, text, null, containers or an int beyond float range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:
        return None


def _unit(value, what: str) -> float:
    """A number in [0, 1] or DatasetFormatError. Scores and word strengths in this format are on
    that scale (export writes them so): a value off it, NaN or inf, is refused, not clipped — a
    folder on another scale (1–5 ratings) should be converted on purpose, and every refused line is
    listed with its reason in `ds.skipped`."""
    x = _real(value)
    if x is None:
        raise DatasetFormatError(f"{what} must be a number, got {_short(value)}")
    if not 0.0 <= x <= 1.0:  # False for NaN too
        raise DatasetFormatError(f"{what} = {x!r} is outside [0, 1]")
    return x


def _or_empty(entry: dict, key: str, empty):
    value = entry.get(key)
    return empty if value is None else value


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
        skipped: list[tuple[int, SkippedRow]] = []
        first_line: dict[str, int] = {}
        # Split the bytes on \n only: one bad byte costs its line, not the file, and a prompt holding
        # U+2028 or \x85 (which str.splitlines would split on) stays one line.
        data = labels.read_bytes()
        for n, raw in enumerate(data.split(b"\n"), start=1):
            if n == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            if not raw.strip():
                continue
            try:
                entry = self._parse(raw, n)
                if entry["id"] in first_line:
                    # The later line would make one of the two unreachable by id: the first one wins.
                    raise DatasetFormatError(f"duplicate id {_short(entry['id'])} (first used on line {first_line[entry['id']]})")
            except DatasetFormatError as e:
                skipped.append((n, SkippedRow(f"{LABELS} line {n}", str(e))))
                continue
            first_line[entry["id"]] = n
            self._entries.append(entry)
        # Keyed by the bytes parsed above, not the file's stat: a save that replaces labels.jsonl between
        # the read and the key (an annotation) must not file this frame under the new file's key.
        key = cache_key("folder", hashlib.sha1(data).hexdigest(), self._heatmap_fingerprint())
        build = self._build_frame
        frame = cached_frame("folder", key, build) if cache else build()
        # Lines whose heatmap files cannot be used are found while building the frame; they travel in
        # the (cached) frame, so a cache hit reports them too.
        entry_of = frame.pop("_entry").to_numpy()
        for k, where, why in zip(entry_of, frame.pop("_skip_where"), frame.pop("_skip_reason")):
            if isinstance(why, str) and why:
                skipped.append((self._entries[int(k)]["_line"], SkippedRow(where, why)))
        self.skipped = [row for _, row in sorted(skipped, key=lambda t: t[0])]
        ok = frame["id"].notna().to_numpy()
        self._entry_of = entry_of[ok].astype(np.int64)
        self._frame = with_standard_columns(frame[ok].reset_index(drop=True))

    def _parse(self, raw: bytes, n: int) -> dict:
        """One labels line → a checked entry (id text, prompt text, scores floats, ...)."""
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DatasetFormatError(f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})") from None
        try:
            entry = json.loads(line)
        except RecursionError:
            raise DatasetFormatError("nested too deeply to be a labels entry") from None
        except ValueError as e:  # JSONDecodeError, or an integer with thousands of digits
            raise DatasetFormatError(f"not JSON ({str(e)[:120]})") from None
        return self._check(entry, n)

    def _check(self, entry, n: int = 0) -> dict:
        if not isinstance(entry, dict):
            raise DatasetFormatError("a line must be a JSON object")
        rec_id = entry.get("id")
        if rec_id is None:
            rec_id = f"line{n}"
        elif isinstance(rec_id, int) and not isinstance(rec_id, bool):
            rec_id = str(rec_id)  # `"id": 5` is the id "5" (lookups go by text)
        elif not isinstance(rec_id, str):
            raise DatasetFormatError(f"id must be text or an integer, got {_short(rec_id)}")
        prompt = entry.get("prompt", "")
        if not isinstance(prompt, str):
            raise DatasetFormatError("prompt must be a string")
        image = entry.get("image")
        if image is not None and not isinstance(image, str):
            raise DatasetFormatError(f"image must be a path relative to the folder (text) or null, got {_short(image)}")
        # Absent or null means none; any other non-object (0, "", []) is refused, not read as empty.
        scores = _or_empty(entry, "scores", {})
        if not isinstance(scores, dict):
            raise DatasetFormatError("scores must map names to numbers")
        checked_scores = {}
        for name, v in scores.items():
            if name in SCORE_NAMES:
                checked_scores[name] = _unit(v, f"scores.{name}")
            else:  # a source's own score: its scale is its own, but it must be a finite number
                x = _real(v)
                if x is None or not math.isfinite(x):
                    raise DatasetFormatError(f"scores.{_short(name)} must be a finite number, got {_short(v)}")
                checked_scores[name] = x
        words = _or_empty(entry, "words", [])
        if not isinstance(words, list) or not all(
            isinstance(w, list) and len(w) == 2 and isinstance(w[0], str) for w in words
        ):
            raise DatasetFormatError("words must be a list of [token, strength] pairs")
        checked_words = [(t, _unit(s, f"strength of word {_short(t)}")) for t, s in words]
        for key in ("heatmaps", "meta", "columns"):
            if not isinstance(_or_empty(entry, key, {}), dict):
                raise DatasetFormatError(f"{key} must be a JSON object")
        heatmaps = {}
        for name, rel in _or_empty(entry, "heatmaps", {}).items():
            if not isinstance(rel, str) or not rel:
                raise DatasetFormatError(f"heatmaps.{_short(name)} must be a path relative to the folder, got {_short(rel)}")
            heatmaps[name] = inside_folder(self.root, rel)
        meta = _or_empty(entry, "meta", {})
        split = meta.get("split")
        if split is None:
            split = entry.get("split")
        if split is not None and not isinstance(split, str):
            raise DatasetFormatError(f"split must be text, got {_short(split)}")
        columns = _or_empty(entry, "columns", {})
        for k, v in columns.items():
            if k in _RESERVED:
                raise DatasetFormatError(f"columns.{k} is a name the reader uses itself")
            # Frame cells are plain values: a list or object would not filter, sort or cache.
            if v is not None and not isinstance(v, (str, int, float, bool)):
                raise DatasetFormatError(f"columns.{_short(k)} must be text, a number, true/false or null, got {_short(v)}")
        return {"id": rec_id, "prompt": prompt, "image": image or None, "scores": checked_scores,
                "words": checked_words, "heatmaps": heatmaps, "meta": meta, "split": split or "",
                "columns": {k: v for k, v in columns.items() if k not in STANDARD_COLUMNS}, "_line": n}

    def _heatmap_fingerprint(self) -> list:
        """(path, size, mtime) of every heatmap file named (None when missing): the frame holds their
        masses and which lines they made unusable, so it goes stale when they change."""
        out = []
        for entry in self._entries:
            for p in entry["heatmaps"].values():
                try:
                    st = p.stat()
                    out.append([str(p), st.st_size, st.st_mtime_ns])
                except OSError:
                    out.append([str(p), None])
        return out

    @staticmethod
    def _heatmaps(entry) -> dict:
        return {name: _load_heatmap(path) for name, path in entry["heatmaps"].items()}

    def _build_frame(self) -> pd.DataFrame:
        rows = []
        for k, entry in enumerate(self._entries):
            try:
                heatmaps = self._heatmaps(entry)
            except (OSError, RHFError) as e:  # the line is skipped: its frame row would claim no heatmap
                reason = str(e) if isinstance(e, RHFError) else f"heatmap file unreadable ({type(e).__name__})"
                rows.append({"id": None, "_entry": k, "_skip_where": f"{LABELS} line {entry['_line']}",
                             "_skip_reason": reason})
                continue
            row = frame_row(entry["id"], entry["prompt"], entry["split"], entry["scores"], heatmaps, entry["words"])
            row.update(entry["columns"])  # not as **kwargs: a column may be called "words" or "scores"
            row.update(_entry=k, _skip_where="", _skip_reason="")
            rows.append(row)
        if not rows:
            return with_standard_columns(pd.DataFrame(columns=["_entry", "_skip_where", "_skip_reason"]))
        return pd.DataFrame(rows)

    def _load(self, pos: int) -> Record:
        entry = self._entries[int(self._entry_of[pos])]
        rec_id = entry["id"]
        try:
            heatmaps = self._heatmaps(entry)
        except OSError as e:
            raise DatasetFormatError(f"{rec_id}: heatmap file unreadable ({type(e).__name__})") from None
        loader = None
        if entry["image"] is not None:
            rel = entry["image"]

            def loader():
                # Checked when read, like a missing file: the line stays (its labels are fine) and
                # an image path out of the folder is refused with DatasetFormatError.
                path = inside_folder(self.root, rel)
                if not path.is_file():
                    raise ImageLoadError(f"{rec_id}: image file {path.name} is missing")
                return load_image(path, max_side=None, name=rec_id)

        return Record(rec_id, entry["prompt"], dict(entry["scores"]), heatmaps, list(entry["words"]),
                      entry["meta"], load_image=loader)


__all__ = ["export", "FolderDataset", "LABELS", "inside_folder", "npy_bytes"]
