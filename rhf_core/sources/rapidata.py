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

The dataset is never loaded whole: the frame is built one row group at a time from the small
columns (heatmaps decoded through pyarrow buffers and numpy, then dropped) and cached; a record
reads only its own row group.
"""

from __future__ import annotations

import ast
import json
import math
import reprlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from rhf_core.cache import cache_key, cached_frame, file_fingerprint
from rhf_core.dataset import Dataset, Record, SkippedRow, frame_row, with_standard_columns
from rhf_core.errors import DatasetFormatError, DatasetNotFoundError, ImageLoadError
from rhf_core.images import load_image

NO_MISTAKES = {"[no_mistakes]", "[no_mistake]"}
SCORE_COLUMNS = {"alignment": "alignment", "coherence": "plausibility", "style": "aesthetics"}
HEATMAP_COLUMNS = {"coherence_heatmap": "implausibility", "alignment_heatmap": "misalignment"}


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
    out = flat.to_numpy(zero_copy_only=False).astype(np.float32)  # nulls → NaN, told apart below
    if flat.null_count:
        out[flat.is_null().to_numpy(zero_copy_only=False)] = 0.0
    if not np.all(np.isfinite(out)):
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
        f, rg, _, _ = self._groups[g]
        return _read_row_group(f, rg, tuple(columns))

    def group_start(self, g: int) -> int:
        return self._groups[g][2]

    def group_size(self, g: int) -> int:
        return self._groups[g][3]

    def row(self, i: int, columns: list[str]) -> dict:
        g = int(np.searchsorted(self._starts, i, side="right") - 1)
        table = self.read_group(g, columns)
        k = i - self._groups[g][2]
        return {c: table.column(c)[k] for c in columns}


@lru_cache(maxsize=4)
def _read_row_group(file: str, row_group: int, columns: tuple) -> pa.Table:
    return pq.ParquetFile(file).read_row_group(row_group, columns=list(columns))


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

    def __init__(self, path: str, split: str = "train", progress=None, cache: bool = True):
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
        key = cache_key("rapidata", key_src, self.split_name)
        build = lambda: self._build_frame(progress)  # noqa: E731
        frame = cached_frame("rapidata", key, build) if cache else build()
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

    def _heatmaps(self, values: dict) -> dict:
        heatmaps = {}
        for c, name in self.heatmap_cols.items():
            try:
                hm = decode_heatmap(values[c])
            except DatasetFormatError as e:
                raise DatasetFormatError(f"{c}: {e}") from None
            if hm is not None:
                heatmaps[name] = hm
        return heatmaps

    def _build_frame(self, progress) -> pd.DataFrame:
        cols = self._scalar_columns()
        rows = []
        groups = list(self._rows.groups())
        for gi, g in enumerate(groups):
            start = self._rows.group_start(g)
            try:
                table = self._rows.read_group(g, cols + list(self.heatmap_cols))
                scalars = table.select(cols).to_pylist()
            except (pa.ArrowException, OSError) as e:  # a damaged row group costs its rows, not the dataset
                n = self._rows.group_size(g)
                rows.append({"id": None, "_row": start, "_skip_where": f"rows {start}–{start + n - 1}",
                             "_skip_reason": f"row group unreadable ({type(e).__name__}: {_short(str(e))})"})
                continue
            hm_cols = {c: table.column(c) for c in self.heatmap_cols}
            for k, values in enumerate(scalars):
                i = start + k
                try:
                    prompt, scores, words, meta = self._pieces(values)
                    heatmaps = self._heatmaps({c: col[k] for c, col in hm_cols.items()})
                except DatasetFormatError as e:
                    rows.append({"id": None, "_row": i, "_skip_where": f"row {i}", "_skip_reason": str(e)})
                    continue
                extra = {f"{c}": v for c, v in meta["raw_scores"].items()}
                rows.append(frame_row(f"r{i:06d}", prompt, self.split_name, scores, heatmaps, words,
                                      **extra, _row=i, _skip_where="", _skip_reason=""))
            if progress is not None:
                progress(gi + 1, len(groups))
        if not rows:
            return pd.DataFrame(columns=["id", "prompt", "split", "_row", "_skip_where", "_skip_reason"])
        return pd.DataFrame(rows)

    def _load(self, pos: int) -> Record:
        i = int(self._row_of[pos])
        rec_id = str(self._frame["id"].iat[pos])
        cols = self._scalar_columns() + list(self.heatmap_cols)
        values = self._rows.row(i, cols)
        scalars = {c: v.as_py() for c, v in values.items() if c not in self.heatmap_cols}
        prompt, scores, words, meta = self._pieces(scalars)
        heatmaps = self._heatmaps(values)
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
