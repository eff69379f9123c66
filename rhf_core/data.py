"""Open any rich-feedback source from one short spec string (the same in the UI, CLI and tests).

    open_dataset("shapes:n=500,seed=0")                     # embedded ShapesWorld (or open_dataset("shapes", n=500))
    open_dataset("richhf18k:/path/to/tfrecords,pickapic=/path/to/pickapic,split=test")
    open_dataset("rapidata:/path/to/parquet/dir,split=train")  # or "rapidata:Rapidata/<dataset id>"
    open_dataset("folder:/path/to/dir,split=dev")            # the project's own format

A spec is `SOURCE:PATH,KEY=VALUE,...` (`shapes` has no path: `shapes:n=500,seed=0`). The text after
`SOURCE:` is cut before every `,KEY=` whose KEY is one of that source's options (`SOURCE_OPTIONS`);
the first piece is the path, each other piece one option. A path or a value may therefore hold commas
and `=` (`folder:/data/a,b=c` is the folder "/data/a,b=c"), except the sequence `,KEY=` for an option
KEY of its source. Keyword arguments to `open_dataset` are the same options: one given both in the
spec and as an argument must agree, else the spec is refused (neither silently wins).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from rhf_core.dataset import HEATMAP_NAMES, SCORE_NAMES, Dataset, Record, SkippedRow
from rhf_core.errors import DatasetNotFoundError, DatasetSpecError
from rhf_core.shapes.dataset import ShapesDataset
from rhf_core.sources.folder import FolderDataset, export
from rhf_core.sources.rapidata import RapidataDataset
from rhf_core.sources.richhf import RichHFDataset

DEFAULT_SPEC = "shapes"
SOURCES = ("shapes", "richhf18k", "rapidata", "folder")
SHAPES_SPLITS = ("train", "dev", "test")
_ALIASES = {"richhf": "richhf18k", "richhf-18k": "richhf18k", "shapesworld": "shapes"}

# The options each source takes, in a spec or as keyword arguments, with the type a spec's text becomes.
SOURCE_OPTIONS = {
    "shapes": {"n": int, "seed": int, "size": int, "raters": str, "split": str, "cache": bool},
    "richhf18k": {"pickapic": str, "split": str, "cache": bool},
    "rapidata": {"split": str, "cache": bool, "heatmap_cache": bool},
    "folder": {"split": str, "cache": bool},
}
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
# Something shaped like an option (`word=...`) after a comma, for a better message than "not found".
_OPTION_LIKE = re.compile(r",\s*([A-Za-z_][A-Za-z0-9_]*)\s*=")

__all__ = ["open_dataset", "spec_split", "export", "parse_spec", "read_spec", "DatasetSpec", "Dataset", "Record", "SkippedRow",
           "SCORE_NAMES", "HEATMAP_NAMES", "DEFAULT_SPEC", "SOURCES", "SOURCE_OPTIONS"]


@dataclass(frozen=True)
class DatasetSpec:
    """A parsed spec: the source, its path ("" for shapes) and its options (typed)."""

    source: str
    path: str = ""
    options: dict = field(default_factory=dict)

    def __str__(self) -> str:
        """The spec text that reads back to this spec (`read_spec(str(s)) == s`)."""
        parts = [self.path] if self.source != "shapes" else []
        for key, value in self.options.items():
            parts.append(f"{key}={str(value).lower() if isinstance(value, bool) else value}")
        return f"{self.source}:{','.join(parts)}" if parts else self.source


def _known(source: str) -> str:
    return ", ".join(SOURCE_OPTIONS[source])


def _typed(source: str, key: str, value):
    """An option's text (from a spec) as its type; keyword values pass through unchanged."""
    kind = SOURCE_OPTIONS[source][key]
    if not isinstance(value, str):
        return value
    text = value.strip()
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise DatasetSpecError(f"{source}: {key} must be a whole number, got {text!r}") from None
    if kind is bool:
        if text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        raise DatasetSpecError(f"{source}: {key} must be true or false, got {text!r}")
    if not text:
        raise DatasetSpecError(f"{source}: {key}= needs a value")
    return text


def _option_pieces(source: str, rest: str) -> tuple[str, list[str]]:
    """(path, ['key=value', ...]): `rest` cut before every `,KEY=` with KEY an option of `source`."""
    if source == "shapes":  # no path, and no value of shapes holds a comma
        return "", [p.strip() for p in rest.split(",") if p.strip()]
    keys = "|".join(map(re.escape, SOURCE_OPTIONS[source]))
    path, *pieces = re.split(rf",(?=\s*(?:{keys})\s*=)", rest)
    return path.strip(), pieces


def _spec_options(source: str, pieces: list[str]) -> dict:
    options = {}
    for piece in pieces:
        key, eq, value = piece.partition("=")
        key = key.strip()
        if not eq:
            raise DatasetSpecError(f"{source} options are key=value pairs separated by commas, got {piece!r}")
        if key not in SOURCE_OPTIONS[source]:
            raise DatasetSpecError(f"{source}: unknown options [{key!r}]; use {_known(source)}")
        if key in options:
            raise DatasetSpecError(f"{source}: {key} is given twice in the spec")
        options[key] = _typed(source, key, value)
    return options


# Recognising a bare path looks this deep and at this many directory entries at most: `rglob` on
# "/" or a home folder walked the whole tree (minutes, and PermissionError on the way).
_SNIFF_DEPTH = 3
_SNIFF_ENTRIES = 20_000


def _holds(path: Path, suffix: str) -> bool:
    """Whether `path` or a folder at most _SNIFF_DEPTH levels below it holds a `suffix` file (bounded walk)."""
    if path.is_file():
        return path.suffix == suffix
    level, seen = [str(path)], 0
    for _ in range(_SNIFF_DEPTH):
        below = []
        for folder in level:
            try:
                with os.scandir(folder) as entries:
                    for entry in entries:
                        seen += 1
                        if seen > _SNIFF_ENTRIES:
                            return False
                        if entry.name.endswith(suffix) and entry.is_file():
                            return True
                        if entry.is_dir(follow_symlinks=False) and not entry.name.startswith("."):
                            below.append(entry.path)
            except OSError:  # unreadable folder: not ours to read
                continue
        level = below
    return False


def read_spec(spec: str) -> DatasetSpec:
    """'SOURCE:PATH,key=value,...' → DatasetSpec; a bare existing path is recognised by its files.

    Refuses (DatasetSpecError) an empty spec, an unknown source, an option the source does not take
    (naming those it does), an option given twice and a value of the wrong type."""
    if not isinstance(spec, str) or not spec.strip():
        raise DatasetSpecError("empty dataset spec; try 'shapes', 'richhf18k:/dir', 'rapidata:/dir' or 'folder:/dir'")
    spec = spec.strip()
    head, sep, rest = spec.partition(":")
    source = _ALIASES.get(head.lower(), head.lower())
    if source in SOURCES:
        path, pieces = _option_pieces(source, rest)
        return DatasetSpec(source, path, _spec_options(source, pieces))
    try:
        path = Path(spec).expanduser()
    except RuntimeError:  # "~name" of no such user: not a path
        path = Path(spec)
    if path.exists():
        if (path / "labels.jsonl").is_file():
            return DatasetSpec("folder", spec)
        if path.suffix == ".tfrecord" or (path.is_dir() and any(path.glob("*.tfrecord"))):
            return DatasetSpec("richhf18k", spec)
        if _holds(path, ".parquet"):
            return DatasetSpec("rapidata", spec)
    raise DatasetSpecError(
        f"unknown dataset spec {spec!r}: use shapes[:n=…,seed=…], richhf18k:PATH[,pickapic=PATH], "
        "rapidata:PATH_OR_HUB_ID or folder:PATH (each may end in ,split=…)"
    )


def parse_spec(spec: str) -> tuple[str, str]:
    """'SOURCE:PATH,key=value,...' → (source, path), the options left out (see `read_spec`)."""
    parsed = read_spec(spec)
    return parsed.source, parsed.path


def _merged_options(parsed: DatasetSpec, options: dict) -> dict:
    """The spec's options with the keyword ones: unknown keys and disagreeing values are refused."""
    source = parsed.source
    given = {k: v for k, v in options.items() if v is not None}
    unknown = set(given) - set(SOURCE_OPTIONS[source])
    if unknown:
        raise DatasetSpecError(f"{source}: unknown options {sorted(unknown)}; use {_known(source)}")
    merged = dict(parsed.options)
    for key, value in given.items():
        value = _typed(source, key, value)
        if key in merged and str(merged[key]) != str(value):
            raise DatasetSpecError(f"{source}: {key} is given twice, {merged[key]!r} in the spec and {value!r} "
                                   "as an argument; give it once")
        merged[key] = value
    return merged


def _check_path(parsed: DatasetSpec, spec: str) -> None:
    """A path that does not exist but ends in something shaped like `,word=…`: a misspelt option, most
    likely; say which options the source takes rather than only 'not found'."""
    if not parsed.path:
        raise DatasetSpecError(f"{parsed.source}: give a path, e.g. '{parsed.source}:/path/to/data'")
    looks = _OPTION_LIKE.search(parsed.path)
    if looks and not Path(parsed.path).expanduser().exists():
        raise DatasetSpecError(f"{parsed.source}: unknown options [{looks.group(1)!r}] in {spec!r}; use "
                               f"{_known(parsed.source)} (or, if it is part of the path, that path does not exist)")


def spec_split(spec: str, fallback: str | None = None) -> str | None:
    """The split a spec names (`…,split=test`), else `fallback`: how a command whose own split
    argument was left empty ('') defers to the spec instead of conflicting with it."""
    return read_spec(spec).options.get("split") or fallback


def open_dataset(spec: str = DEFAULT_SPEC, split: str | None = None, progress=None, **options) -> Dataset:
    """Open a dataset from a spec; `split` keeps one split; `progress(done, total)` reports building.

    Options (in the spec or as keyword arguments, see the module docstring): every source — split,
    cache; shapes — n, seed, size, raters ('richhf' | 'rapidata'); richhf18k — pickapic (Pick-a-Pic
    parquet dir or image folder); rapidata — heatmap_cache (the decoded-heatmap cache that makes a
    record's heatmaps fast; `split` picks the HF split, default train)."""
    parsed = read_spec(spec)
    source = parsed.source
    opts = _merged_options(parsed, {**options, "split": split})
    split = opts.pop("split", None)
    if source == "shapes":
        if split and split not in SHAPES_SPLITS:  # an unknown name used to give an empty dataset silently
            raise DatasetSpecError(f"shapes: split must be one of {', '.join(SHAPES_SPLITS)}, got {split!r}")
        ds = ShapesDataset(progress=progress, **opts)
        return ds.split(split) if split else ds
    _check_path(parsed, spec)
    if source == "richhf18k":
        return RichHFDataset(parsed.path, split=split, progress=progress, **opts)
    if source == "rapidata":
        return RapidataDataset(parsed.path, split=split or "train", progress=progress, **opts)
    if source == "folder":
        ds = FolderDataset(parsed.path, **opts)
        return _folder_split(ds, split) if split else ds
    raise DatasetNotFoundError(spec)  # pragma: no cover - read_spec covers every source


def _folder_split(ds: Dataset, split: str) -> Dataset:
    """A folder's split by name; a name no record has is refused (it used to give an empty dataset)."""
    names = sorted(str(x) for x in ds.frame["split"].dropna().unique())
    if split not in names:
        raise DatasetSpecError(f"folder: no record has split {split!r}; its splits are {', '.join(names) or 'none'}")
    return ds.split(split)
