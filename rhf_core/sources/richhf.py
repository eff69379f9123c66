"""RichHF-18K (Liang et al., CVPR 2024): labels from TFRecords, prompts and images from Pick-a-Pic v1.

Each `tf.train.Example` holds `filename`, four scores in [0, 1] (`artifact_score` is plausibility,
`misalignment_score` is alignment), `artifact_map` / `misalignment_map` as encoded single-channel
512×512 images (0–255), and `prompt_misalignment_label`: one 0/1 label per prompt token, where
0 means misaligned. Tokens are the prompt split on `,.?!":;` and space.

Each example is checked at the record boundary (`check_example`): one that breaks the schema is
skipped with its reason in `ds.skipped`; a value off its scale is kept raw in `meta` with a note in
`meta["notes"]` (and the frame's `notes` column), never clipped.
"""

from __future__ import annotations

import io
import math
import struct
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from rhf_core.cache import cache_key, cached_frame, file_fingerprint
from rhf_core.dataset import Dataset, Record, SkippedRow, frame_row, tokenize_prompt, with_standard_columns
from rhf_core.errors import DatasetFormatError, DatasetNotFoundError, DatasetSpecError
from rhf_core.images import load_image
from rhf_core.sources.pickapic import PickAPic, user_path
from rhf_core.sources.tfrecord import index_tfrecord, parse_example, read_span

SPLITS = ("train", "dev", "test")
SCORE_FEATURES = {
    "artifact_score": "plausibility",
    "misalignment_score": "alignment",
    "aesthetics_score": "aesthetics",
    "overall_score": "overall",
}
MAP_FEATURES = {"artifact_map": "implausibility", "misalignment_map": "misalignment"}
LABEL_FEATURE = "prompt_misalignment_label"
# The kind of list each feature must be stored as (anything else: the example is skipped).
FEATURE_KINDS = {"filename": "bytes_list", LABEL_FEATURE: "bytes_list",
                 **{f: "float_list" for f in SCORE_FEATURES}, **{f: "bytes_list" for f in MAP_FEATURES}}
# RichHF's maps are 512×512; anything far larger is not a RichHF map, and decoding it would cost memory.
MAX_MAP_PIXELS = 2048 * 2048
# Bump when validation changes what is skipped or noted: cached frames hold the skip reasons and notes.
READER_VERSION = 2
# What PIL's format plugins raise on malformed files: they do not share one exception type.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError, TypeError,
                  ZeroDivisionError, Image.DecompressionBombError, Image.DecompressionBombWarning)
_KIND_OF = {bytes: "bytes_list", float: "float_list", int: "int64_list"}


def decode_map(data: bytes) -> np.ndarray:
    """An encoded single-channel heatmap image → float32 H×W in [0, 1]; `DatasetFormatError` otherwise.

    8-bit maps (RichHF's: L, or 1) are divided by 255 and 16-bit ones (I;16) by 65535, so they lie in
    [0, 1] by construction. 32-bit integer (I) and float (F) images carry no scale of their own: their
    values must already lie in 0–65535 and [0, 1], or the map is rejected, never clipped (a clip would
    turn a map on another scale into a solid block). NaN and inf are rejected. Colour maps are
    rejected rather than converted: RichHF's maps are single-channel, and a colour one is not a RichHF map.
    """
    if not data:
        raise DatasetFormatError("heatmap is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > MAX_MAP_PIXELS:  # checked on the header, before anything is decoded
                raise DatasetFormatError(f"heatmap is {w}×{h}, too large for a RichHF map (at most {MAX_MAP_PIXELS} pixels)")
            img.load()
    except _DECODE_ERRORS as e:
        raise DatasetFormatError(f"heatmap bytes are not a readable image ({type(e).__name__}: {e})") from None
    mode = img.mode
    if mode in ("L", "1"):
        return np.asarray(img.convert("L"), dtype=np.float32) / np.float32(255.0)
    if mode.startswith("I;16"):
        return np.asarray(img, dtype=np.float32) / np.float32(65535.0)
    if mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise DatasetFormatError(f"heatmap ({mode} image) has NaN or infinite values")
        top = 65535.0 if mode == "I" else 1.0
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > top:
            raise DatasetFormatError(f"heatmap ({mode} image) has values {lo:g}–{hi:g}, outside 0–{top:g}")
        return (arr / top).astype(np.float32)
    raise DatasetFormatError(f"heatmap is a {mode} image; RichHF maps are single-channel (8- or 16-bit gray)")


def parse_labels(label_text: str) -> list[int]:
    """`prompt_misalignment_label` text → 0/1 labels; any other token: `DatasetFormatError`.

    Only "0" and "1" are labels: reading anything else as 1 (aligned) would hide a misaligned word."""
    tokens = label_text.split()
    bad = list(dict.fromkeys(t for t in tokens if t not in ("0", "1")))
    if bad:
        shown = ", ".join(repr(t[:20]) for t in bad[:5]) + (", …" if len(bad) > 5 else "")
        raise DatasetFormatError(f"{LABEL_FEATURE} has tokens other than 0/1 ({shown})")
    return [int(t) for t in tokens]


def match_labels(prompt: str, label_text: str) -> tuple[list[tuple[str, float]], dict]:
    """Pair prompt tokens with their 0/1 labels (0 = misaligned ⇒ strength 1.0).

    Mismatched counts keep the pairs that line up and are flagged in the returned meta; a label other
    than 0/1 raises `DatasetFormatError`."""
    tokens = tokenize_prompt(prompt)
    labels = parse_labels(label_text)
    info = {"n_tokens": len(tokens), "n_labels": len(labels), "label_mismatch": len(tokens) != len(labels)}
    return [(tok, 1.0 if lab == 0 else 0.0) for tok, lab in zip(tokens, labels)], info


def _single(feats: dict, name: str):
    """The one value of feature `name` (None when absent or empty); a wrong kind or count: DatasetFormatError."""
    values = feats.get(name)
    if not values:
        return None
    kind = _KIND_OF.get(type(values[0]), type(values[0]).__name__)
    if kind != FEATURE_KINDS[name]:
        raise DatasetFormatError(f"{name} is stored as {kind}, expected {FEATURE_KINDS[name]}")
    if len(values) != 1:
        raise DatasetFormatError(f"{name} has {len(values)} values, expected 1")
    return values[0]


def _text(feats: dict, name: str) -> str | None:
    value = _single(feats, name)
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise DatasetFormatError(f"{name} is not UTF-8 text") from None


def check_example(feats: dict, decode_maps: bool = True) -> dict:
    """Validate one parsed example at the record boundary: its fields, or `DatasetFormatError` (skip the row).

    Rejected (the row is skipped with the reason): a known feature of the wrong kind or with more than
    one value — the example does not follow RichHF's schema, so none of it can be trusted; no usable
    filename (it is the record's identity and its link to Pick-a-Pic); a NaN or infinite score (no
    rating is NaN: the value is corrupt); a heatmap that does not decode to a valid map (see decode_map).
    Kept with a note in `notes`: a finite score outside [0, 1] is left out of the scores (never
    clipped) and kept raw in `raw_scores` — it may be a rating on another scale; label text with
    tokens other than 0/1 gives no word labels, and the raw text is kept.
    Absent (or empty) scores, maps and labels are simply not there, as in a labels-only record.
    """
    filename = _text(feats, "filename")
    if filename is None or not filename.strip():
        raise DatasetFormatError("no filename: the example cannot be matched to its image")
    uid = Path(filename).stem
    if not uid.strip():
        raise DatasetFormatError(f"filename {filename[:80]!r} names no image")
    scores, raw, notes = {}, {}, []
    for feat, name in SCORE_FEATURES.items():
        value = _single(feats, feat)
        if value is None:
            continue
        if not math.isfinite(value):
            raise DatasetFormatError(f"{feat} is {value}")
        raw[feat] = value
        if 0.0 <= value <= 1.0:
            scores[name] = value
        else:
            notes.append(f"{feat} {value:g} is outside [0, 1]: left out of the scores, kept raw")
    map_bytes = {name: _single(feats, feat) for feat, name in MAP_FEATURES.items()}
    heatmaps = {}
    if decode_maps:
        for feat, name in MAP_FEATURES.items():
            if map_bytes[name] is not None:
                try:
                    heatmaps[name] = decode_map(map_bytes[name])
                except DatasetFormatError as e:
                    raise DatasetFormatError(f"{feat}: {e}") from None
    label_text = _text(feats, LABEL_FEATURE) or ""
    labels_ok = True
    try:
        parse_labels(label_text)
    except DatasetFormatError as e:
        labels_ok = False
        notes.append(f"{e}: no word labels, raw text kept")
    return {"filename": filename, "uid": uid, "scores": scores, "raw_scores": raw, "heatmaps": heatmaps,
            "label_text": label_text, "labels_ok": labels_ok, "notes": notes}


class RichHFDataset(Dataset):
    """`open_dataset("richhf18k:/dir/with/tfrecords", pickapic="/pickapic/dir", split="test")`."""

    name = "RichHF-18K"

    def __init__(self, path: str | Path, pickapic: str | Path | None = None, split: str | None = None,
                 progress=None, cache: bool = True):
        super().__init__()
        root = user_path(path, "RichHF-18K")
        if split is not None and split not in SPLITS:
            raise DatasetSpecError(f"richhf18k: split must be one of {SPLITS}, got {str(split)[:40]!r}")
        if root.is_file():
            files = {root.stem if root.stem in SPLITS else "train": root}
        else:
            files = {s: root / f"{s}.tfrecord" for s in SPLITS if (root / f"{s}.tfrecord").is_file()}
            if not files:
                raise DatasetNotFoundError(
                    f"{root}: none of train.tfrecord, dev.tfrecord, test.tfrecord found"
                )
        if split is not None:
            if split not in files:
                raise DatasetNotFoundError(f"{root}: no {split}.tfrecord")
            files = {split: files[split]}
        self.root = root
        self.files = files
        self.pickapic = PickAPic(pickapic) if pickapic is not None else None
        self.spec = f"richhf18k:{root}" + (f" (split={split})" if split else "")
        if self.pickapic is not None:
            self.skipped.extend(self.pickapic.skipped)

        # 1. Index the framing of each file (fast: headers and CRCs only).
        self._spans = []  # (split, path, span, where) per record, in frame order
        for s, f in files.items():
            spans, skipped = index_tfrecord(f)
            self.skipped.extend(skipped)
            self._spans.extend((s, f, sp, f"{f.name} record {k} (byte {sp.offset - 12})") for k, sp in enumerate(spans))

        # 2. The frame needs every example parsed (and maps decoded, for heatmap mass): cached. The key
        # holds the reader's version (cached skip reasons and notes go stale with the validation) and
        # the Pick-a-Pic parquet files (captions decide the word labels; image files only has_image).
        pick = self.pickapic
        key = cache_key("richhf", READER_VERSION, file_fingerprint(files.values()),
                        str(pick.root) if pick else None, len(pick) if pick else 0,
                        file_fingerprint(p for p in pick.files if p.suffix == ".parquet") if pick else [])
        build = lambda: self._build_frame(progress)  # noqa: E731
        frame = cached_frame("richhf", key, build) if cache else build()
        # Rows whose example could not be used are dropped from the frame, each with its reason.
        self._keep = frame.pop("_span").to_numpy()
        for where, why in zip(frame.pop("_skip_where"), frame.pop("_skip_reason")):
            if isinstance(why, str) and why:
                self.skipped.append(SkippedRow(where, why))
        ok = frame["id"].notna().to_numpy()
        self._keep = self._keep[ok]
        self._frame = with_standard_columns(frame[ok].reset_index(drop=True))

    # --- reading ------------------------------------------------------------------------------
    def _parse(self, i: int) -> tuple[dict, dict]:
        """Parse record i: (example features, where it lies) — raises DatasetFormatError."""
        split, path, span, where = self._spans[i]
        return parse_example(read_span(path, span)), {"split": split, "file": path.name, "where": where}

    def _assemble(self, feats: dict, where: dict, decode_maps: bool = True):
        """Validated fields of one example (`DatasetFormatError`: the row is skipped) joined with Pick-a-Pic."""
        ex = check_example(feats, decode_maps)
        uid, label_text, notes = ex["uid"], ex["label_text"], list(ex["notes"])
        prompt = ""
        if self.pickapic is not None:
            prompt = self.pickapic.caption(uid) or ""
        words, label_info = [], {}
        if prompt and label_text and ex["labels_ok"]:
            words, label_info = match_labels(prompt, label_text)
        meta = {
            "source": "richhf18k",
            "split": where["split"],
            "file": where["file"],
            "filename": ex["filename"],
            "uid": uid,
            "raw_scores": ex["raw_scores"],
            "prompt_misalignment_label": label_text,
            "has_prompt": bool(prompt),
            "has_image": bool(self.pickapic is not None and self.pickapic.has_image(uid)),
            "label_mismatch": bool(label_info.get("label_mismatch", False)),
            **({"n_tokens": label_info["n_tokens"], "n_labels": label_info["n_labels"]} if label_info else {}),
        }
        if notes:
            meta["notes"] = notes
        return uid, prompt, ex["scores"], ex["heatmaps"], words, meta

    def _build_frame(self, progress) -> pd.DataFrame:
        rows, seen = [], {}
        n = len(self._spans)
        for i in range(n):
            split, path, span, where = self._spans[i]
            if progress is not None and (i % 200 == 0 or i == n - 1):
                progress(i + 1, n)
            try:
                feats, place = self._parse(i)
                uid, prompt, scores, heatmaps, words, meta = self._assemble(feats, place)
                rec_id = f"{split}/{uid}"
                if rec_id in seen:  # two records under one id: the second would hide the first
                    raise DatasetFormatError(f"duplicate filename {meta['filename'][:80]!r}: "
                                             f"{seen[rec_id]} already has id {rec_id}")
            except DatasetFormatError as e:
                rows.append({"id": None, "_span": i, "_skip_where": where, "_skip_reason": str(e)})
                continue
            seen[rec_id] = where
            rows.append(frame_row(
                rec_id, prompt, split, scores, heatmaps, words,
                filename=meta["filename"], has_image=meta["has_image"], has_prompt=meta["has_prompt"],
                label_mismatch=meta["label_mismatch"], notes="; ".join(meta.get("notes", [])),
                _span=i, _skip_where="", _skip_reason="",
            ))
        if not rows:
            return pd.DataFrame(columns=["id", "prompt", "split", "_span", "_skip_where", "_skip_reason"])
        return pd.DataFrame(rows)

    def _load(self, pos: int) -> Record:
        i = int(self._keep[pos])
        feats, where = self._parse(i)
        uid, prompt, scores, heatmaps, words, meta = self._assemble(feats, where)
        rec_id = str(self._frame["id"].iat[pos])
        loader = None
        if meta["has_image"]:
            pick = self.pickapic

            def loader(uid=uid, rec_id=rec_id):
                data = pick.image_bytes(uid)  # ImageLoadError if its file cannot be read
                if data is None:  # uid indexed but its jpg cell is empty: labels-only
                    return None
                return load_image(data, max_side=None, name=f"{rec_id} ({uid})")

        return Record(rec_id, prompt, scores, heatmaps, words, meta, load_image=loader)
