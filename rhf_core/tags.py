"""Tags on records and named explorer views, kept per dataset in the runtime cache.

One JSON file per dataset spec, `cache/tags/<hash of the spec>.json`:
`{"spec": …, "tags": {record id: [tag, …]}, "views": {name: {widget key: value}}}`.
Every change re-reads the file, applies itself and writes the file atomically, so two sessions
tagging different records both keep their tags (two changes in the same instant: the later wins).
`with_tags(ds, tags)` carries tags into `export`: as `meta["tags"]` and a `tags` frame column,
both of which the folder format keeps.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

from rhf_core.cache import atomic_write_text, cache_dir, cache_key
from rhf_core.dataset import Dataset, Record
from rhf_core.errors import DatasetFormatError, InvalidArgumentError

MAX_TAG_LENGTH = 40
MAX_VIEW_NAME_LENGTH = 60
# Letters, digits, space and a few separators; no comma, as the `tags` column joins tags with ", ".
_TAG_CHARS = re.compile(r"[\w .:/+#-]+")
TAGS_COLUMN = "tags"


def normalize_tag(text: str) -> str:
    """A tag as stored: trimmed, inner whitespace collapsed, lower-case. Refuses empty, over-long or
    comma-holding tags with a message that says what a tag may hold."""
    tag = " ".join(str(text).split()).lower()
    if not tag:
        raise InvalidArgumentError("a tag cannot be empty")
    if len(tag) > MAX_TAG_LENGTH:
        raise InvalidArgumentError(f"a tag holds at most {MAX_TAG_LENGTH} characters, got {len(tag)}")
    if not _TAG_CHARS.fullmatch(tag):
        raise InvalidArgumentError(f"tag {tag!r}: use letters, digits, spaces and . : / + # - _ only")
    return tag


class TagStore:
    """The tags and saved views of one dataset (by its spec), on disk under `cache/tags/`."""

    def __init__(self, spec: str, folder: str | Path | None = None):
        self.spec = spec
        self.path = Path(folder or cache_dir("tags")) / f"{cache_key('tags', spec)}.json"

    # --- reading -----------------------------------------------------------------------------
    def read(self) -> dict:
        """The stored state (empty when nothing was saved). A damaged file is refused, never
        overwritten: it may hold someone's tags."""
        if not self.path.exists():
            return {"spec": self.spec, "tags": {}, "views": {}}
        try:
            state = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise DatasetFormatError(f"tags file {self.path} is unreadable ({type(e).__name__}); "
                                     "move it away to start with no tags") from None
        ok = (isinstance(state, dict) and isinstance(state.get("tags"), dict) and isinstance(state.get("views"), dict)
              and all(isinstance(v, list) and all(isinstance(t, str) for t in v) for v in state["tags"].values()))
        if not ok:
            raise DatasetFormatError(f"tags file {self.path} is not a tags file (expected "
                                     "{'tags': {id: [tag, …]}, 'views': {…}}); move it away to start with no tags")
        return state

    def tags(self) -> dict[str, list[str]]:
        """Record id → its sorted tags (records without tags are absent)."""
        return self.read()["tags"]

    def tag_counts(self) -> dict[str, int]:
        """Tag → number of records carrying it, by tag name."""
        counts: dict[str, int] = {}
        for tags in self.tags().values():
            for t in tags:
                counts[t] = counts.get(t, 0) + 1
        return dict(sorted(counts.items()))

    def ids_with(self, wanted, match_all: bool = False) -> set[str]:
        """Ids of the records carrying any (or, with `match_all`, every) tag of `wanted`."""
        wanted = {normalize_tag(t) for t in wanted}
        test = wanted.issubset if match_all else (lambda tags: not wanted.isdisjoint(tags))
        return {rec_id for rec_id, tags in self.tags().items() if wanted and test(set(tags))}

    def views(self) -> dict[str, dict]:
        return self.read()["views"]

    # --- changing ----------------------------------------------------------------------------
    def _write(self, state: dict) -> None:
        state["spec"] = self.spec
        atomic_write_text(self.path, json.dumps(state, ensure_ascii=False, indent=1, sort_keys=True) + "\n")

    def add(self, rec_ids, tag: str) -> int:
        """Tag the records `rec_ids`; returns how many did not carry the tag before."""
        tag, state = normalize_tag(tag), self.read()
        added = 0
        for rec_id in {str(r) for r in rec_ids}:
            current = set(state["tags"].get(rec_id, []))
            added += tag not in current
            state["tags"][rec_id] = sorted(current | {tag})
        self._write(state)
        return added

    def remove(self, rec_ids, tag: str) -> int:
        """Take `tag` off the records `rec_ids`; returns how many carried it."""
        tag, state = normalize_tag(tag), self.read()
        removed = 0
        for rec_id in {str(r) for r in rec_ids}:
            current = state["tags"].get(rec_id, [])
            if tag in current:
                removed += 1
                rest = [t for t in current if t != tag]
                if rest:
                    state["tags"][rec_id] = rest
                else:
                    del state["tags"][rec_id]
        self._write(state)
        return removed

    def seed(self, tags_by_id: dict[str, list[str]]) -> int:
        """Start an empty store from tags a dataset carries (an exported folder's `tags` column).
        Does nothing once the store has a file; returns how many records got tags."""
        if self.path.exists():
            return 0
        clean = {}
        for rec_id, tags in tags_by_id.items():
            good = sorted({normalize_tag(t) for t in tags if str(t).strip()})
            if good:
                clean[str(rec_id)] = good
        self._write({"tags": clean, "views": {}})
        return len(clean)

    def save_view(self, name: str, params: dict) -> None:
        """Keep `params` (widget key → JSON-able value) under `name`, replacing a view of that name."""
        name = " ".join(str(name).split())
        if not name or len(name) > MAX_VIEW_NAME_LENGTH:
            raise InvalidArgumentError(f"a view name holds 1 to {MAX_VIEW_NAME_LENGTH} characters")
        try:
            params = json.loads(json.dumps(params))  # a copy as it will be read back (tuples → lists)
        except (TypeError, ValueError) as e:
            raise InvalidArgumentError(f"view {name!r} holds a value that is not JSON ({e})") from None
        state = self.read()
        state["views"][name] = params
        self._write(state)

    def delete_view(self, name: str) -> bool:
        state = self.read()
        found = state["views"].pop(name, None) is not None
        self._write(state)
        return found


def tags_in_frame(frame) -> dict[str, list[str]]:
    """Tags a dataset carries itself (the `tags` column an export writes): id → tags."""
    if TAGS_COLUMN not in frame:
        return {}
    out = {}
    for rec_id, text in zip(frame["id"].astype(str), frame[TAGS_COLUMN]):
        if isinstance(text, str) and text.strip():
            out[rec_id] = [t.strip() for t in text.split(",") if t.strip()]
    return out


class TaggedDataset(Dataset):
    """`ds` with each record's tags in `meta["tags"]` and a `tags` frame column (", "-joined;
    "" for none), so that `export` writes them into labels.jsonl."""

    def __init__(self, parent: Dataset, tags: dict[str, list[str]]):
        super().__init__()
        self.parent, self.tags = parent, tags
        self.name, self.spec, self.skipped = parent.name, parent.spec, parent.skipped
        frame = parent.frame.copy()
        frame[TAGS_COLUMN] = [", ".join(tags.get(str(i), [])) for i in frame["id"]]
        self._frame = frame

    def _load(self, pos: int) -> Record:
        rec = self.parent[int(pos)]
        rec_tags = self.tags.get(str(rec.id))
        if rec_tags:
            # A copy: a source that caches its records keeps them as they were.
            rec = replace(rec, meta={**rec.meta, "tags": list(rec_tags)})
        return rec


def with_tags(ds: Dataset, tags: dict[str, list[str]]) -> Dataset:
    return TaggedDataset(ds, tags)
