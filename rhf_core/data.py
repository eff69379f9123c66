"""Open any rich-feedback source from one short spec string (the same in the UI, CLI and tests).

    open_dataset("shapes", n=500, seed=0)                  # embedded ShapesWorld (also "shapes:n=500,seed=0")
    open_dataset("richhf18k:/path/to/tfrecords", pickapic="/path/to/pickapic", split="test")
    open_dataset("rapidata:/path/to/parquet/dir")           # or "rapidata:Rapidata/<dataset id>"
    open_dataset("folder:/path/to/dir")                     # the project's own format
"""

from __future__ import annotations

import os
from pathlib import Path

from rhf_core.dataset import HEATMAP_NAMES, SCORE_NAMES, Dataset, Record, SkippedRow
from rhf_core.errors import DatasetNotFoundError, DatasetSpecError
from rhf_core.sources.folder import export

DEFAULT_SPEC = "shapes"
SOURCES = ("shapes", "richhf18k", "rapidata", "folder")
SHAPES_SPLITS = ("train", "dev", "test")
_ALIASES = {"richhf": "richhf18k", "richhf-18k": "richhf18k", "shapesworld": "shapes"}

__all__ = ["open_dataset", "export", "parse_spec", "Dataset", "Record", "SkippedRow",
           "SCORE_NAMES", "HEATMAP_NAMES", "DEFAULT_SPEC", "SOURCES"]


def _parse_options(text: str) -> dict:
    """'n=500,seed=0,raters=rapidata' → {'n': 500, 'seed': 0, 'raters': 'rapidata'}."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            raise DatasetSpecError(f"shapes options are key=value pairs separated by commas, got {part!r}")
        k, v = (s.strip() for s in part.split("=", 1))
        try:
            out[k] = int(v)
        except ValueError:
            out[k] = v
    return out


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


def parse_spec(spec: str) -> tuple[str, str]:
    """'source:argument' → (source, argument); a bare existing path is recognised by its files."""
    if not isinstance(spec, str) or not spec.strip():
        raise DatasetSpecError("empty dataset spec; try 'shapes', 'richhf18k:/dir', 'rapidata:/dir' or 'folder:/dir'")
    spec = spec.strip()
    head, sep, rest = spec.partition(":")
    head_l = _ALIASES.get(head.lower(), head.lower())
    if head_l in SOURCES:
        return head_l, rest.strip()
    try:
        path = Path(spec).expanduser()
    except RuntimeError:  # "~name" of no such user: not a path
        path = Path(spec)
    if path.exists():
        if (path / "labels.jsonl").is_file():
            return "folder", spec
        if path.suffix == ".tfrecord" or (path.is_dir() and any(path.glob("*.tfrecord"))):
            return "richhf18k", spec
        if _holds(path, ".parquet"):
            return "rapidata", spec
    raise DatasetSpecError(
        f"unknown dataset spec {spec!r}: use shapes[:n=…,seed=…], richhf18k:PATH, rapidata:PATH_OR_HUB_ID or folder:PATH"
    )


def open_dataset(spec: str = DEFAULT_SPEC, split: str | None = None, progress=None, **options) -> Dataset:
    """Open a dataset from a spec; `split` keeps one split; `progress(done, total)` reports building.

    Source options: shapes — n, seed, size, raters ('richhf' | 'rapidata'); richhf18k — pickapic
    (Pick-a-Pic parquet dir or image folder); rapidata — nothing extra (`split` picks the HF split)."""
    source, arg = parse_spec(spec)
    if source == "shapes":
        from rhf_core.shapes.dataset import ShapesDataset

        opts = _parse_options(arg) | options
        unknown = set(opts) - {"n", "seed", "size", "raters", "cache"}
        if unknown:
            raise DatasetSpecError(f"shapes: unknown options {sorted(unknown)}; use n, seed, size, raters")
        if split and split not in SHAPES_SPLITS:  # an unknown name used to give an empty dataset silently
            raise DatasetSpecError(f"shapes: split must be one of {', '.join(SHAPES_SPLITS)}, got {split!r}")
        ds = ShapesDataset(progress=progress, **opts)
        return ds.split(split) if split else ds
    if not arg:
        raise DatasetSpecError(f"{source}: give a path, e.g. '{source}:/path/to/data'")
    if source == "richhf18k":
        from rhf_core.sources.richhf import RichHFDataset

        unknown = set(options) - {"pickapic", "cache"}
        if unknown:
            raise DatasetSpecError(f"richhf18k: unknown options {sorted(unknown)}; use pickapic")
        return RichHFDataset(arg, split=split, progress=progress, **options)
    if source == "rapidata":
        from rhf_core.sources.rapidata import RapidataDataset

        return RapidataDataset(arg, split=split or "train", progress=progress, **options)
    if source == "folder":
        from rhf_core.sources.folder import FolderDataset

        ds = FolderDataset(arg, **options)
        return ds.split(split) if split else ds
    raise DatasetNotFoundError(spec)  # pragma: no cover - parse_spec covers every source
