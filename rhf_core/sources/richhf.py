"""RichHF-18K (Liang et al., CVPR 2024): labels from TFRecords, prompts and images from Pick-a-Pic v1.

Each `tf.train.Example` holds `filename`, four scores in [0, 1] (`artifact_score` is plausibility,
`misalignment_score` is alignment), `artifact_map` / `misalignment_map` as encoded single-channel
512×512 images (0–255), and `prompt_misalignment_label`: one 0/1 label per prompt token, where
0 means misaligned. Tokens are the prompt split on `,.?!":;` and space.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from rhf_core.cache import cache_key, cached_frame, file_fingerprint
from rhf_core.dataset import Dataset, Record, SkippedRow, frame_row, tokenize_prompt, with_standard_columns
from rhf_core.errors import DatasetFormatError, DatasetNotFoundError, DatasetSpecError
from rhf_core.images import load_image
from rhf_core.sources.pickapic import PickAPic
from rhf_core.sources.tfrecord import index_tfrecord, parse_example, read_span

SPLITS = ("train", "dev", "test")
SCORE_FEATURES = {
    "artifact_score": "plausibility",
    "misalignment_score": "alignment",
    "aesthetics_score": "aesthetics",
    "overall_score": "overall",
}
MAP_FEATURES = {"artifact_map": "implausibility", "misalignment_map": "misalignment"}


def decode_map(data: bytes) -> np.ndarray:
    """An encoded single-channel heatmap image (PNG/JPEG, 0–255) → float32 H×W in [0, 1]."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as e:
        raise DatasetFormatError(f"heatmap bytes are not a readable image ({e})") from None
    arr = np.asarray(img.convert("L") if img.mode not in ("L", "I;16", "I") else img)
    top = 65535.0 if img.mode.startswith("I") else 255.0
    return (arr.astype(np.float32) / top).clip(0.0, 1.0)


def match_labels(prompt: str, label_text: str) -> tuple[list[tuple[str, float]], dict]:
    """Pair prompt tokens with their 0/1 labels (0 = misaligned ⇒ strength 1.0).

    Mismatched counts keep the pairs that line up and are flagged in the returned meta."""
    tokens = tokenize_prompt(prompt)
    labels = label_text.split()
    info = {"n_tokens": len(tokens), "n_labels": len(labels), "label_mismatch": len(tokens) != len(labels)}
    words = []
    for tok, lab in zip(tokens, labels):
        words.append((tok, 1.0 if lab.strip() == "0" else 0.0))
    return words, info


class RichHFDataset(Dataset):
    """`open_dataset("richhf18k:/dir/with/tfrecords", pickapic="/pickapic/dir", split="test")`."""

    name = "RichHF-18K"

    def __init__(self, path: str | Path, pickapic: str | Path | None = None, split: str | None = None,
                 progress=None, cache: bool = True):
        super().__init__()
        root = Path(path).expanduser()
        if not root.exists():
            raise DatasetNotFoundError(f"RichHF-18K path {root} does not exist")
        if split is not None and split not in SPLITS:
            raise DatasetSpecError(f"richhf18k: split must be one of {SPLITS}, got {split!r}")
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

        # 1. Index the framing of each file (fast: headers and CRCs only).
        self._spans = []  # (split, path, span) per record, in frame order
        for s, f in files.items():
            spans, skipped = index_tfrecord(f)
            self.skipped.extend(skipped)
            self._spans.extend((s, f, sp) for sp in spans)

        # 2. The frame needs every example parsed (and maps decoded, for heatmap mass): cached.
        key = cache_key("richhf", file_fingerprint(files.values()),
                        str(self.pickapic.root) if self.pickapic else None,
                        len(self.pickapic) if self.pickapic else 0)
        build = lambda: self._build_frame(progress)  # noqa: E731
        frame = cached_frame("richhf", key, build) if cache else build()
        # Rows whose example could not be parsed are dropped from the frame (and counted).
        self._keep = frame.pop("_span").to_numpy()
        for where, why in zip(frame.pop("_skip_where"), frame.pop("_skip_reason")):
            if isinstance(why, str) and why:
                self.skipped.append(SkippedRow(where, why))
        ok = frame["id"].notna().to_numpy()
        self._keep = self._keep[ok]
        self._frame = with_standard_columns(frame[ok].reset_index(drop=True))

    # --- reading ------------------------------------------------------------------------------
    def _parse(self, i: int) -> tuple[dict, dict]:
        """Parse record i: (example features, decoded pieces) — raises DatasetFormatError."""
        split, path, span = self._spans[i]
        return parse_example(read_span(path, span)), {"split": split, "file": path.name}

    def _assemble(self, feats: dict, where: dict, decode_maps: bool = True):
        filename = feats.get("filename", [b""])[0].decode("utf-8", errors="replace") if feats.get("filename") else ""
        uid = Path(filename).stem
        scores, raw = {}, {}
        for feat, name in SCORE_FEATURES.items():
            if feats.get(feat):
                value = float(feats[feat][0])
                raw[feat] = value
                scores[name] = float(np.clip(value, 0.0, 1.0))
        heatmaps, problems = {}, []
        for feat, name in MAP_FEATURES.items():
            if feats.get(feat) and decode_maps:
                try:
                    heatmaps[name] = decode_map(feats[feat][0])
                except DatasetFormatError as e:
                    problems.append(f"{feat}: {e}")
        prompt = ""
        if self.pickapic is not None:
            prompt = self.pickapic.caption(uid) or ""
        label_text = feats["prompt_misalignment_label"][0].decode("utf-8", errors="replace") if feats.get("prompt_misalignment_label") else ""
        words, label_info = match_labels(prompt, label_text) if prompt and label_text else ([], {})
        meta = {
            "source": "richhf18k",
            "split": where["split"],
            "file": where["file"],
            "filename": filename,
            "uid": uid,
            "raw_scores": raw,
            "prompt_misalignment_label": label_text,
            "has_prompt": bool(prompt),
            "has_image": bool(self.pickapic is not None and self.pickapic.has_image(uid)),
            "label_mismatch": bool(label_info.get("label_mismatch", False)),
            **({"n_tokens": label_info["n_tokens"], "n_labels": label_info["n_labels"]} if label_info else {}),
        }
        if problems:
            meta["decode_problems"] = problems
        return uid, prompt, scores, heatmaps, words, meta

    def _build_frame(self, progress) -> pd.DataFrame:
        rows = []
        for i in range(len(self._spans)):
            split, path, span = self._spans[i]
            try:
                feats, where = self._parse(i)
            except DatasetFormatError as e:
                rows.append({"id": None, "_span": i, "_skip_where": f"{path.name} record {i}", "_skip_reason": str(e)})
                continue
            uid, prompt, scores, heatmaps, words, meta = self._assemble(feats, where)
            rows.append(frame_row(
                f"{split}/{uid}" if uid else f"{split}/{i}", prompt, split, scores, heatmaps, words,
                filename=meta["filename"], has_image=meta["has_image"], has_prompt=meta["has_prompt"],
                label_mismatch=meta["label_mismatch"], _span=i, _skip_where="", _skip_reason="",
            ))
            if progress is not None and (i % 200 == 0 or i == len(self._spans) - 1):
                progress(i + 1, len(self._spans))
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
                data = pick.image_bytes(uid)
                if data is None:  # uid indexed but its jpg cell is empty: labels-only
                    return None
                return load_image(data, max_side=None, name=f"{rec_id} ({uid})")

        return Record(rec_id, prompt, scores, heatmaps, words, meta, load_image=loader)
