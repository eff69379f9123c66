"""RAHF configuration: saved as config.json beside the safetensors weights."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rhf_core.cache import atomic_write_text
from rhf_core.dataset import HEATMAP_NAMES, SCORE_NAMES
from rhf_core.errors import InvalidArgumentError

# Task strings of the augmented-prompt variant (RichHF sec. 4.2): the task is named in the text.
TASKS = {
    **{h: f"{h} heatmap" for h in HEATMAP_NAMES},
    **{s: f"{s} score" for s in SCORE_NAMES},
    "keywords": "misaligned keywords",
}


@dataclass
class VisionConfig:
    # "scratch": a small ViT trained from scratch; "hf": a Hugging Face vision tower
    # (ViT, SigLIP or CLIP vision) loaded from `name_or_path`.
    kind: str = "scratch"
    name_or_path: str = ""
    # Scratch ViT: patch size in pixels (a power of two), width, depth, attention heads.
    patch_size: int = 8
    dim: int = 96
    layers: int = 2
    heads: int = 4


@dataclass
class TextConfig:
    # "scratch": hashed word embeddings + a small transformer; "hf": a T5 / BERT-style encoder
    # and its tokenizer from `name_or_path` (subword states are averaged per prompt word).
    kind: str = "scratch"
    name_or_path: str = ""
    # Scratch: hash buckets for words (case-folded), width, depth, heads.
    vocab_buckets: int = 2048
    dim: int = 96
    layers: int = 1
    heads: int = 4


# Fields that size a scratch encoder (refused with a Hugging Face backbone, which has its own sizes).
SCRATCH_FIELDS = {VisionConfig: ("patch_size", "dim", "layers", "heads"),
                  TextConfig: ("vocab_buckets", "dim", "layers", "heads")}


@dataclass
class RAHFConfig:
    # Input resolution the image is resized to (pixels, square).
    image_size: int = 64
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    # Fusion transformer over [image tokens; text tokens]: width, depth, heads.
    fusion_dim: int = 96
    fusion_layers: int = 3
    fusion_heads: int = 4
    # "multihead": one pass, a head per output; "augmented": one head per output type and the
    # task named in the prompt (one fusion pass per task), the paper's best variant.
    variant: str = "multihead"
    # Longest prompt in words (longer prompts are truncated; their extra words get probability 0).
    max_words: int = 48
    dropout: float = 0.0
    # Heatmap decoder skip connections from the image itself: at each 2× upsampling stage a small
    # convolution of the input downsampled to that resolution joins the decoder (U-Net style), so maps
    # can be sharper than the patch grid. Off in checkpoints saved before it existed.
    heatmap_skip: bool = False
    # Post-hoc calibration (rhf_core.rahf.calibrate, fitted on dev labels): each predicted map times
    # its scale and the model's confidence that the map flags anything. Empty: raw maps.
    heatmap_scale: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RAHFConfig":
        d = dict(d)
        vision = VisionConfig(**d.pop("vision", {}))
        text = TextConfig(**d.pop("text", {}))
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise InvalidArgumentError(f"unknown RAHF config fields: {sorted(unknown)}")
        cfg = cls(vision=vision, text=text, **d)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.variant not in ("multihead", "augmented"):
            raise InvalidArgumentError(f"variant must be 'multihead' or 'augmented', got {self.variant!r}")
        for part in (self.vision, self.text):
            if part.kind not in ("scratch", "hf"):
                raise InvalidArgumentError(f"backbone kind must be 'scratch' or 'hf', got {part.kind!r}")
            if part.kind == "hf" and not part.name_or_path:
                raise InvalidArgumentError("an 'hf' backbone needs name_or_path")
        for name, scale in self.heatmap_scale.items():
            if name not in HEATMAP_NAMES or not float(scale) > 0:
                raise InvalidArgumentError(f"heatmap_scale needs positive scales of known heatmaps, got {name!r}: {scale!r}")
        for part, default in ((self.vision, VisionConfig()), (self.text, TextConfig())):
            if part.kind == "hf":  # the scratch sizes mean nothing to a Hugging Face backbone: refuse, never ignore
                changed = [f for f in SCRATCH_FIELDS[type(part)] if getattr(part, f) != getattr(default, f)]
                if changed:
                    raise InvalidArgumentError(
                        f"{', '.join(changed)} set the scratch {type(part).__name__[:-6].lower()} encoder's size; "
                        f"the Hugging Face backbone {part.name_or_path!r} has its own (from its config.json). "
                        "Leave them at their defaults, or drop the backbone to train a scratch one.")
        p = self.vision.patch_size
        if self.vision.kind == "scratch" and (p & (p - 1) or self.image_size % p):
            raise InvalidArgumentError(f"patch size {p} must be a power of two dividing the image size {self.image_size}")

    def save(self, directory: Path) -> None:
        atomic_write_text(Path(directory) / "config.json", json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> "RAHFConfig":
        return cls.from_dict(json.loads((Path(directory) / "config.json").read_text()))
