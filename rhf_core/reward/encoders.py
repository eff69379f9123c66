"""CLIP-style encoder pairs for the reward model: Hugging Face CLIP by hub id or path, or the small
CLIP trained contrastively on ShapesWorld and shipped in `rhf_core/assets/clip-shapes/`.

Both are the same class (`transformers.CLIPModel`) with a tokenizer and an image processor saved
beside it, so one code path embeds images and prompts for any of them."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from rhf_core.errors import RHFError
from rhf_core.judge import degrade
from rhf_core.shapes.grammar import sample_prompt
from rhf_core.shapes.render import render, sample_scene
from rhf_core.t2i.build import build_tokenizer
from rhf_core.shipped import CLIP_ENCODERS

DEFAULT_ENCODERS = CLIP_ENCODERS


class EncoderError(RHFError, ValueError):
    """Encoders that cannot be loaded."""


def _features(out) -> torch.Tensor:
    """Projected features: transformers 5 returns an output whose pooler_output is projected; 4 a tensor."""
    return (out if isinstance(out, torch.Tensor) else out.pooler_output).float()


class Encoders:
    """A CLIPModel with its tokenizer and image processor; embeddings are L2-normalised."""

    def __init__(self, model, tokenizer, processor, name: str, device: str | None = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.tokenizer, self.processor, self.name = tokenizer, processor, name

    @property
    def dim(self) -> int:
        return int(self.model.config.projection_dim)

    def _pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]

    def _tokens(self, prompts: Sequence[str]) -> dict:
        return self.tokenizer(list(prompts), padding="max_length", truncation=True, return_tensors="pt",
                              max_length=min(self.tokenizer.model_max_length, 77))

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(_features(self.model.get_image_features(pixel_values=pixels.to(self.device))), dim=-1)

    def text_features(self, tokens: dict) -> torch.Tensor:
        tokens = {k: v.to(self.device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
        return F.normalize(_features(self.model.get_text_features(**tokens)), dim=-1)

    @torch.no_grad()
    def embed_images(self, images: Sequence[Image.Image], batch_size: int = 256) -> np.ndarray:
        out = [self.image_features(self._pixels(images[s:s + batch_size])).cpu().numpy()
               for s in range(0, len(images), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    @torch.no_grad()
    def embed_texts(self, prompts: Sequence[str], batch_size: int = 512) -> np.ndarray:
        out = [self.text_features(self._tokens(prompts[s:s + batch_size])).cpu().numpy()
               for s in range(0, len(prompts), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        self.processor.save_pretrained(path)


def load_encoders(name_or_path: str | Path | None = None, device: str | None = None) -> Encoders:
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    target = str(name_or_path or DEFAULT_ENCODERS)
    if Path(target).exists() and not (Path(target) / "config.json").is_file():
        raise EncoderError(f"{target} is not a CLIP model folder (no config.json)")
    if not name_or_path and not Path(target).exists():
        raise EncoderError(f"the embedded encoders are missing at {target}: run `python -m rhf_core train-clip`")
    try:
        model = CLIPModel.from_pretrained(target)
        tok = AutoTokenizer.from_pretrained(target)
        proc = AutoImageProcessor.from_pretrained(target)
    except Exception as err:  # OSError, ValueError, hub errors
        raise EncoderError(f"could not load CLIP encoders from {target}: {err}") from err
    return Encoders(model, tok, proc, Path(target).name if Path(target).exists() else target, device)


# --- the small ShapesWorld CLIP ------------------------------------------------------------------

@dataclass
class TinyCLIPConfig:
    image_size: int = 64
    patch_size: int = 8
    dim: int = 64
    vision_layers: int = 2
    text_layers: int = 2
    heads: int = 4
    projection_dim: int = 64
    max_length: int = 16


def build_tiny_clip(cfg: TinyCLIPConfig | None = None, seed: int = 0) -> Encoders:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    cfg = cfg or TinyCLIPConfig()
    torch.manual_seed(seed)
    tok = build_tokenizer(max_length=cfg.max_length)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=cfg.dim, intermediate_size=cfg.dim * 4,
                         num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.heads,
                         max_position_embeddings=cfg.max_length, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id),
        vision_config=dict(image_size=cfg.image_size, patch_size=cfg.patch_size, hidden_size=cfg.dim,
                           intermediate_size=cfg.dim * 4, num_hidden_layers=cfg.vision_layers,
                           num_attention_heads=cfg.heads),
        projection_dim=cfg.projection_dim,
    )
    proc = CLIPImageProcessor(size={"shortest_edge": cfg.image_size},
                              crop_size={"height": cfg.image_size, "width": cfg.image_size},
                              image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25])
    return Encoders(CLIPModel(config), tok, proc, "tiny-clip", device="cpu")


def contrastive_pairs(n: int, seed: int, size: int = 64) -> tuple[list[Image.Image], list[str]]:
    """Renders of seen prompts with their prompts; a third are degraded like a diffusion model's output
    and a third carry a planted defect, so the encoders see what generated images look like."""
    rng = np.random.default_rng(seed)
    images, prompts = [], []
    for _ in tqdm(range(n), desc="rendering", leave=False):
        spec = sample_prompt(rng, unseen=False)
        scene, _ = sample_scene(spec, rng, size, n_implausible=int(rng.random() < 0.33))
        img = render(scene)
        images.append(degrade(img, rng) if rng.random() < 0.33 else img)
        prompts.append(spec.text)
    return images, prompts


def train_tiny_clip(out: str | Path, n: int = 20000, steps: int = 1500, batch_size: int = 128, lr: float = 1e-3,
                    seed: int = 0, cfg: TinyCLIPConfig | None = None) -> dict:
    """Symmetric InfoNCE on (render, prompt) pairs; identical prompts in a batch count as positives."""
    enc = build_tiny_clip(cfg, seed)
    images, prompts = contrastive_pairs(n, seed, enc.processor.crop_size["height"])
    pixels = enc._pixels(images)
    tokens = enc._tokens(prompts)
    prompt_ids = np.unique(np.array(prompts), return_inverse=True)[1]
    model = enc.model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    rng = np.random.default_rng(seed)
    log, t0 = [], time.time()
    bar = tqdm(range(steps), desc="CLIP")
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / steps))
        idx = rng.integers(len(images), size=batch_size)
        img = enc.image_features(pixels[idx])
        txt = enc.text_features({k: v[idx] for k, v in tokens.items()})
        logits = img @ txt.T * model.logit_scale.exp().clamp(max=100)
        same = torch.from_numpy(prompt_ids[idx][:, None] == prompt_ids[idx][None, :]).float()
        target = same / same.sum(1, keepdim=True)
        loss = 0.5 * (-(target * logits.log_softmax(1)).sum(1).mean() - (target * logits.T.log_softmax(1)).sum(1).mean())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if (step + 1) % 200 == 0:
            log.append({"step": step + 1, "loss": round(loss.item(), 4), "seconds": round(time.time() - t0, 1)})
    model.eval()
    enc.save(out)
    return {"log": log, "pairs": n, "steps": steps, "batch_size": batch_size}
