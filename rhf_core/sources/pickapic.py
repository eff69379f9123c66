"""Pick-a-Pic v1 lookup by image uid: the prompts and images RichHF-18K's labels refer to.

A user holds Pick-a-Pic as parquet files (columns `caption`, `image_0_uid`, `image_1_uid`, `jpg_0`,
`jpg_1`, as on the Hugging Face hub) and/or as a folder of `{uid}.png|jpg|jpeg|webp` files. Only the
small columns are read to build the index; an image's bytes are read from its row group on demand.
Files are looked for in the folder and its `data/` subfolder only, never by a recursive walk.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rhf_core.dataset import SkippedRow
from rhf_core.errors import DatasetNotFoundError, DatasetSpecError, ImageLoadError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
INDEX_COLUMNS = ("caption", "image_0_uid", "image_1_uid")
# Where Pick-a-Pic files live: the folder itself and the hub layout's `data/` (as
# `huggingface-cli download ... --local-dir DIR` leaves it). Nothing else is walked: a user path
# such as "/" must not start a walk of the whole filesystem.
SUBFOLDERS = ("data",)


@dataclass(frozen=True)
class _ParquetRef:
    file: str
    row: int
    column: str  # jpg_0 or jpg_1


def _is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_image_bytes(t: pa.DataType) -> bool:
    """Raw bytes, or the hub's image struct {bytes, path} (whose path is never followed)."""
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return True
    if pa.types.is_struct(t):
        idx = t.get_field_index("bytes")
        return idx >= 0 and (pa.types.is_binary(t.field(idx).type) or pa.types.is_large_binary(t.field(idx).type))
    return False


def user_path(value, what: str) -> Path:
    """A path argument a user typed (spec, query string, sidebar) → an existing Path, or a clear RHFError.

    Blank, NUL bytes, an unknown `~user` and names the OS refuses (too long) are errors, not crashes;
    "" is refused rather than read as the working directory."""
    if not isinstance(value, (str, os.PathLike)):
        raise DatasetSpecError(f"{what}: expected a path, got {type(value).__name__}")
    text = os.fspath(value)
    shown = text if len(text) <= 200 else text[:200] + "…"
    if not isinstance(text, str) or not text.strip():
        raise DatasetSpecError(f"{what}: give a path")
    if "\x00" in text:
        raise DatasetSpecError(f"{what}: the path {shown!r} contains a NUL byte")
    try:
        path = Path(text).expanduser()
        exists = path.exists()
    except RuntimeError:  # expanduser of an unknown ~user
        raise DatasetNotFoundError(f"{what}: cannot expand {shown!r} (no such user)") from None
    except OSError as e:
        raise DatasetNotFoundError(f"{what}: cannot use {shown!r} ({e.strerror or e})") from None
    if not exists:
        raise DatasetNotFoundError(f"{what} path {shown} does not exist")
    return path


def _list_files(folder: Path) -> list[Path]:
    """The plain files directly in `folder` (not recursive); unreadable folders are a clear error."""
    try:
        with os.scandir(folder) as it:
            return sorted(Path(e.path) for e in it if e.is_file())
    except PermissionError:
        raise DatasetNotFoundError(f"Pick-a-Pic folder {folder}: cannot be listed (permission denied)") from None
    except OSError as e:
        raise DatasetNotFoundError(f"Pick-a-Pic folder {folder}: cannot be listed ({e.strerror or e})") from None


class PickAPic:
    """Captions and images by uid. `skipped` lists files that could not be used, with the reason."""

    def __init__(self, path: str | Path):
        root = user_path(path, "Pick-a-Pic")
        if root.is_file():
            files = [root]
        else:
            files = _list_files(root)
            for sub in SUBFOLDERS:
                if (root / sub).is_dir():
                    files += _list_files(root / sub)
        self.root = root
        self.files = files
        self.skipped: list[SkippedRow] = []
        self.captions: dict[str, str] = {}
        self._refs: dict[str, _ParquetRef] = {}
        self._files: dict[str, Path] = {}
        self._row_starts: dict[str, np.ndarray] = {}
        parquets = [p for p in files if p.suffix == ".parquet"]
        for p in files:
            if p.suffix.lower() in IMAGE_SUFFIXES:
                self._files[p.stem] = p
        used = sum(self._index_parquet(p) for p in parquets)
        if not used and not self._files:
            where = f"{root}" + "".join(f" or {root / s}" for s in SUBFOLDERS) if root.is_dir() else f"{root}"
            why = "".join(f"; {s.where}: {s.reason}" for s in self.skipped[:3])
            raise DatasetNotFoundError(
                f"no Pick-a-Pic parquet files and no {{uid}}.png/.jpg images found in {where}{why}"
            )

    def _index_parquet(self, path: Path) -> bool:
        """Index one parquet file's captions and image cells; a file that is not usable Pick-a-Pic
        is skipped with its reason (a stray file beside the shards must not stop the others)."""
        try:
            pf = pq.ParquetFile(path)
            schema = pf.schema_arrow
        except PermissionError:
            self.skipped.append(SkippedRow(path.name, "cannot be read (permission denied)"))
            return False
        except (OSError, pa.ArrowException) as e:
            self.skipped.append(SkippedRow(path.name, f"not a readable parquet file ({e})"))
            return False
        missing = [c for c in INDEX_COLUMNS if c not in schema.names]
        if missing:
            self.skipped.append(SkippedRow(path.name, f"not a Pick-a-Pic parquet file (missing columns {missing})"))
            return False
        repeated = [c for c in (*INDEX_COLUMNS, "jpg_0", "jpg_1") if schema.names.count(c) > 1]
        if repeated:  # which of two same-named columns is meant cannot be known
            self.skipped.append(SkippedRow(path.name, f"columns {repeated} appear more than once"))
            return False
        wrong = [c for c in INDEX_COLUMNS if not _is_string(schema.field(c).type)]
        if wrong:
            self.skipped.append(SkippedRow(path.name, f"columns {wrong} are not text"))
            return False
        try:
            table = pf.read(columns=list(INDEX_COLUMNS))
        except (OSError, pa.ArrowException) as e:
            self.skipped.append(SkippedRow(path.name, f"cannot be read ({e})"))
            return False
        captions = table.column("caption").to_pylist()
        key = str(path)
        sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)]
        self._row_starts[key] = np.cumsum([0] + sizes)
        for which in (0, 1):
            col = f"jpg_{which}"
            has_col = col in schema.names and _is_image_bytes(schema.field(col).type)
            if col in schema.names and not has_col:
                # e.g. a column of file paths: never followed, so no image can be read from outside.
                self.skipped.append(SkippedRow(f"{path.name} column {col}",
                                               f"holds {schema.field(col).type}, not image bytes; its images are not used"))
            for row, uid in enumerate(table.column(f"image_{which}_uid").to_pylist()):
                if not uid:
                    continue
                self.captions.setdefault(uid, captions[row] or "")
                if has_col:
                    self._refs.setdefault(uid, _ParquetRef(key, row, col))
        return True

    def __len__(self) -> int:
        return len(set(self.captions) | set(self._files))

    def caption(self, uid: str) -> str | None:
        return self.captions.get(uid)

    def has_image(self, uid: str) -> bool:
        return uid in self._files or uid in self._refs

    def image_bytes(self, uid: str) -> bytes | None:
        """The encoded image of `uid` (None: none held); a file that cannot be read: `ImageLoadError`."""
        try:
            if uid in self._files:
                return self._files[uid].read_bytes()
            ref = self._refs.get(uid)
            if ref is None:
                return None
            starts = self._row_starts[ref.file]
            rg = int(np.searchsorted(starts, ref.row, side="right") - 1)
            column = _row_group_column(ref.file, rg, ref.column)
            value = column[ref.row - int(starts[rg])].as_py()
        except (OSError, pa.ArrowException) as e:
            raise ImageLoadError(f"Pick-a-Pic image {uid}: cannot be read ({getattr(e, 'strerror', None) or e})") from None
        if isinstance(value, dict):  # an `image` struct {bytes, path}: only the bytes are used
            value = value.get("bytes")
        return value if isinstance(value, (bytes, bytearray)) and value else None


@lru_cache(maxsize=4)
def _row_group_column(file: str, row_group: int, column: str):
    """One column of one row group; the few most recent are kept, so paging through is cheap."""
    return pq.ParquetFile(file).read_row_group(row_group, columns=[column]).column(0)
