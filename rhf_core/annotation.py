"""Collect rich human feedback into a folder of the project's format (`folder:DIR`).

`add_annotation(folder, record_id_or_image, prompt, annotator, points=…, words=…, scores=…)` appends
one annotator's raw feedback to a record and recomputes that record's labels from every annotator,
the way the real datasets were made:

- heatmaps: each annotator's clicks become one map (RichHF-18K: disks of radius 20/512 of the
  image's smaller side; Rapidata: Gaussians of σ = 5% of it; `rhf_core.heatmaps`), averaged over
  the record's annotators (one who clicked nothing counts as zeros). The folder's style is chosen
  once, in `DIR/annotation.json` (`set_style` changes it and recomputes every record);
- scores: the mean of the 1–5 Likert ratings normalised by (x − 1) / 4 to [0, 1];
- words: a prompt token's strength is the share of the record's annotators who flagged it.

Raw feedback stays in the record's `meta["annotations"]`, oldest first, nothing ever dropped:
`{"annotator", "time" (unix s), "key", "image_size": [w, h], "points": {type: [[x, y], …]},
"words": [token index, …], "scores": {name: 1–5}}`, points in pixels of the stored image
(x right, y down). When one annotator saves a record twice, the aggregate uses their latest
annotation. A record that already carried labels from elsewhere keeps them in `meta["prior_labels"]`.

Safety: every save holds an exclusive lock on `DIR/.labels.lock` (fcntl.flock, so two processes or
two server sessions cannot interleave), writes the new heatmap and image files under fresh names,
then replaces `labels.jsonl` atomically (temp file + os.replace) as the single commit point: a crash
leaves the old labels or the new ones, never half a file. Lines the reader would skip are kept
byte for byte. A double click (the same annotator saving the same payload on the same record within
`DUPLICATE_WINDOW_S`, or any save repeating an explicit `key`) appends nothing.

`agreement(folder)` says how much the annotators of each record agree: the spread of their ratings,
the pairwise CC of their heatmaps and the pairwise Jaccard of their flagged words.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import os
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from rhf_core.cache import atomic_write_bytes, atomic_write_text
from rhf_core.dataset import HEATMAP_NAMES, SCORE_NAMES, tokenize_prompt
from rhf_core.errors import DatasetFormatError, FolderBusyError, InvalidArgumentError, RecordNotFoundError
from rhf_core.heatmaps import annotators_to_heatmap, points_to_heatmap
from rhf_core.images import encode_png, load_image
from rhf_core.shared import expand_path
from rhf_core.sources.folder import LABELS, inside_folder, npy_bytes

CONFIG = "annotation.json"
LOCK = ".labels.lock"
# How each folder style turns clicks into a map (`rhf_core.heatmaps.points_to_heatmap` kinds).
STYLES = {"richhf": "disk", "rapidata": "gaussian"}
DEFAULT_STYLE = "richhf"
LIKERT = (1, 5)
# Same annotator, same record, same payload within this many seconds: a double click, not a new label.
DUPLICATE_WINDOW_S = 10.0
LOCK_TIMEOUT_S = 30.0
MAX_POINTS = 500  # per heatmap type and annotation; far beyond what anyone clicks
_TYPE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,39}$")  # heatmap types become file names


@dataclass(frozen=True)
class Saved:
    """What one `add_annotation` call did."""

    record_id: str
    created: bool  # the record was new in this folder
    duplicate: bool  # nothing was appended: the same save was already there (a double click)
    n_annotations: int  # raw annotations the record now holds
    n_annotators: int  # distinct annotators in its aggregate
    scores: dict = field(default_factory=dict)  # the aggregated labels now stored
    words: list = field(default_factory=list)
    heatmaps: dict = field(default_factory=dict)  # type → path relative to the folder


# --- the folder ------------------------------------------------------------------------------------

def folder_style(folder: str | os.PathLike) -> str:
    """The folder's heatmap style ("richhf" disks or "rapidata" Gaussians); the default if unset."""
    path = expand_path(str(folder)) / CONFIG
    if not path.is_file():
        return DEFAULT_STYLE
    try:
        style = json.loads(path.read_text(encoding="utf-8")).get("heatmap_style", DEFAULT_STYLE)
    except (ValueError, AttributeError, OSError) as e:
        raise DatasetFormatError(f"{CONFIG} is not a readable JSON object ({type(e).__name__})") from None
    if style not in STYLES:
        raise DatasetFormatError(f"{CONFIG}: unknown heatmap_style {style!r}; use one of {', '.join(STYLES)}")
    return style


def _check_style(style) -> str:
    if style not in STYLES:
        raise InvalidArgumentError(f"unknown heatmap style {style!r}; use one of {', '.join(STYLES)}")
    return style


def _prepare_folder(folder) -> Path:
    if folder is None or not str(folder).strip():
        raise InvalidArgumentError("no target folder given: name the folder annotations are saved to")
    root = expand_path(str(folder).strip())
    if root.exists() and not root.is_dir():
        raise InvalidArgumentError(f"{root} exists and is not a folder")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InvalidArgumentError(f"cannot create the folder {root} ({e.strerror or type(e).__name__})") from None
    return root


@contextlib.contextmanager
def folder_lock(root: Path, timeout: float | None = None):
    """Exclusive lock on the folder's labels for the duration of one read-modify-write.

    flock locks belong to the open file, so two sessions of one server process exclude each other as
    two processes do; the kernel drops the lock if the holder dies, so a crash never leaves it stuck."""
    timeout = LOCK_TIMEOUT_S if timeout is None else timeout
    fd = os.open(root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: an exclusive-create lock file instead
            fcntl = None
        deadline = time.monotonic() + timeout
        if fcntl is not None:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise FolderBusyError("another save to this folder has held it for "
                                              f"{timeout:.0f} s; try again") from None
                    time.sleep(0.01)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        else:  # pragma: no cover
            marker = root / (LOCK + ".held")
            while True:
                try:
                    os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
                    break
                except FileExistsError:
                    if time.monotonic() > deadline:
                        raise FolderBusyError(f"{marker.name} has existed for {timeout:.0f} s; if no save is "
                                              "running, delete it") from None
                    time.sleep(0.01)
            try:
                yield
            finally:
                marker.unlink(missing_ok=True)
    finally:
        os.close(fd)


def _read_lines(root: Path) -> list[tuple[bytes, dict | None]]:
    """Every line of labels.jsonl as (raw bytes, parsed object or None). Unparseable lines are kept
    raw so a rewrite never drops what the reader skips."""
    path = root / LABELS
    if not path.is_file():
        return []
    out = []
    for n, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw.decode("utf-8").lstrip("\ufeff"))
        except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            obj = None
        if isinstance(obj, dict) and obj.get("id") is None:
            # The reader names an id-less line by its line number, blank lines counted; write that id out,
            # so a rewrite (which drops blank lines) cannot renumber the record.
            obj["id"] = f"line{n}"
            raw = _json(obj).encode("utf-8")
        out.append((raw, obj if isinstance(obj, dict) else None))
    return out


def _entry_id(obj: dict, n: int) -> str | None:
    """The id the folder reader gives this line (`line{n}` when it has none)."""
    rec_id = obj.get("id")
    if rec_id is None:
        return f"line{n}"
    if isinstance(rec_id, bool) or not isinstance(rec_id, (str, int)):
        return None
    return str(rec_id)


def _find(lines, rec_id: str) -> int | None:
    """Index of the first line with this id (the reader keeps the first of duplicates)."""
    n = 0
    for i, (_, obj) in enumerate(lines):
        n += 1
        if obj is not None and _entry_id(obj, n) == rec_id:
            return i
    return None


def _json(obj) -> str:
    # allow_nan=False: a NaN would make the line unreadable JSON for other tools.
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(", ", ": "))


def _file_stem(rec_id: str) -> str:
    """A file name for a record: readable part of the id plus a hash, so distinct ids never collide."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", rec_id).strip("._")[:60] or "record"
    return f"{base}-{hashlib.sha1(rec_id.encode()).hexdigest()[:8]}"


# --- checking one annotation -------------------------------------------------------------------------

def _check_annotator(annotator) -> str:
    if not isinstance(annotator, str) or not annotator.strip():
        raise InvalidArgumentError("give an annotator name: agreement and the double-click guard are per annotator")
    name = annotator.strip()
    if len(name) > 100:
        raise InvalidArgumentError("an annotator name is at most 100 characters")
    return name


def _check_points(points, size: tuple[int, int]) -> dict[str, list[list[float]]]:
    """{type: [(x, y), …]} in pixels of the image (0 ≤ x ≤ w, 0 ≤ y ≤ h); refused, not clipped,
    outside it: a click outside the image means the caller mapped coordinates wrongly."""
    if points is None:
        return {}
    if not isinstance(points, dict):
        raise InvalidArgumentError("points must map a heatmap type to a list of (x, y) pixel positions")
    w, h = size
    out = {}
    for kind, pts in points.items():
        if not isinstance(kind, str) or not _TYPE_NAME.match(kind):
            raise InvalidArgumentError(f"heatmap type {kind!r}: use letters, digits, '_' or '-' "
                                       f"(e.g. {' or '.join(HEATMAP_NAMES)})")
        pts = list(pts or [])
        if len(pts) > MAX_POINTS:
            raise InvalidArgumentError(f"{kind}: at most {MAX_POINTS} points per annotation, got {len(pts)}")
        clean = []
        for p in pts:
            try:
                x, y = (float(v) for v in p)
            except (TypeError, ValueError):
                raise InvalidArgumentError(f"{kind}: a point must be a pair (x, y) of numbers, got {p!r}") from None
            if not (math.isfinite(x) and math.isfinite(y) and 0 <= x <= w and 0 <= y <= h):
                raise InvalidArgumentError(f"{kind}: point ({x:g}, {y:g}) is outside the {w}×{h} image")
            clean.append([round(x, 2), round(y, 2)])
        out[kind] = clean
    return out


def _check_words(words, tokens: list[str]) -> list[int]:
    """Flagged words as sorted token indices: an int is a position in `tokenize_prompt(prompt)`, a
    string flags every position holding that token."""
    out = set()
    for w in words or []:
        if isinstance(w, (int, np.integer)) and not isinstance(w, bool):
            if not 0 <= int(w) < len(tokens):
                raise InvalidArgumentError(f"word index {int(w)} is outside the prompt's {len(tokens)} tokens")
            out.add(int(w))
        elif isinstance(w, str):
            hits = [i for i, t in enumerate(tokens) if t == w]
            if not hits:
                raise InvalidArgumentError(f"{w!r} is not a token of the prompt (tokens: {' '.join(tokens) or 'none'})")
            out.update(hits)
        else:
            raise InvalidArgumentError(f"a flagged word is a token or its index, got {w!r}")
    return sorted(out)


def _check_scores(scores) -> dict[str, int | float]:
    """Likert ratings 1–5 (whole or not), by score name."""
    if scores is None:
        return {}
    if not isinstance(scores, dict):
        raise InvalidArgumentError("scores must map score names to 1–5 ratings")
    out = {}
    lo, hi = LIKERT
    for name, v in scores.items():
        if name not in SCORE_NAMES:
            raise InvalidArgumentError(f"unknown score {name!r}; use {', '.join(SCORE_NAMES)}")
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise InvalidArgumentError(f"{name}: a rating is a number from {lo} to {hi}, got {v!r}")
        x = float(v)
        if not lo <= x <= hi:  # False for NaN as well
            raise InvalidArgumentError(f"{name}: a rating is from {lo} to {hi}, got {v!r}")
        out[name] = int(x) if x.is_integer() else x
    return out


def _payload(a: dict) -> tuple:
    """What a double click repeats: the feedback itself, not its time or key."""
    return (json.dumps(a.get("points", {}), sort_keys=True), tuple(a.get("words", [])),
            json.dumps(a.get("scores", {}), sort_keys=True))


# --- aggregation -----------------------------------------------------------------------------------

def latest_by_annotator(annotations: list[dict]) -> list[dict]:
    """Each annotator's latest annotation, in the order annotators first appear."""
    latest: dict[str, dict] = {}
    for a in annotations:
        latest[a["annotator"]] = a  # dicts keep first-insertion order; the value is the latest
    return list(latest.values())


def _scaled_points(a: dict, kind: str, size: tuple[int, int]) -> list[tuple[float, float]]:
    """An annotation's points of one type in pixels of `size` (the image may have been replaced)."""
    pts = a.get("points", {}).get(kind, [])
    aw, ah = a.get("image_size") or size
    sx, sy = size[0] / aw, size[1] / ah
    return [(x * sx, y * sy) for x, y in pts]


def _check_stored(annotations, rec_id: str) -> list[dict]:
    if not isinstance(annotations, list) or not all(
            isinstance(a, dict) and isinstance(a.get("annotator"), str) for a in annotations):
        raise DatasetFormatError(f"{rec_id}: meta.annotations is not a list of annotations; "
                                 "fix or remove it by hand (nothing was written)")
    return annotations


def aggregate(annotations: list[dict], size: tuple[int, int], n_tokens: int, style: str = DEFAULT_STYLE):
    """(scores, word strengths, heatmaps) of a record from its raw annotations (latest per annotator).

    Scores: mean of (rating − 1) / 4 over the annotators who gave that score. Word strength: share of
    annotators flagging the token. Heatmaps: the per-annotator maps of the style averaged over all
    annotators, for both standard types and any other type someone clicked."""
    kind = STYLES[_check_style(style)]
    latest = latest_by_annotator(annotations)
    n = len(latest)
    scores = {}
    for name in SCORE_NAMES:
        vals = [(float(a["scores"][name]) - 1) / 4 for a in latest if name in (a.get("scores") or {})]
        if vals:
            scores[name] = float(np.mean(vals))
    strengths = [0.0] * n_tokens
    for a in latest:
        for i in set(a.get("words", [])):
            if 0 <= i < n_tokens:
                strengths[i] += 1.0 / n
    types = list(HEATMAP_NAMES) + sorted({t for a in latest for t in a.get("points", {})} - set(HEATMAP_NAMES))
    heatmaps = {t: annotators_to_heatmap([_scaled_points(a, t, size) for a in latest], size, kind=kind)
                for t in types} if n else {}
    return scores, [min(1.0, s) for s in strengths], heatmaps


def _image_of(root: Path, entry: dict, rec_id: str) -> Image.Image:
    rel = entry.get("image")
    if not isinstance(rel, str) or not rel:
        raise InvalidArgumentError(f"{rec_id} has no image in this folder, so there is nothing to click on; "
                                   "pass the image to annotate it")
    return load_image(inside_folder(root, rel), max_side=None, name=rec_id)


def _relabel(root: Path, entry: dict, rec_id: str, size: tuple[int, int], style: str) -> list[Path]:
    """Recompute `entry`'s labels in place from its annotations; write the new heatmap files.
    Returns the heatmap files the old labels used that are no longer needed (to delete after commit)."""
    meta = entry.setdefault("meta", {})
    annotations = _check_stored(meta.get("annotations", []), rec_id)
    tokens = tokenize_prompt(entry.get("prompt", ""))
    scores, strengths, heatmaps = aggregate(annotations, size, len(tokens), style)
    old = entry.get("heatmaps") or {}
    # Names carry a hash of what they aggregate: the new files never overwrite the ones the committed
    # labels point to, so a crash before the labels are replaced leaves those labels consistent.
    digest = hashlib.sha1(_json([rec_id, style, list(size), annotations]).encode()).hexdigest()[:8]
    stem = _file_stem(rec_id)
    new = {}
    for t, hm in heatmaps.items():
        rel = f"heatmaps/{stem}.{digest}.{t}.npy"
        atomic_write_bytes(root / rel, npy_bytes(hm))
        new[t] = rel
    entry["scores"] = scores
    entry["words"] = [[t, s] for t, s in zip(tokens, strengths)]
    entry["heatmaps"] = new
    entry.setdefault("columns", {})["n_annotators"] = len(latest_by_annotator(annotations))
    stale = []
    for rel in old.values():
        if isinstance(rel, str) and rel not in new.values() and rel.startswith("heatmaps/"):
            with contextlib.suppress(DatasetFormatError):
                stale.append(inside_folder(root, rel))
    return stale


def _write_lines(root: Path, lines: list[tuple[bytes, dict | None]]) -> None:
    atomic_write_bytes(root / LABELS, b"".join(raw + b"\n" for raw, _ in lines))


# --- the public API ----------------------------------------------------------------------------------

def image_record_id(image: Image.Image) -> str:
    """The id a bare image gets in a folder: `img-` and a hash of its pixels, so the same image saved
    again (by another annotator, from another upload) reaches the same record."""
    image = load_image(image, max_side=None)
    return "img-" + hashlib.sha1(repr(image.size).encode() + image.tobytes()).hexdigest()[:16]


def folder_records(folder: str | os.PathLike) -> dict[str, dict]:
    """id → {"prompt", "annotators" (distinct, first-seen order), "n_annotations"} for every readable
    line of the folder's labels (an empty dict when there are none yet)."""
    out: dict[str, dict] = {}
    n = 0
    for _, obj in _read_lines(expand_path(str(folder))):
        n += 1
        rec_id = _entry_id(obj, n) if obj is not None else None
        if rec_id is None or rec_id in out:
            continue
        meta = obj.get("meta") if isinstance(obj.get("meta"), dict) else {}
        anns = meta.get("annotations") if isinstance(meta.get("annotations"), list) else []
        names = [a.get("annotator") for a in anns if isinstance(a, dict)]
        out[rec_id] = {"prompt": obj.get("prompt", ""), "annotators": list(dict.fromkeys(names)),
                       "n_annotations": len(anns)}
    return out


def add_annotation(
    folder: str | os.PathLike,
    record_id_or_image,
    prompt: str | None = None,
    annotator: str = "",
    points: dict | None = None,
    words=None,
    scores: dict | None = None,
    *,
    image=None,
    key: str | None = None,
    style: str | None = None,
    split: str = "train",
    source: dict | None = None,
    now: float | None = None,
) -> Saved:
    """Append one annotator's feedback on one image to `folder` and recompute that record's labels.

    `record_id_or_image`: a record id (text) of the folder, or an image (PIL image, `Path` or bytes)
    that becomes a record with id `image_record_id(image)` (a hash of its pixels: the same image
    again reaches the same record, and then `prompt` must be its prompt or None). To add a record
    under an id of your own (an image from another dataset), pass the id and `image=`; the image is
    copied into `images/` the first time (for an existing record `image` is not used).
    `prompt`: required for a new record; for an existing one None or the record's own prompt.
    `points`: {heatmap type: [(x, y), …]} in pixels of the image as stored (its own size).
    `words`: flagged prompt tokens, as tokens or token indices of `tokenize_prompt(prompt)`.
    `scores`: {"plausibility" | "alignment" | "aesthetics" | "overall": rating 1–5}.
    `key`: an idempotency key; a save whose key the record already holds appends nothing.
    `style`: "richhf" or "rapidata" for a folder's first annotation (later: must match; see `set_style`).
    `split`: a new record's split (`train-rahf` trains on "train" and holds out 10% when no "dev").
    `source`: where a new record's image came from ({"spec", "id"}), kept in its meta.
    Raises InvalidArgumentError (bad arguments, checked before anything is written),
    RecordNotFoundError, DatasetFormatError (a malformed stored annotation), FolderBusyError."""
    name = _check_annotator(annotator)
    if prompt is not None and not isinstance(prompt, str):
        raise InvalidArgumentError(f"prompt must be text, got {type(prompt).__name__}")
    if key is not None and (not isinstance(key, str) or not key or len(key) > 200):
        raise InvalidArgumentError("key must be non-empty text of at most 200 characters")
    if not isinstance(split, str):
        raise InvalidArgumentError("split must be text")
    if style is not None:
        _check_style(style)
    if isinstance(record_id_or_image, str):
        rec_id, new_image = record_id_or_image.strip(), image
        if not rec_id:
            raise InvalidArgumentError("empty record id")
    else:
        rec_id, new_image = None, record_id_or_image
    if new_image is not None:
        new_image = load_image(new_image, max_side=None, name=rec_id or "image")
        if rec_id is None:
            rec_id = image_record_id(new_image)
    root = _prepare_folder(folder)
    t = time.time() if now is None else float(now)

    with folder_lock(root):
        # Everything is checked first; files are written only once the save is known to go through.
        configured = (root / CONFIG).is_file()
        current = folder_style(root) if configured else (style or DEFAULT_STYLE)
        if configured and style is not None and style != current:
            raise InvalidArgumentError(f"this folder aggregates {current!r} heatmaps; use set_style() to change "
                                       "that for every record, not one save")
        lines = _read_lines(root)
        at = _find(lines, rec_id)
        created = at is None
        if created:
            if new_image is None:
                raise RecordNotFoundError(f"no record {rec_id!r} in this folder; pass image= to add it")
            if prompt is None:
                raise InvalidArgumentError(f"{rec_id} is new in this folder: give its prompt (an empty string if it has none)")
            entry = {"id": rec_id, "prompt": prompt, "image": f"images/{_file_stem(rec_id)}.png", "scores": {},
                     "words": [], "heatmaps": {}, "meta": {"split": split, "annotations": []}, "columns": {}}
            if source:
                entry["meta"]["source"] = dict(source)
            img = new_image
        else:
            entry = lines[at][1]
            if prompt is not None and prompt != entry.get("prompt", ""):
                raise InvalidArgumentError(f"{rec_id} has the prompt {entry.get('prompt', '')!r}, not {prompt!r}: "
                                           "word positions would not match")
            for part in ("meta", "columns", "heatmaps", "scores"):
                if not isinstance(entry.get(part) or {}, dict):
                    raise DatasetFormatError(f"{rec_id}: {part} is not a JSON object; fix it by hand (nothing was written)")
            entry["meta"] = entry.get("meta") or {}
            entry["columns"] = entry.get("columns") or {}
            img = _image_of(root, entry, rec_id)
        size = img.size
        tokens = tokenize_prompt(entry.get("prompt", ""))
        annotation = {"annotator": name, "time": round(t, 3), "key": key, "image_size": list(size),
                      "points": _check_points(points, size), "words": _check_words(words, tokens),
                      "scores": _check_scores(scores)}
        meta = entry["meta"]
        existing = _check_stored(meta.get("annotations", []), rec_id)
        dup = next((a for a in reversed(existing) if key is not None and a.get("key") == key), None)
        if dup is None:
            dup = next((a for a in reversed(existing) if a["annotator"] == name
                        and abs(t - float(a.get("time", -1e18))) <= DUPLICATE_WINDOW_S
                        and _payload(a) == _payload(annotation)), None)
        if dup is not None:
            latest = latest_by_annotator(existing)
            return Saved(rec_id, False, True, len(existing), len(latest), entry.get("scores", {}),
                         entry.get("words", []), entry.get("heatmaps", {}))
        if not configured:
            atomic_write_text(root / CONFIG, _json({"heatmap_style": current}) + "\n")
        if created:
            atomic_write_bytes(root / entry["image"], encode_png(new_image))
        if not existing and not created and (entry.get("scores") or entry.get("words") or entry.get("heatmaps")):
            # Labels from elsewhere (an exported dataset): kept, and from now on the annotators' own rule.
            meta["prior_labels"] = {k: entry.get(k) for k in ("scores", "words", "heatmaps")}
            entry["heatmaps"] = {}  # prior heatmap files stay on disk, named in prior_labels
        meta["annotations"] = existing + [annotation]
        stale = _relabel(root, entry, rec_id, size, current)
        raw = _json(entry).encode("utf-8")
        if created:
            lines.append((raw, entry))
        else:
            lines[at] = (raw, entry)
        _write_lines(root, lines)  # the commit point
        for path in stale:
            path.unlink(missing_ok=True)
        return Saved(rec_id, created, False, len(meta["annotations"]), int(entry["columns"]["n_annotators"]),
                     entry["scores"], entry["words"], entry["heatmaps"])


def set_style(folder: str | os.PathLike, style: str) -> int:
    """Change the folder's heatmap style and recompute every annotated record; returns how many."""
    _check_style(style)
    root = _prepare_folder(folder)
    with folder_lock(root):
        lines = _read_lines(root)
        stale, n, k = [], 0, 0
        for i, (raw, obj) in enumerate(lines):
            k += 1
            if obj is None or not (obj.get("meta") or {}).get("annotations"):
                continue
            rec_id = _entry_id(obj, k)
            stale += _relabel(root, obj, rec_id, _image_of(root, obj, rec_id).size, style)
            lines[i] = (_json(obj).encode("utf-8"), obj)
            n += 1
        _write_lines(root, lines)
        atomic_write_text(root / CONFIG, _json({"heatmap_style": style}) + "\n")
        for path in stale:
            path.unlink(missing_ok=True)
    return n


def annotations_of(folder: str | os.PathLike, record_id: str) -> list[dict]:
    """The raw annotations stored for one record (oldest first); [] if none."""
    root = expand_path(str(folder))
    lines = _read_lines(root)
    at = _find(lines, str(record_id))
    if at is None:
        raise RecordNotFoundError(f"no record {record_id!r} in this folder")
    return list((lines[at][1].get("meta") or {}).get("annotations") or [])


# --- agreement -------------------------------------------------------------------------------------

def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson CC of two maps; NaN when either is constant (e.g. an annotator clicked nothing)."""
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / den if den > 0 else float("nan")


def _nanmean(values) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


def record_agreement(annotations: list[dict], size: tuple[int, int] | None = None,
                     style: str = DEFAULT_STYLE) -> dict[str, float]:
    """Agreement among one record's annotators (latest annotation each).

    `spread_<score>`: population standard deviation of the ratings on the [0, 1] label scale (a
    1-point Likert difference between two annotators is 0.125); `cc_<type>`: mean Pearson CC of
    the per-annotator heatmaps over annotator pairs where both maps are non-constant;
    `word_jaccard`: mean Jaccard index of the flagged-word sets over pairs where either flagged
    something. NaN wherever it is undefined (fewer than two annotators or ratings, no such pair)."""
    kind = STYLES[_check_style(style)]
    latest = latest_by_annotator(annotations)
    out: dict[str, float] = {"n_annotators": float(len(latest))}
    for name in SCORE_NAMES:
        vals = [(float(a["scores"][name]) - 1) / 4 for a in latest if name in (a.get("scores") or {})]
        out[f"spread_{name}"] = float(np.std(vals)) if len(vals) >= 2 else float("nan")
    if size is None:
        sizes = [tuple(a["image_size"]) for a in latest if a.get("image_size")]
        size = sizes[-1] if sizes else None
    types = list(HEATMAP_NAMES) + sorted({t for a in latest for t in a.get("points", {})} - set(HEATMAP_NAMES))
    for t in types:
        if size is None or len(latest) < 2:
            out[f"cc_{t}"] = float("nan")
            continue
        maps = [points_to_heatmap(_scaled_points(a, t, size), size, kind=kind) for a in latest]
        out[f"cc_{t}"] = _nanmean(_pearson(a, b) for a, b in itertools.combinations(maps, 2))
    sets = [set(a.get("words", [])) for a in latest]
    out["word_jaccard"] = _nanmean(len(a & b) / len(a | b) if a | b else float("nan")
                                   for a, b in itertools.combinations(sets, 2))
    return out


@dataclass
class Agreement:
    """Per-record agreement (one row per annotated record) and the folder's means over records."""

    records: pd.DataFrame
    folder: dict[str, float]


def agreement(folder: str | os.PathLike) -> Agreement:
    """How much the folder's annotators agree, per record and over the folder.

    Folder values are means of the per-record values over the records where they are defined (NaN if
    none), plus `n_records` (annotated) and `n_multi` (with two or more annotators). Reads labels.jsonl
    without the lock: it is only ever replaced whole."""
    root = expand_path(str(folder))
    if not (root / LABELS).is_file():
        raise RecordNotFoundError(f"{root} has no {LABELS}: nothing annotated yet")
    style = folder_style(root)
    rows = []
    n = 0
    for _, obj in _read_lines(root):
        n += 1
        if obj is None:
            continue
        anns = (obj.get("meta") or {}).get("annotations") if isinstance(obj.get("meta"), dict) else None
        if not anns:
            continue
        rec_id = _entry_id(obj, n)
        rows.append({"id": rec_id, **record_agreement(_check_stored(anns, rec_id), style=style)})
    records = pd.DataFrame(rows)
    summary: dict[str, float] = {"n_records": float(len(records)),
                                 "n_multi": float((records["n_annotators"] >= 2).sum()) if len(records) else 0.0}
    for col in records.columns:
        if col in ("id", "n_annotators"):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            summary[col] = float(np.nanmean(records[col].to_numpy(np.float64))) if records[col].notna().any() else float("nan")
    return Agreement(records, summary)


__all__ = ["add_annotation", "agreement", "record_agreement", "aggregate", "set_style", "folder_style",
           "annotations_of", "folder_records", "image_record_id", "latest_by_annotator", "folder_lock", "Saved", "Agreement", "STYLES",
           "DUPLICATE_WINDOW_S"]
