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

def decode_heatmap(value) -> np.ndarray | None:
    """A 2-D float16 list (pyarrow ListScalar, or a ListArray of rows) → float32 H×W in [0, 1].

    Goes through Arrow's flat value buffer and numpy (no Python loop over pixels); null = not
    collected (None); per-pixel nulls become 0. Ragged rows raise `DatasetFormatError`."""
    if isinstance(value, pa.Scalar):
        if not value.is_valid:
            return None
        rows = value.values
    else:
        rows = value
    if rows is None:
        return None
    if isinstance(rows, pa.ChunkedArray):
        rows = rows.combine_chunks()
    n_rows = len(rows)
    if n_rows == 0:
        return np.zeros((0, 0), dtype=np.float32)
    offsets = rows.offsets.to_numpy()
    widths = np.diff(offsets)
    if rows.null_count or not np.all(widths == widths[0]):
        raise DatasetFormatError("heatmap rows have different lengths (or null rows)")
    flat = rows.values.slice(offsets[0], offsets[-1] - offsets[0])
    out = flat.to_numpy(zero_copy_only=False).astype(np.float32)  # nulls → NaN
    np.nan_to_num(out, copy=False, nan=0.0)
    return np.clip(out.reshape(n_rows, int(widths[0])), 0.0, 1.0)


def parse_word_scores(text) -> tuple[list[tuple[str, float]], float, list]:
    """`word_scores` → (words with strength in [0, 1], estimated annotator weight, raw pairs).

    Accepts JSON (and the Python-literal spelling with single quotes); raises
    `DatasetFormatError` for anything that is not a list of [word, number] pairs."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return [], 0.0, []
    if isinstance(text, str):
        try:
            pairs = json.loads(text)
        except json.JSONDecodeError:
            try:
                pairs = ast.literal_eval(text)  # literals only: safe
            except (ValueError, SyntaxError):
                raise DatasetFormatError(f"word_scores is not a JSON list: {text[:60]!r}") from None
    else:
        pairs = text
    if not isinstance(pairs, (list, tuple)):
        raise DatasetFormatError(f"word_scores is not a list: {str(text)[:60]!r}")
    raw = []
    for p in pairs:
        if not (isinstance(p, (list, tuple)) and len(p) == 2 and isinstance(p[0], str)
                and isinstance(p[1], (int, float)) and not isinstance(p[1], bool) and np.isfinite(p[1])):
            raise DatasetFormatError(f"word_scores entry is not a [word, number] pair: {p!r}")
        raw.append((p[0], float(p[1])))
    no_mistakes = sum(s for w, s in raw if w.strip().lower() in NO_MISTAKES)
    word_pairs = [(w, s) for w, s in raw if w.strip().lower() not in NO_MISTAKES]
    top = max((s for _, s in word_pairs), default=0.0)
    total = no_mistakes + top
    words = [(w, float(np.clip(s / total, 0.0, 1.0)) if total > 0 else 0.0) for w, s in word_pairs]
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
            files = [local] if local.is_file() else sorted(local.rglob("*.parquet"))
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
        """Column values of one row → (prompt, scores, words, meta); raises DatasetFormatError."""
        prompt = values[self.prompt_col]
        prompt = "" if prompt is None else str(prompt)
        words, total, raw_pairs = parse_word_scores(values["word_scores"])
        scores, raw_scores = {}, {}
        derived = []
        for canon, (norm_col, raw_col) in self.score_cols.items():
            raw = values.get(raw_col) if raw_col else None
            norm = values.get(norm_col) if norm_col else None
            if raw is not None:
                raw_scores[raw_col] = float(raw)
            if norm is not None and np.isfinite(norm):
                scores[canon] = float(np.clip(norm, 0.0, 1.0))
            elif raw is not None and np.isfinite(raw):
                scores[canon] = float(np.clip((raw - 1.0) / 4.0, 0.0, 1.0))
                derived.append(canon)
        meta = {"source": "rapidata", "split": self.split_name, "raw_scores": raw_scores,
                "word_scores_raw": raw_pairs, "word_annotator_weight": total}
        if derived:
            meta["scores_from_likert"] = derived  # no _norm column: (s − 1) / 4
        return prompt, scores, words, meta

    def _build_frame(self, progress) -> pd.DataFrame:
        cols = self._scalar_columns()
        rows = []
        groups = list(self._rows.groups())
        for gi, g in enumerate(groups):
            table = self._rows.read_group(g, cols + list(self.heatmap_cols))
            start = self._rows.group_start(g)
            scalars = table.select(cols).to_pylist()
            hm_cols = {c: table.column(c) for c in self.heatmap_cols}
            for k, values in enumerate(scalars):
                i = start + k
                try:
                    prompt, scores, words, meta = self._pieces(values)
                    heatmaps = {}
                    for c, name in self.heatmap_cols.items():
                        hm = decode_heatmap(hm_cols[c][k])
                        if hm is not None:
                            heatmaps[name] = hm
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
        heatmaps = {}
        for c, name in self.heatmap_cols.items():
            hm = decode_heatmap(values[c])
            if hm is not None:
                heatmaps[name] = hm
        meta["row"] = i
        loader = None
        if self.image_col is not None:
            rows, col = self._rows, self.image_col
            base = Path(self.path) if Path(self.path).is_dir() else Path(self.path).parent

            def loader():
                value = rows.row(i, [col])[col].as_py()
                if isinstance(value, dict):
                    data = value.get("bytes")
                    if data is None and value.get("path"):
                        p = base / value["path"]
                        data = p.read_bytes() if p.is_file() else None
                elif isinstance(value, str):  # image_name
                    p = base / value
                    data = p.read_bytes() if p.is_file() else None
                else:
                    data = value
                if not data:
                    raise ImageLoadError(f"{rec_id}: the row holds no image bytes")
                return load_image(data, max_side=None, name=rec_id)

        return Record(rec_id, prompt, scores, heatmaps, words, meta, load_image=loader)
