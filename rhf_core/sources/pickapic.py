"""Pick-a-Pic v1 lookup by image uid: the prompts and images RichHF-18K's labels refer to.

A user holds Pick-a-Pic as parquet files (columns `caption`, `image_0_uid`, `image_1_uid`, `jpg_0`,
`jpg_1`, as on the Hugging Face hub) and/or as a folder of `{uid}.png|jpg|jpeg|webp` files. Only the
small columns are read to build the index; an image's bytes are read from its row group on demand.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from rhf_core.errors import DatasetFormatError, DatasetNotFoundError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
INDEX_COLUMNS = ("caption", "image_0_uid", "image_1_uid")


@dataclass(frozen=True)
class _ParquetRef:
    file: str
    row: int
    column: str  # jpg_0 or jpg_1


class PickAPic:
    def __init__(self, path: str | Path):
        root = Path(path).expanduser()
        if not root.exists():
            raise DatasetNotFoundError(f"Pick-a-Pic path {root} does not exist")
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        self.root = root
        self.captions: dict[str, str] = {}
        self._refs: dict[str, _ParquetRef] = {}
        self._files: dict[str, Path] = {}
        self._row_starts: dict[str, np.ndarray] = {}
        parquets = [p for p in files if p.suffix == ".parquet"]
        for p in files:
            if p.suffix.lower() in IMAGE_SUFFIXES:
                self._files[p.stem] = p
        for p in parquets:
            self._index_parquet(p)
        if not parquets and not self._files:
            raise DatasetNotFoundError(
                f"{root}: no Pick-a-Pic parquet files and no {{uid}}.png/.jpg images found"
            )

    def _index_parquet(self, path: Path) -> None:
        try:
            pf = pq.ParquetFile(path)
        except Exception as e:
            raise DatasetFormatError(f"{path}: not a readable parquet file ({e})") from None
        names = set(pf.schema_arrow.names)
        missing = [c for c in INDEX_COLUMNS if c not in names]
        if missing:
            raise DatasetFormatError(f"{path}: not a Pick-a-Pic parquet file (missing columns {missing})")
        table = pf.read(columns=list(INDEX_COLUMNS))
        captions = table.column("caption").to_pylist()
        key = str(path)
        sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)]
        self._row_starts[key] = np.cumsum([0] + sizes)
        for which in (0, 1):
            col = f"jpg_{which}"
            has_col = col in names
            for row, uid in enumerate(table.column(f"image_{which}_uid").to_pylist()):
                if uid is None:
                    continue
                uid = str(uid)
                self.captions.setdefault(uid, captions[row] or "")
                if has_col:
                    self._refs.setdefault(uid, _ParquetRef(key, row, col))

    def __len__(self) -> int:
        return len(set(self.captions) | set(self._files))

    def caption(self, uid: str) -> str | None:
        return self.captions.get(uid)

    def has_image(self, uid: str) -> bool:
        return uid in self._files or uid in self._refs

    def image_bytes(self, uid: str) -> bytes | None:
        if uid in self._files:
            return self._files[uid].read_bytes()
        ref = self._refs.get(uid)
        if ref is None:
            return None
        starts = self._row_starts[ref.file]
        rg = int(np.searchsorted(starts, ref.row, side="right") - 1)
        column = _row_group_column(ref.file, rg, ref.column)
        value = column[ref.row - int(starts[rg])].as_py()
        if isinstance(value, dict):  # an `image` struct {bytes, path}
            value = value.get("bytes")
        return value


@lru_cache(maxsize=4)
def _row_group_column(file: str, row_group: int, column: str):
    """One column of one row group; the few most recent are kept, so paging through is cheap."""
    return pq.ParquetFile(file).read_row_group(row_group, columns=[column]).column(0)
