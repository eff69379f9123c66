"""Rapidata text-2-image Rich Human Feedback (13K images, parquet shards, ~25 GB).

Columns: `image` {bytes, path} (or `image_name` in the 32k sibling), `prompt` (or `sentence`),
`word_scores` (a JSON list of [word, score] pairs, maybe with `[No_mistakes]`; trust-weighted
counts), `alignment_score` / `coherence_score` / `style_score` (1–5 Likert means) and their `_norm`
versions in [0, 1] (absent in older revisions), and `alignment_heatmap` / `coherence_heatmap`
(2-D lists of float16, null when not collected, with per-pixel nulls meaning 0).

Mapping: alignment → `alignment`, coherence → `plausibility`, style → `aesthetics`;
alignment heatmap → `misalignment`, coherence heatmap → `implausibility`.

Word strengths: a word's score divided by an estimate of how many (trust-weighted) annotators
answered, N = score of `[No_mistakes]` + the largest word score. That is the share of annotators
who flagged the word when every annotator who flagged anything flagged the top word, and a lower
bound on the answering crowd otherwise; it maps to [0, 1] with 1 = everybody flagged it. The raw
pairs stay in `meta["word_scores_raw"]`.

The dataset is never loaded whole: the first open scans the files a few row groups at a time
(heatmaps decoded through pyarrow buffers and numpy and checked), building the frame (cached in
cache/frames) and the heatmap cache (cache/rapidata-maps, see below). A record then reads its small
columns from its row group and its maps from the heatmap cache, not its row group's heatmaps.
"""

from __future__ import annotations

import ast
import io
import json
import logging
import math
import os
import reprlib
import tempfile
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from rhf_core.cache import cache_dir, cache_key, cached_frame, file_fingerprint
from rhf_core.dataset import Dataset, Record, SkippedRow, frame_row, with_standard_columns
from rhf_core.errors import DatasetFormatError, DatasetNotFoundError, ImageLoadError
from rhf_core.images import load_image

NO_MISTAKES = {"[no_mistakes]", "[no_mistake]"}
SCORE_COLUMNS = {"alignment": "alignment", "coherence": "plausibility", "style": "aesthetics"}
HEATMAP_COLUMNS = {"coherence_heatmap": "implausibility", "alignment_heatmap": "misalignment"}

log = logging.getLogger(__name__)


# --- decoding ---------------------------------------------------------------------------------

def _short(value) -> str:
    """A bounded repr for error messages: safe on values nested 100,000 deep or megabytes long."""
    return _REPR.repr(value)


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlist = 3, 60, 60, 6


def _is_list_type(t) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t)


def decode_heatmap(value) -> np.ndarray | None:
    """A 2-D float16 list (pyarrow ListScalar, or a ListArray of rows) → float32 H×W in [0, 1].

    Goes through Arrow's flat value buffer and numpy (no Python loop over pixels); null = not
    collected (None); per-pixel nulls become 0 (the dataset's own convention). Raises
    `DatasetFormatError` for anything else: not a 2-D list of numbers, ragged or null rows, no pixels,
    NaN / inf pixels, or values outside [0, 1]. Out-of-range values are refused, never clipped: a
    0–255 map clipped to [0, 1] would read as solid, which is worse than no map."""
    native = heatmap_array(value)
    return None if native is None else native.astype(np.float32)


def heatmap_array(value) -> np.ndarray | None:
    """`decode_heatmap` before the cast to float32: the column's own dtype (float16 for Rapidata),
    checked the same way. The heatmap cache stores this (half the bytes of float32, cast exactly)."""
    if isinstance(value, pa.Scalar):
        if not value.is_valid:
            return None
        if not _is_list_type(value.type):
            raise DatasetFormatError(f"heatmap is not a 2-D list of numbers (column type {value.type})")
        rows = value.values
    else:
        rows = value
    if rows is None:
        return None
    if isinstance(rows, pa.ChunkedArray):
        rows = rows.combine_chunks()
    t = rows.type
    if not (_is_list_type(t) and (pa.types.is_floating(t.value_type) or pa.types.is_integer(t.value_type))):
        raise DatasetFormatError(f"heatmap is not a 2-D list of numbers (rows of type {t})")
    n_rows = len(rows)
    if n_rows == 0:
        raise DatasetFormatError("heatmap has no pixels (an empty list; null means 'not collected')")
    offsets = rows.offsets.to_numpy()
    widths = np.diff(offsets)
    if rows.null_count or not np.all(widths == widths[0]):
        raise DatasetFormatError("heatmap rows have different lengths (or null rows)")
    if widths[0] == 0:
        raise DatasetFormatError("heatmap has no pixels (rows of length 0)")
    flat = rows.values.slice(offsets[0], offsets[-1] - offsets[0])
    out = flat.to_numpy(zero_copy_only=False)  # nulls → NaN (floats; ints with nulls come as float64)
    if flat.null_count:
        out = out.copy()
        out[flat.is_null().to_numpy(zero_copy_only=False)] = 0
    if out.dtype.kind == "f" and not np.all(np.isfinite(out)):
        raise DatasetFormatError("heatmap holds NaN or infinite values")
    lo, hi = float(out.min()), float(out.max())
    if lo < 0.0 or hi > 1.0:
        raise DatasetFormatError(f"heatmap values span {lo:g}…{hi:g}, outside [0, 1] (a 0–255 map?)")
    return out.reshape(n_rows, int(widths[0]))


def _number(value) -> float | None:
    """A finite-or-not float from a real number; None for anything else (bool, str, huge int, ...)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    try:
        return float(value)
    except OverflowError:  # an int beyond float range
        return None


def parse_word_scores(text) -> tuple[list[tuple[str, float]], float, list]:
    """`word_scores` → (words with strength in [0, 1], estimated annotator weight, raw pairs).

    Accepts JSON (and the Python-literal spelling with single quotes); raises
    `DatasetFormatError` for anything that is not a list of [word, count] pairs with finite,
    non-negative counts (a negative trust-weighted count is refused, not clipped: it has no meaning)."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return [], 0.0, []
    if isinstance(text, str):
        try:
            pairs = json.loads(text)
        except RecursionError:
            raise DatasetFormatError("word_scores is nested too deeply to be a list of pairs") from None
        except json.JSONDecodeError:
            try:
                pairs = ast.literal_eval(text)  # literals only: safe
            except RecursionError:
                raise DatasetFormatError("word_scores is nested too deeply to be a list of pairs") from None
            except (ValueError, SyntaxError, TypeError, MemoryError):
                raise DatasetFormatError(f"word_scores is not a JSON list: {_short(text)}") from None
    else:
        pairs = text
    if not isinstance(pairs, (list, tuple)):
        raise DatasetFormatError(f"word_scores is not a list: {_short(text)}")
    raw = []
    for p in pairs:
        count = _number(p[1]) if isinstance(p, (list, tuple)) and len(p) == 2 else None
        if count is None or not isinstance(p[0], str):
            raise DatasetFormatError(f"word_scores entry is not a [word, number] pair: {_short(p)}")
        if not math.isfinite(count):
            raise DatasetFormatError(f"word_scores: {_short(p[0])} has a count of {count}")
        if count < 0:
            raise DatasetFormatError(f"word_scores: {_short(p[0])} has a negative count ({count:g})")
        raw.append((p[0], count))
    no_mistakes = sum(s for w, s in raw if w.strip().lower() in NO_MISTAKES)
    word_pairs = [(w, s) for w, s in raw if w.strip().lower() not in NO_MISTAKES]
    top = max((s for _, s in word_pairs), default=0.0)
    total = no_mistakes + top
    # Every count is ≥ 0 and ≤ top ≤ total, so s / total is already in [0, 1]: nothing to clip.
    words = [(w, s / total if total > 0 else 0.0) for w, s in word_pairs]
    return words, total, [list(p) for p in raw]


# --- row access -------------------------------------------------------------------------------

class _ParquetRows:
    """Rows of a set of parquet files, read one row group at a time."""

    def __init__(self, files: list[Path]):
        self.files = files
        self._groups = []  # (file, row group, first row, n rows)
        self.file_starts = []  # first row of each file
        names = None
        start = 0
        for f in files:
            try:
                meta = pq.ParquetFile(f)
            except Exception as e:
                raise DatasetFormatError(f"{f}: not a readable parquet file ({e})") from None
            fnames = meta.schema_arrow.names
            names = fnames if names is None else names
            if fnames != names:
                raise DatasetFormatError(f"{f}: columns differ from {files[0].name}'s")
            self.file_starts.append(start)
            for g in range(meta.metadata.num_row_groups):
                n = meta.metadata.row_group(g).num_rows
                self._groups.append((str(f), g, start, n))
                start += n
        self.names = names or []
        self.n = start
        self._starts = np.array([g[2] for g in self._groups] + [start])

    def groups(self):
        return range(len(self._groups))

    def read_group(self, g: int, columns: list[str]) -> pa.Table:
        """Uncached: the first scan reads every group once, and caching its heatmaps would hold
        hundreds of megabytes that nothing reads again."""
        f, rg, _, _ = self._groups[g]
        return pq.ParquetFile(f).read_row_group(rg, columns=columns)

    def group_start(self, g: int) -> int:
        return self._groups[g][2]

    def group_size(self, g: int) -> int:
        return self._groups[g][3]

    def file_rows(self, k: int) -> int:
        """Rows in file k."""
        return (self.file_starts[k + 1] if k + 1 < len(self.files) else self.n) - self.file_starts[k]

    def group_file(self, g: int) -> int:
        """Index (into `files`) of the file holding group `g`."""
        return int(np.searchsorted(self.file_starts, self._groups[g][2], side="right") - 1)

    def row(self, i: int, columns: list[str]) -> dict:
        """One row's values; its row group stays cached (small columns: a few; heatmaps: one)."""
        g = int(np.searchsorted(self._starts, i, side="right") - 1)
        f, rg, start, _ = self._groups[g]
        heavy = any(c in HEATMAP_COLUMNS for c in columns)
        table = (_read_heatmap_group if heavy else _read_row_group)(f, rg, tuple(columns))
        return {c: table.column(c)[i - start] for c in columns}


@lru_cache(maxsize=8)
def _read_row_group(file: str, row_group: int, columns: tuple) -> pa.Table:
    return pq.ParquetFile(file).read_row_group(row_group, columns=list(columns))


@lru_cache(maxsize=1)
def _read_heatmap_group(file: str, row_group: int, columns: tuple) -> pa.Table:
    """A row group with its heatmap columns (~100 MB decoded with `datasets`' row groups): one at a
    time, so stepping through neighbouring records decodes it once and memory stays bounded."""
    return pq.ParquetFile(file).read_row_group(row_group, columns=list(columns))


# --- the heatmap cache --------------------------------------------------------------------------
#
# Decoding one record's heatmaps from the parquet file means decoding its whole row group (~1 s and
# ~100–400 MB for the hub's files). The first scan decodes every map anyway, so it also writes them,
# compressed, to one cache file per parquet file under cache/rapidata-maps/ (never beside the data),
# keyed by the file's path, size and mtime: a record then reads only its own maps (a few ms).
# Layout: MAGIC, the compressed maps one after another, the index (an .npy array, one entry
# (offset, length, height, width, itemsize) per row and heatmap column), the index's offset (8 bytes,
# little-endian) and MAGIC. Length -1 = null (not collected); -2 = not stored (a row the scan
# skipped), read from the parquet file instead. Maps are stored byte-shuffled (all first bytes, then
# all second bytes) and zstd-compressed: smooth float16 maps compress to ~45% that way, to ~70% without.

MAPS_MAGIC = b"RHFMAPS1"
MAPS_CODEC = "zstd"
_NULL, _NOT_STORED = -1, -2  # index lengths
NOT_STORED = object()  # what HeatmapCache.get returns for a row it does not hold


def heatmap_cache_path(file: Path, columns: list[str]) -> Path:
    """Where the heatmap cache of one parquet file lives (`$RHF_CACHE_DIR/rapidata-maps/...`)."""
    return cache_dir("rapidata-maps") / f"{cache_key('rapidata-maps', file_fingerprint([Path(file).resolve()]), columns)}.bin"


def _pack(arr: np.ndarray) -> bytes:
    """Byte-shuffle (plane b = byte b of every little-endian value) and compress a float16/32 map.
    Shifts instead of a transposed copy: ten times faster on a 1024×1024 map."""
    bits = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).reshape(-1).view(f"<u{arr.itemsize}")
    planes = np.empty((arr.itemsize, bits.size), np.uint8)
    for b in range(arr.itemsize):
        planes[b] = (bits >> (8 * b)).astype(np.uint8)
    return pa.Codec(MAPS_CODEC, compression_level=1).compress(planes, asbytes=True)


def _unpack(blob: bytes, height: int, width: int, itemsize: int) -> np.ndarray:
    raw = pa.Codec(MAPS_CODEC).decompress(blob, decompressed_size=height * width * itemsize, asbytes=True)
    planes = np.frombuffer(raw, np.uint8).reshape(itemsize, -1)
    bits = planes[0].astype(f"<u{itemsize}")
    for b in range(1, itemsize):
        bits |= planes[b].astype(bits.dtype) << (8 * b)
    return bits.view(f"<f{itemsize}").reshape(height, width).astype(np.float32)


class HeatmapCacheWriter:
    """Streams one parquet file's checked heatmaps into its cache file: written to a temporary file
    beside the target and renamed over it when complete (readers never see half a file)."""

    def __init__(self, path: Path, n_rows: int, n_columns: int):
        self.path = path
        fd, self._tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        self._f = os.fdopen(fd, "wb")
        self._f.write(MAPS_MAGIC)
        self._offset = len(MAPS_MAGIC)
        self.index = np.full((n_rows, n_columns, 5), _NOT_STORED, np.int64)

    def add(self, row: int, column: int, arr: np.ndarray | None) -> None:
        if arr is None:
            self.index[row, column] = (0, _NULL, 0, 0, 0)
            return
        stored = arr if arr.dtype == np.float16 else arr.astype(np.float32)  # float32 = decode's output
        blob = _pack(stored)
        self._f.write(blob)
        self.index[row, column] = (self._offset, len(blob), *stored.shape, stored.itemsize)
        self._offset += len(blob)

    def close(self) -> None:
        buf = io.BytesIO()
        np.save(buf, self.index, allow_pickle=False)
        self._f.write(buf.getvalue())
        self._f.write(self._offset.to_bytes(8, "little") + MAPS_MAGIC)
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.chmod(self._tmp, 0o644)
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        self._f.close()
        Path(self._tmp).unlink(missing_ok=True)


class HeatmapCache:
    """One parquet file's heatmap cache, read one map at a time."""

    def __init__(self, path: Path, n_rows: int, n_columns: int):
        """Raises OSError / ValueError for a file that is not a complete cache of this shape."""
        self.path = path
        with open(path, "rb") as f:
            f.seek(-16, os.SEEK_END)
            tail = f.read(16)
            if tail[8:] != MAPS_MAGIC:
                raise ValueError(f"{path}: not a complete heatmap cache")
            f.seek(int.from_bytes(tail[:8], "little"))
            self.index = np.load(f, allow_pickle=False)
        if self.index.shape != (n_rows, n_columns, 5):
            raise ValueError(f"{path}: index of shape {self.index.shape}, expected {(n_rows, n_columns, 5)}")

    def get(self, row: int, column: int):
        """The float32 map, None (not collected), or NOT_STORED."""
        offset, length, height, width, itemsize = (int(v) for v in self.index[row, column])
        if length < 0:
            return None if length == _NULL else NOT_STORED
        with open(self.path, "rb") as f:
            f.seek(offset)
            return _unpack(f.read(length), height, width, itemsize)


class _TableRows:
    """Rows of an in-memory or memory-mapped Arrow table (a `datasets` dataset)."""

    GROUP = 256

    def __init__(self, table: pa.Table):
        self.table = table
        self.names = table.column_names
        self.n = table.num_rows

    def groups(self):
        return range((self.n + self.GROUP - 1) // self.GROUP)

    def read_group(self, g: int, columns: list[str]) -> pa.Table:
        return self.table.select(columns).slice(g * self.GROUP, self.GROUP)

    def group_start(self, g: int) -> int:
        return g * self.GROUP

    def group_size(self, g: int) -> int:
        return min(self.GROUP, self.n - g * self.GROUP)

    def row(self, i: int, columns: list[str]) -> dict:
        t = self.table.select(columns).slice(i, 1)
        return {c: t.column(c)[0] for c in columns}


def _open_hub(repo_id: str, split: str) -> _TableRows:
    try:
        import datasets

        ds = datasets.load_dataset(repo_id, split=split)
    except Exception as e:
        raise DatasetNotFoundError(
            f"rapidata: {repo_id!r} is not a local folder and could not be loaded with "
            f"datasets.load_dataset ({type(e).__name__}: {e})"
        ) from None
    return _TableRows(ds.data.table)


class RapidataDataset(Dataset):
    """`open_dataset("rapidata:/local/parquet/dir")` or `open_dataset("rapidata:Org/name")`."""

    name = "Rapidata rich feedback"

    def __init__(self, path: str, split: str = "train", progress=None, cache: bool = True,
                 heatmap_cache: bool = True):
        """`cache`: keep the frame in cache/frames; `heatmap_cache`: keep the checked heatmaps of local
        parquet files in cache/rapidata-maps (about the size of the files' heatmap columns), so that a
        record reads only its own maps instead of decoding its whole row group."""
        super().__init__()
        local = Path(path).expanduser()
        if local.exists():
            # The hub's layout is DIR/data/<split>-*.parquet; look there and in DIR itself, never deeper
            # (a recursive walk of a user's path could cross a whole filesystem).
            files = [local] if local.is_file() else sorted({*local.glob("*.parquet"), *local.glob("*/*.parquet")})
            if not files:
                raise DatasetNotFoundError(f"{local}: no .parquet files found")
            if split and local.is_dir():
                named = [f for f in files if f.name.startswith((f"{split}-", f"{split}.")) or f.parent.name == split]
                if not named and split != "train":
                    raise DatasetNotFoundError(f"rapidata: no parquet files for split {split!r} under {local}")
                files = named or files  # an unnamed dump is the train split
            self._rows = _ParquetRows(files)
            key_src = file_fingerprint(files)
        elif str(path).count("/") == 1 and not str(path).startswith((".", "/", "~")):
            self._rows = _open_hub(str(path), split)
            key_src = [str(path), split, self._rows.n]
        else:
            raise DatasetNotFoundError(f"rapidata: {path} does not exist")
        self.path = str(path)
        # Image paths in the rows are resolved against (and kept inside) this folder.
        self._base = (local if local.is_dir() else local.parent) if local.exists() else None
        self.split_name = split or "train"
        self.spec = f"rapidata:{path}" + (f" (split={self.split_name})" if self.split_name != "train" else "")
        names = set(self._rows.names)
        self.prompt_col = "prompt" if "prompt" in names else ("sentence" if "sentence" in names else None)
        self.image_col = "image" if "image" in names else ("image_name" if "image_name" in names else None)
        if self.prompt_col is None or "word_scores" not in names:
            raise DatasetFormatError(
                f"rapidata: {path} lacks the Rapidata columns (need prompt/sentence and word_scores; "
                f"found {sorted(names)[:12]})"
            )
        self.score_cols = {}
        for raw, canon in SCORE_COLUMNS.items():
            if f"{raw}_score_norm" in names:
                self.score_cols[canon] = (f"{raw}_score_norm", f"{raw}_score" if f"{raw}_score" in names else None)
            elif f"{raw}_score" in names:
                self.score_cols[canon] = (None, f"{raw}_score")
        self.heatmap_cols = {c: n for c, n in HEATMAP_COLUMNS.items() if c in names}
        self._map_caches = self._open_heatmap_caches() if heatmap_cache and self.heatmap_cols else {}
        key = cache_key("rapidata", key_src, self.split_name)
        build = lambda: self._build_frame(progress)  # noqa: E731
        frame = cached_frame("rapidata", key, build) if cache else build()
        if any(c is None for c in self._map_caches.values()):  # the frame came from cache/frames
            self._build_frame(progress)  # one scan that writes the missing heatmap caches
        for where, why in zip(frame.pop("_skip_where"), frame.pop("_skip_reason")):
            if isinstance(why, str) and why:
                self.skipped.append(SkippedRow(where, why))
        ok = frame["id"].notna().to_numpy()
        self._row_of = frame.pop("_row").to_numpy()[ok]
        self._frame = with_standard_columns(frame[ok].reset_index(drop=True))

    # --- one row → record pieces ----------------------------------------------------------------
    def _scalar_columns(self) -> list[str]:
        cols = [self.prompt_col, "word_scores"]
        for norm, raw in self.score_cols.values():
            cols += [c for c in (norm, raw) if c]
        return cols

    def _pieces(self, values: dict):
        """Column values of one row → (prompt, scores, words, meta); raises DatasetFormatError.

        Scores: the `_norm` column (or, in older revisions, the 1–5 Likert mean as (s − 1) / 4) must
        be a finite number on its scale, else the row is skipped with the column and value named: a
        score off its scale means the row is not what we think it is, and clipping 7.0 to 1.0 would
        invent a rating. A Likert mean that is only informational (a valid `_norm` exists) is kept
        raw in `meta["raw_scores"]` and the frame, with a note in `meta["notes"]`."""
        prompt = values[self.prompt_col]
        if prompt is None:
            raise DatasetFormatError(f"{self.prompt_col} is missing (null)")
        if not isinstance(prompt, str):
            raise DatasetFormatError(f"{self.prompt_col} is not text: {_short(prompt)}")
        words, total, raw_pairs = parse_word_scores(values["word_scores"])
        scores, raw_scores, notes = {}, {}, []
        derived = []
        for canon, (norm_col, raw_col) in self.score_cols.items():
            raw = values.get(raw_col) if raw_col else None
            norm = values.get(norm_col) if norm_col else None
            for col, v in ((norm_col, norm), (raw_col, raw)):
                if v is not None and _number(v) is None:
                    raise DatasetFormatError(f"{col} is not a number: {_short(v)}")
            if raw is not None:
                raw_scores[raw_col] = float(raw)
            if norm is not None:
                if not 0.0 <= norm <= 1.0:  # False for NaN too
                    raise DatasetFormatError(f"{norm_col} = {float(norm)!r} is outside [0, 1]")
                scores[canon] = float(norm)
                if raw is not None and not 1.0 <= raw <= 5.0:
                    notes.append(f"{raw_col} = {float(raw)!r} is outside the 1–5 scale; kept raw, "
                                 f"the score comes from {norm_col}")
            elif raw is not None:
                if not 1.0 <= raw <= 5.0:
                    raise DatasetFormatError(f"{raw_col} = {float(raw)!r} is outside the 1–5 scale")
                scores[canon] = (float(raw) - 1.0) / 4.0
                derived.append(canon)
        meta = {"source": "rapidata", "split": self.split_name, "raw_scores": raw_scores,
                "word_scores_raw": raw_pairs, "word_annotator_weight": total}
        if derived:
            meta["scores_from_likert"] = derived  # no _norm column: (s − 1) / 4
        if notes:
            meta["notes"] = notes
        return prompt, scores, words, meta

    def _heatmaps(self, values: dict, as_float32: bool = True) -> dict:
        heatmaps = {}
        for c, name in self.heatmap_cols.items():
            try:
                hm = decode_heatmap(values[c]) if as_float32 else heatmap_array(values[c])
            except DatasetFormatError as e:
                raise DatasetFormatError(f"{c}: {e}") from None
            if hm is not None:
                heatmaps[name] = hm
        return heatmaps

    # --- the heatmap caches -----------------------------------------------------------------------
    def _open_heatmap_caches(self) -> dict:
        """{file index: HeatmapCache, or None where it is missing (the next scan writes it)}; {} for a
        hub table (memory-mapped: one row's maps are read without decoding its neighbours)."""
        if not isinstance(self._rows, _ParquetRows):
            return {}
        caches, rows = {}, self._rows
        for k, f in enumerate(rows.files):
            n = rows.file_rows(k)
            try:
                path = heatmap_cache_path(f, list(self.heatmap_cols))
            except OSError:  # no cache folder: decode from the parquet file
                return {}
            try:
                caches[k] = HeatmapCache(path, n, len(self.heatmap_cols)) if path.exists() else None
            except (OSError, ValueError) as e:  # damaged or foreign: rebuilt, never fatal
                log.info("heatmap cache %s unreadable (%s); rebuilding it", path, e)
                path.unlink(missing_ok=True)
                caches[k] = None
        return caches

    def _cache_writers(self) -> dict:
        """{file index: HeatmapCacheWriter} for the files whose heatmap cache is missing."""
        writers, rows = {}, self._rows
        for k, have in self._map_caches.items():
            if have is None:
                try:
                    writers[k] = HeatmapCacheWriter(heatmap_cache_path(rows.files[k], list(self.heatmap_cols)),
                                                    rows.file_rows(k), len(self.heatmap_cols))
                except OSError as e:  # a cache folder that cannot be written: fine, only slower
                    log.info("heatmap cache for %s not written (%s)", rows.files[k], e)
        return writers

    def _cached_heatmaps(self, i: int) -> dict | None:
        """Row i's maps from its file's heatmap cache; None if not cached there."""
        if not self._map_caches:
            return None
        k = int(np.searchsorted(self._rows.file_starts, i, side="right") - 1)
        cache = self._map_caches.get(k)
        if cache is None:
            return None
        heatmaps = {}
        for j, name in enumerate(self.heatmap_cols.values()):
            try:
                hm = cache.get(i - self._rows.file_starts[k], j)
            except (OSError, ValueError, pa.ArrowException) as e:  # removed or damaged since the open
                log.info("heatmap cache %s unreadable (%s); decoding from the parquet file", cache.path, e)
                self._map_caches[k] = None
                return None
            if hm is NOT_STORED:
                return None
            if hm is not None:
                heatmaps[name] = hm
        return heatmaps

    # --- the first scan ---------------------------------------------------------------------------
    def _scan_group(self, g: int) -> list[dict]:
        """One row group → one entry per row: its frame row (or skip) and its checked heatmaps in the
        column's own dtype. Runs in worker threads: Arrow's reads and numpy's checks release the GIL."""
        cols = self._scalar_columns()
        start = self._rows.group_start(g)
        try:
            table = self._rows.read_group(g, cols + list(self.heatmap_cols))
            scalars = table.select(cols).to_pylist()
        except (pa.ArrowException, OSError) as e:  # a damaged row group costs its rows, not the dataset
            n = self._rows.group_size(g)
            return [{"id": None, "_row": start, "_skip_where": f"rows {start}–{start + n - 1}",
                     "_skip_reason": f"row group unreadable ({type(e).__name__}: {_short(str(e))})"}]
        hm_cols = {c: table.column(c) for c in self.heatmap_cols}
        out = []
        for k, values in enumerate(scalars):
            i = start + k
            try:
                prompt, scores, words, meta = self._pieces(values)
                heatmaps = self._heatmaps({c: col[k] for c, col in hm_cols.items()}, as_float32=False)
            except DatasetFormatError as e:
                out.append({"id": None, "_row": i, "_skip_where": f"row {i}", "_skip_reason": str(e)})
                continue
            # heatmap_mass is a float64 mean: the same from float16 as from its float32 cast
            row = frame_row(f"r{i:06d}", prompt, self.split_name, scores, heatmaps, words,
                            **meta["raw_scores"], _row=i, _skip_where="", _skip_reason="")
            out.append({**row, "_maps": heatmaps})
        return out

    def _build_frame(self, progress) -> pd.DataFrame:
        """Scan every row group once (a few at a time in threads, consumed in order, so memory holds a
        few row groups at most), building the frame and writing the missing heatmap caches."""
        writers = self._cache_writers()
        groups = list(self._rows.groups())
        workers = max(1, min(8, os.cpu_count() or 1))  # memory: at most this many row groups in flight
        rows = []
        try:
            with ThreadPoolExecutor(workers) as pool:
                pending = [pool.submit(self._scan_group, g) for g in groups[:workers]]
                for gi, g in enumerate(groups):
                    entries = pending.pop(0).result()
                    if gi + workers < len(groups):
                        pending.append(pool.submit(self._scan_group, groups[gi + workers]))
                    self._write_maps(g, entries, writers)
                    rows += entries
                    if progress is not None:
                        progress(gi + 1, len(groups))
            for k, w in writers.items():
                w.close()
                self._map_caches[k] = HeatmapCache(w.path, len(w.index), len(self.heatmap_cols))
        except BaseException:
            for w in writers.values():
                w.abort()
            raise
        if not rows:
            return pd.DataFrame(columns=["id", "prompt", "split", "_row", "_skip_where", "_skip_reason"])
        return pd.DataFrame(rows)

    def _write_maps(self, g: int, entries: list[dict], writers: dict) -> None:
        """Move each kept row's maps (popped from its entry) into its file's heatmap cache writer."""
        k = self._rows.group_file(g) if isinstance(self._rows, _ParquetRows) else None
        writer = writers.get(k)
        for entry in entries:
            maps = entry.pop("_maps", None)
            if writer is None or maps is None:
                continue
            row = entry["_row"] - self._rows.file_starts[k]
            for j, name in enumerate(self.heatmap_cols.values()):
                writer.add(row, j, maps.get(name))

    def _load(self, pos: int) -> Record:
        i = int(self._row_of[pos])
        rec_id = str(self._frame["id"].iat[pos])
        scalars = {c: v.as_py() for c, v in self._rows.row(i, self._scalar_columns()).items()}
        prompt, scores, words, meta = self._pieces(scalars)
        heatmaps = self._cached_heatmaps(i)
        if heatmaps is None:  # no heatmap cache (or a hub table): decode from the row's group
            heatmaps = self._heatmaps(self._rows.row(i, list(self.heatmap_cols))) if self.heatmap_cols else {}
        meta["row"] = i
        loader = None
        if self.image_col is not None:
            rows, col = self._rows, self.image_col
            base = self._base  # None for a hub table: its paths are not relative to anything here

            def read_path(rel) -> bytes | None:
                # The path comes from the data: refuse one that leaves the dataset folder
                # (`../../x.png`, an absolute path, a symlink out), and say so.
                if not isinstance(rel, str) or base is None:
                    return None
                try:
                    path = (base / rel).resolve()
                    inside = path.is_relative_to(base.resolve())
                    data = path.read_bytes() if inside and path.is_file() else None
                except (OSError, ValueError) as e:  # a NUL byte, a name too long, no permission
                    raise ImageLoadError(f"{rec_id}: image path {_short(rel)} cannot be read ({type(e).__name__})") from None
                if not inside:
                    raise ImageLoadError(f"{rec_id}: image path {_short(rel)} points outside the dataset folder")
                return data

            def loader():
                value = rows.row(i, [col])[col].as_py()
                if isinstance(value, dict):
                    data = value.get("bytes")
                    if data is None and value.get("path"):
                        data = read_path(value["path"])
                elif isinstance(value, str):  # image_name
                    data = read_path(value)
                else:
                    data = value
                if not data:
                    raise ImageLoadError(f"{rec_id}: the row holds no image bytes")
                return load_image(data, max_side=None, name=rec_id)

        return Record(rec_id, prompt, scores, heatmaps, words, meta, load_image=loader)
