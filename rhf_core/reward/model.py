"""Lee et al.'s reward model: r(x, z) = MLP(concat(image embedding, text embedding)) over a frozen
CLIP-style encoder pair, trained to predict binary good/bad labels (see `rhf_core.reward.train`)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from rhf_core.cache import atomic_write_text
from rhf_core.errors import RHFError
from rhf_core.reward.encoders import Encoders, load_encoders
from rhf_core.shipped import REWARD_MODEL

DEFAULT_REWARD = REWARD_MODEL


class RewardError(RHFError, ValueError):
    """A reward that cannot be loaded or computed."""


@dataclass
class RewardConfig:
    encoders: str = ""  # "" = the embedded ShapesWorld CLIP; else a hub id or path
    hidden: int = 256
    lam: float = 0.5  # weight of the prompt-classification loss
    temperature: float = 0.1
    n_perturbed: int = 8


class RewardHead(nn.Module):
    """The two-layer MLP of Lee et al. (Algorithm 1's pred_r), with a sigmoid so r ∈ (0, 1)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 * dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, 1))

    def forward(self, img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(torch.cat([img, txt], dim=-1)).squeeze(-1))


class RewardModel:
    """A reward (see `rhf_core.reward.rewards`): callable on PIL images, and differentiable in the pixels."""

    differentiable = True

    def __init__(self, encoders: Encoders, head: RewardHead, config: RewardConfig, path: Path | None = None):
        self.encoders, self.head, self.config, self.path = encoders, head.eval(), config, path
        # The spec it was asked for by: `lee` for the embedded model, else `lee:DIR`.
        self.spec = "lee" if path is None or Path(path).resolve() == DEFAULT_REWARD.resolve() else f"lee:{path}"

    @property
    def name(self) -> str:
        head, _, folder = self.spec.partition(":")
        return f"{head}:{Path(folder).name}" if folder else head

    def __repr__(self) -> str:
        return f"<RewardModel {self.spec} on {self.encoders.name}>"

    @torch.no_grad()
    def score_embeddings(self, img: np.ndarray, txt: np.ndarray) -> np.ndarray:
        return self.head(torch.as_tensor(img, dtype=torch.float32), torch.as_tensor(txt, dtype=torch.float32)).numpy()

    def score_pixels(self, pixels: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """r for B×3×H×W images with values in [0, 1], differentiable in the pixels (what reward
        backpropagation fine-tunes through). Preprocessing follows the image processor: resize to its
        crop size, normalise with its mean and std."""
        if len(pixels) != len(prompts):
            raise RewardError(f"{len(pixels)} images but {len(prompts)} prompts")
        proc = self.encoders.processor
        size = (int(proc.crop_size["height"]), int(proc.crop_size["width"]))
        x = pixels.to(self.encoders.device, torch.float32)
        if tuple(x.shape[-2:]) != size:
            x = torch.nn.functional.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
        mean = torch.tensor(proc.image_mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(proc.image_std, device=x.device).view(1, 3, 1, 1)
        txt = torch.as_tensor(self._text_embeddings(prompts), device=x.device)
        return self.head.to(x.device)(self.encoders.image_features((x - mean) / std), txt)

    def _text_embeddings(self, prompts: Sequence[str]) -> np.ndarray:
        """One embedding per prompt, each distinct prompt encoded once."""
        uniq = sorted(set(prompts))
        table = dict(zip(uniq, self.encoders.embed_texts(uniq)))
        return np.stack([table[p] for p in prompts])

    def __call__(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> np.ndarray:
        if len(images) != len(prompts):
            raise RewardError(f"{len(images)} images but {len(prompts)} prompts")
        if not len(images):
            return np.zeros(0, np.float32)
        return self.score_embeddings(self.encoders.embed_images(list(images)), self._text_embeddings(prompts))

    def save(self, path: str | Path, metrics: dict | None = None) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.head.state_dict().items()}, str(path / "head.safetensors"))
        atomic_write_text(path / "config.json", json.dumps({**asdict(self.config), "dim": self.encoders.dim}, indent=2) + "\n")
        if metrics is not None:
            atomic_write_text(path / "metrics.json", json.dumps(metrics, indent=2) + "\n")


def load_reward_model(path: str | Path | None = None, encoders: Encoders | None = None,
                      device: str | None = None) -> RewardModel:
    """The embedded ShapesWorld reward model, or a folder written by `train-reward`."""
    from safetensors.torch import load_file

    path = Path(path) if path else DEFAULT_REWARD
    if not (path / "config.json").is_file() or not (path / "head.safetensors").is_file():
        raise RewardError(f"{path} is not a reward model folder (config.json + head.safetensors)")
    raw = json.loads((path / "config.json").read_text())
    dim = int(raw.pop("dim"))
    cfg = RewardConfig(**{k: v for k, v in raw.items() if k in RewardConfig.__dataclass_fields__})
    enc = encoders or load_encoders(cfg.encoders or None, device)
    if enc.dim != dim:
        raise RewardError(f"the reward head expects {dim}-d embeddings but {enc.name} gives {enc.dim}")
    head = RewardHead(dim, cfg.hidden)
    state = load_file(str(path / "head.safetensors"))
    missing, unexpected = head.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RewardError(f"{path}: weights do not match the config (missing {missing}, unexpected {unexpected})")
    return RewardModel(enc, head, cfg, path)
