"""What every RAHF implementation shares — the embedded network (predictor.py) and the authors'
published port (port.py): the prediction type, argument checks, input tensors, the heatmap gate and
the records a RAHF can score. It sits below both, so neither imports the other's module for these."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from rhf_core.dataset import Dataset, tokenize_prompt
from rhf_core.errors import InvalidArgumentError, RHFError

# Largest batch `predict` accepts: 1024 images at 224 px are already a 600 MB input tensor.
MAX_BATCH_SIZE = 1024


class CheckpointError(RHFError):
    """A path that is not a RAHF checkpoint, or weights that do not fit its config."""


@dataclass
class Prediction:
    heatmaps: dict[str, np.ndarray]  # float32 H×W in [0, 1] at the input image's size
    scores: dict[str, float]  # the four canonical scores in [0, 1]
    words: list[tuple[str, float]]  # (prompt token, probability it is misaligned)
    meta: dict = field(default_factory=dict)

    @property
    def misaligned_words(self) -> list[str]:
        return [t for t, p in self.words if p >= 0.5]

    def to_json(self) -> dict:
        return {"scores": self.scores, "words": [[t, round(p, 4)] for t, p in self.words],
                "heatmap_shape": {k: list(v.shape) for k, v in self.heatmaps.items()}, **self.meta}


def check_prompt_words(prompts, what: str = "prompt") -> list[list[str]]:
    """Each prompt's RichHF tokens; refuses non-strings and prompts without a word.

    A prompt with no word (empty, or only punctuation like ".") is refused rather than predicted:
    RAHF scores an image against its prompt's words, and with none its text encoder has nothing to
    attend to (every prediction came out NaN). Any placeholder word would be an invented prompt whose
    scores look real. `None` is refused too (it was scored as the word "None")."""
    out = []
    for i, p in enumerate(prompts):
        where = f"{what} {i + 1}" if len(prompts) > 1 else what
        if not isinstance(p, str):
            raise InvalidArgumentError(f"{where} must be text, got {type(p).__name__}")
        words = tokenize_prompt(p)
        if not words:
            raise InvalidArgumentError(f"{where} {p[:40]!r} has no words: RAHF needs the prompt the image was "
                                       "generated from")
        out.append(words)
    return out


def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def images_to_tensor(images: Sequence[Image.Image], size: int) -> torch.Tensor:
    """RGB images → (B, 3, size, size) float in [0, 1]."""
    arrs = [np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0
            for im in images]
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous()


def heatmap_gate(name: str, scores: dict, words: list) -> float:
    """The model's confidence, in [0, 1], that heatmap `name` flags anything."""
    if name == "implausibility":
        return 1.0 - scores["plausibility"]
    probs = [p for _, p in words]
    return max(probs) if probs else 1.0 - scores["alignment"]


def scorable_records(ds: Dataset, max_records: int = 0) -> list:
    """The first `max_records` records (all when 0) that RAHF can score: readable, with an image and a
    prompt of at least one word (`predict` refuses a wordless prompt). Calibration reads the same ones."""
    n = len(ds) if not max_records else min(max_records, len(ds))
    out = []
    for i in range(n):
        try:
            rec = ds[i]
            if rec.image is not None and tokenize_prompt(rec.prompt or ""):
                out.append(rec)
        except RHFError:  # an unreadable image or heatmap file: not scorable
            continue
    return out


def check_predict_args(images, prompts, batch_size) -> tuple[list, list, list[list[str]]]:
    """`predict`'s arguments checked before any work (both RAHF implementations): lists of equal
    length, a whole batch size in range, prompts with words. Returns (images, prompts, each prompt's words)."""
    if isinstance(prompts, (str, bytes)) or isinstance(images, (str, bytes, Path, Image.Image)):
        raise InvalidArgumentError("pass lists: predict([image, …], [prompt, …])")
    try:
        images, prompts = list(images), list(prompts)
    except TypeError:
        raise InvalidArgumentError("pass lists: predict([image, …], [prompt, …])") from None
    if len(images) != len(prompts):
        raise InvalidArgumentError(f"{len(images)} images but {len(prompts)} prompts")
    if (isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer))
            or not 1 <= batch_size <= MAX_BATCH_SIZE):
        raise InvalidArgumentError(f"batch_size must be a whole number from 1 to {MAX_BATCH_SIZE}, got {batch_size!r}")
    return images, prompts, check_prompt_words(prompts)
