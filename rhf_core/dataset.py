"""The record and dataset contract every source implements (docs/design.md section 2)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import pandas as pd
from PIL import Image

from rhf_core.errors import RecordNotFoundError
from rhf_core.heatmaps import heatmap_mass

SCORE_NAMES = ("plausibility", "alignment", "aesthetics", "overall")
HEATMAP_NAMES = ("implausibility", "misalignment")
# A word counts as flagged when at least half its annotators (or the label) marked it.
FLAGGED_WORD_STRENGTH = 0.5

_TOKEN_SPLIT = re.compile(r'[,.?!":; ]+')


def tokenize_prompt(prompt: str) -> list[str]:
    """RichHF-18K's prompt tokens: split on `,.?!":;` and space, empty pieces dropped."""
    return [t for t in _TOKEN_SPLIT.split(prompt) if t]


@dataclass
class Record:
    """One image with its rich feedback. `image` is decoded on first access (None if absent)."""

    id: str
    prompt: str
    scores: dict[str, float] = field(default_factory=dict)
    heatmaps: dict[str, np.ndarray] = field(default_factory=dict)
    words: list[tuple[str, float]] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    load_image: Callable[[], Image.Image | None] | None = field(default=None, repr=False, compare=False)
    _image: Image.Image | None = field(default=None, repr=False, compare=False)

    @property
    def image(self) -> Image.Image | None:
        if self._image is None and self.load_image is not None:
            self._image = self.load_image()
        return self._image

    @property
    def has_image(self) -> bool:
        return self.load_image is not None or self._image is not None

    @property
    def flagged_words(self) -> list[str]:
        return [t for t, s in self.words if s >= FLAGGED_WORD_STRENGTH]


@dataclass
class SkippedRow:
    """A row a reader could not use: where it was and why. Readers skip and count, never crash."""

    where: str
    reason: str


def frame_row(rec_id: str, prompt: str, split: str, scores: dict, heatmaps: dict, words: list, **extra) -> dict:
    """The scalar columns of one record, shared by every source's `frame`."""
    row = {"id": rec_id, "prompt": prompt, "split": split}
    for name in SCORE_NAMES:
        row[name] = float(scores[name]) if name in scores and scores[name] is not None else np.nan
    for name in HEATMAP_NAMES:
        hm = heatmaps.get(name)
        row[f"has_{name}"] = hm is not None
        row[f"{name}_mass"] = heatmap_mass(hm)
    row["n_words"] = len(words)
    flagged = [t for t, s in words if s >= FLAGGED_WORD_STRENGTH]
    row["n_flagged_words"] = len(flagged)
    row["flagged_words"] = " ".join(flagged)  # for word statistics without opening records
    row["max_word_strength"] = max((s for _, s in words), default=np.nan)
    row.update(extra)
    return row


STANDARD_COLUMNS = list(frame_row("", "", "", {}, {}, []))


def with_standard_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Add any standard column a frame lacks (e.g. every row of a source failed to parse)."""
    for col in STANDARD_COLUMNS:
        if col not in frame:
            frame[col] = pd.Series(dtype=object if col in ("id", "prompt", "split", "flagged_words") else float)
    return frame


class Dataset:
    """Base class: `len`, indexing by position, lookup by id, and `frame`.

    Subclasses set `name`, `spec` and `_frame` (one row per record, in record order, with at least
    the columns of `frame_row`), and implement `_load(pos) -> Record`.
    `skipped` lists rows the reader could not use.
    """

    name: str = "dataset"
    spec: str = ""

    def __init__(self):
        self._frame: pd.DataFrame | None = None
        self._id_index: dict[str, int] | None = None
        self.skipped: list[SkippedRow] = []

    # --- the contract -----------------------------------------------------------------------
    @property
    def frame(self) -> pd.DataFrame:
        return self._frame

    def __len__(self) -> int:
        return len(self.frame)

    def __getitem__(self, pos: int) -> Record:
        return self._load(self._position(pos))

    def _position(self, pos: int) -> int:
        n = len(self)
        if not isinstance(pos, (int, np.integer)):
            raise TypeError(f"index records by int position or use .get(id), not {type(pos).__name__}")
        if pos < 0:
            pos += n
        if not 0 <= pos < n:
            raise RecordNotFoundError(f"record index {pos} out of range for {n} records")
        return int(pos)

    def preview(self, pos: int) -> Record:
        """Record `pos` with what a thumbnail shows: id, prompt, scores and image. A source whose other
        fields (heatmaps, words, meta) cost extra to make leaves them empty here (`_preview`); the
        others give the whole record."""
        return self._preview(self._position(pos))

    def _preview(self, pos: int) -> Record:
        return self._load(pos)

    def __iter__(self) -> Iterator[Record]:
        for i in range(len(self)):
            yield self[i]

    def index_of(self, rec_id: str) -> int:
        """Position of the record with this id. Readers keep ids unique (the folder reader skips a
        later duplicate); should a source still repeat one, the first record wins, as there."""
        if self._id_index is None:
            ids = [str(v) for v in self.frame["id"].tolist()]
            # Built from the end, so a repeated id keeps its first position (2x faster than a loop:
            # 0.06 s at 200,000 records, paid by the first record opened).
            self._id_index = dict(zip(reversed(ids), range(len(ids) - 1, -1, -1)))
        try:
            return self._id_index[str(rec_id)]
        except KeyError:
            raise RecordNotFoundError(f"no record with id {rec_id!r} in {self.name}") from None

    def get(self, rec_id: str) -> Record:
        return self[self.index_of(rec_id)]

    @property
    def ids(self) -> list[str]:
        return self.frame["id"].astype(str).tolist()

    def subset(self, positions) -> "Dataset":
        """A view on the records at `positions` (e.g. a filtered frame's index)."""
        return SubsetDataset(self, np.asarray(positions, dtype=np.int64))

    def split(self, name: str) -> "Dataset":
        return self.subset(np.flatnonzero(self.frame["split"].to_numpy() == name))

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)

    def _load(self, pos: int) -> Record:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self):
        skipped = f", {self.n_skipped} rows skipped" if self.skipped else ""
        return f"<{type(self).__name__} {self.spec or self.name!r}: {len(self)} records{skipped}>"


class SubsetDataset(Dataset):
    def __init__(self, parent: Dataset, positions: np.ndarray):
        super().__init__()
        self.parent = parent
        self.positions = positions
        self.name = parent.name
        self.spec = parent.spec
        self.skipped = parent.skipped
        self._frame = parent.frame.iloc[positions].reset_index(drop=True)

    def _load(self, pos: int) -> Record:
        return self.parent[int(self.positions[pos])]
