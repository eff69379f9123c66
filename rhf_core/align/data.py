"""What a fine-tune trains on (Lee et al. sec. 4.3): the prompts, D_model (the model's own samples,
scored by the reward) and D_pre (pre-training image–caption pairs), and the prompts' text embeddings."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from rhf_core.align.config import FinetuneConfig
from rhf_core.cache import atomic_savez, cache_dir, cache_key, file_fingerprint, weights_fingerprint
from rhf_core.images import load_image
from rhf_core.reward.model import RewardError
from rhf_core.reward.train import default_prompt_split
from rhf_core.t2i.train import training_set

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
# A reward whose spread over the run's samples is below this share of their mean magnitude ranks nothing.
# The rewards are float32 (7 significant digits, eps 1.2e-7): differences below 1e-6 of the reward's own
# scale are rounding, not a judgement, and reward-weighted likelihood with weights equal to 1e-6 is plain
# likelihood on the model's own samples. Relative, so a reward on any scale is judged alike.
CONSTANT_REWARD_RTOL = 1e-6


class ConstantRewardError(RewardError):
    """The reward gave (nearly) the same value to every sample of the run, so it cannot rank them."""


@dataclass
class ModelSamples:
    """D_model: the generator's own samples as the scaled latents the sampler produced (N×C×h×w), their
    prompts and their rewards."""

    latents: torch.Tensor
    prompts: list[str]
    rewards: np.ndarray


def is_shapes_generator(generator) -> bool:
    """A ShapesWorld generator: the embedded one, or any pipeline `train-t2i` wrote (it leaves its
    train_log.json beside the weights), wherever it was saved and whatever it is called."""
    return bool(generator.is_shapes_world)


def fine_tune_prompts(cfg: FinetuneConfig, generator=None) -> list[str]:
    """The prompts of `cfg`: a text file's lines, or ("train") the reward's ShapesWorld training prompts —
    refused for a `generator` that is not a ShapesWorld one, which they do not fit."""
    if cfg.prompts == "train":
        if generator is not None and not is_shapes_generator(generator):
            raise RewardError(f"{generator.name or generator.root} is not a ShapesWorld generator, so ShapesWorld's "
                              "training prompts do not fit it: give the prompts to fine-tune on as a text file, one "
                              "prompt a line (--prompts FILE)")
        return default_prompt_split()["train"][: cfg.n_prompts]
    path = Path(cfg.prompts)
    if not path.is_file():
        raise RewardError(f"prompt file not found: {path}")
    prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
        raise RewardError(f"{path} holds no prompts")
    return prompts[: cfg.n_prompts]


def model_samples(cfg: FinetuneConfig, generator, reward, prompts: list[str],
                  progress: Callable[[str, float], None]) -> ModelSamples:
    """Generate, score and keep D_model: `per_prompt` samples of each prompt at `sample_guidance` (cached
    on disk under cache/finetune-data, keyed by the generator's and the reward's weights)."""
    weights = weights_fingerprint(getattr(reward, "path", None))
    key = cache_key("d-model", "sampled-latents", generator.fingerprint(), cfg.reward, getattr(reward, "__name__", ""),
                    weights, prompts, cfg.per_prompt, cfg.seed, cfg.sample_guidance)
    path = cache_dir("finetune-data") / f"{key}.npz"
    if path.is_file():
        z = np.load(path, allow_pickle=False)
        return ModelSamples(torch.from_numpy(z["latents"]), [str(p) for p in z["prompts"]], z["rewards"])
    # The latents the sampler produced are the model's samples exactly; re-encoding the decoded 8-bit
    # images would train the UNet on the VAE's round-trip error instead.
    images, latents = generator.generate(prompts, n=cfg.per_prompt, seed=cfg.seed, with_latents=True,
                                         guidance=cfg.sample_guidance,
                                         progress=lambda d, t: progress("generating", d / t))
    latents = latents.flatten(0, 1)  # (P·n, C, h, w)
    flat = [im for imgs in images for im in imgs]
    flat_prompts = [p for p in prompts for _ in range(cfg.per_prompt)]
    progress("scoring", 0.0)
    rewards = np.asarray(reward(flat, flat_prompts), np.float32)
    atomic_savez(path, compressed=False, latents=latents.numpy(), prompts=np.array(flat_prompts), rewards=rewards)
    return ModelSamples(latents, flat_prompts, rewards)


def check_reward_varies(rewards, generator, consequence: str) -> None:
    """Refuse a reward that gave the same value to every sample (see CONSTANT_REWARD_RTOL): it cannot rank
    them, and `consequence` says what that means for the objective."""
    r = np.asarray(rewards, np.float64)
    if len(r) and r.std() > CONSTANT_REWARD_RTOL * np.abs(r).mean():
        return
    fits = ("for a ShapesWorld generator: lee, judge or rahf-<score>" if is_shapes_generator(generator) else
            "a reward trained on images like this generator's (lee:DIR from train-reward, rahf-<score>:DIR), or a "
            "reward object that scores its samples")
    value = f" ({r[0]:.6g})" if len(r) else ""
    raise ConstantRewardError(f"the reward gave the same value{value} to all {len(r)} samples; it cannot rank them "
                              f"({consequence}) — pick a reward that fits this generator: {fits}")


@torch.no_grad()
def encode_latents(generator, images: list, batch: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled VAE posterior mean and std of PIL images at the generator's resolution (a latent is
    drawn afresh from them at each step, as in pre-training)."""
    side = generator.image_size
    vae = generator.pipe.vae
    means, stds = [], []
    for s in range(0, len(images), batch):
        arr = np.stack([np.asarray(im.convert("RGB").resize((side, side), Image.BICUBIC))
                        for im in images[s:s + batch]])  # (B, H, W, 3)
        x = torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(127.5).sub(1).to(generator.device, generator.dtype)
        post = vae.encode(x).latent_dist
        means.append((post.mean * vae.config.scaling_factor).float().cpu())
        stds.append((post.std * vae.config.scaling_factor).float().cpu())
    return torch.cat(means), torch.cat(stds)


def _folder_pairs(cfg: FinetuneConfig) -> list[tuple[Path, Path]]:
    """The pre-training folder's (image, caption file) pairs, the first `n_pretrain` by name."""
    root = Path(cfg.pretrain_folder)
    pairs = [(p, p.with_suffix(".txt")) for p in sorted(root.glob("*")) if p.suffix.lower() in IMAGE_SUFFIXES]
    pairs = [(p, t) for p, t in pairs if t.is_file()][: cfg.n_pretrain]
    if not pairs:
        raise RewardError(f"{root}: no image with a caption file beside it (photo.png + photo.txt)")
    return pairs


def pretrain_pairs(cfg: FinetuneConfig, generator) -> tuple[list, list[str]] | None:
    """D_pre: the user's image–caption folder, or clean ShapesWorld renders for a ShapesWorld generator;
    None (the β term off, with a warning) for any other generator without a folder."""
    if cfg.pretrain_folder:
        pairs = _folder_pairs(cfg)
        return [load_image(p) for p, _ in pairs], [t.read_text().strip() for _, t in pairs]
    if is_shapes_generator(generator):
        images, prompts = training_set(cfg.n_pretrain, cfg.seed + 101, generator.image_size)
        return [Image.fromarray(a) for a in images], prompts
    warnings.warn("no pre-training folder for this model: the β term is off (pass --pretrain-folder)", stacklevel=2)
    return None


def pretrain_latents(cfg: FinetuneConfig, generator) -> tuple[torch.Tensor, torch.Tensor, list[str]] | None:
    """D_pre encoded by the generator's VAE: (posterior means, stds, captions), or None as `pretrain_pairs`.
    Cached on disk (cache/finetune-data) by the generator's weights and what D_pre is made of (the folder's
    files with their sizes and times, or the renders' count, seed and size): rendering and encoding 4,000
    images took most of a short run's time, and every resume paid it again."""
    if cfg.pretrain_folder:
        source = ["folder", file_fingerprint([f for pair in _folder_pairs(cfg) for f in pair])]
    elif is_shapes_generator(generator):
        source = ["shapes", cfg.n_pretrain, cfg.seed + 101, generator.image_size]
    else:
        return pretrain_pairs(cfg, generator)  # None, with its warning
    key = cache_key("d-pre", "encoded", generator.fingerprint(), source)
    path = cache_dir("finetune-data") / f"{key}.npz"
    if path.is_file():
        z = np.load(path, allow_pickle=False)
        return torch.from_numpy(z["mean"]), torch.from_numpy(z["std"]), [str(c) for c in z["captions"]]
    images, captions = pretrain_pairs(cfg, generator)
    mean, std = encode_latents(generator, images)
    atomic_savez(path, compressed=False, mean=mean.numpy(), std=std.numpy(), captions=np.array(captions))
    return mean, std, list(captions)


@dataclass
class PretrainLatents:
    """D_pre encoded: posterior mean and std of each image (N×C×h×w) and its caption's embedding."""

    mean: torch.Tensor
    std: torch.Tensor
    cond: torch.Tensor  # (N, L, D)


class PromptEmbeddings:
    """The text encoder's output for every prompt the run uses, computed once (the encoder is frozen),
    and for the empty prompt (classifier-free guidance's unconditional branch)."""

    def __init__(self, generator, prompts):
        pipe = generator.pipe
        self.tokenizer, self.encoder, self.device = pipe.tokenizer, pipe.text_encoder, generator.device
        self.max_len = min(self.tokenizer.model_max_length, 77)
        uniq = sorted(set(prompts))
        table = torch.cat([self._embed(uniq[s:s + 256]) for s in range(0, len(uniq), 256)])
        self.table = dict(zip(uniq, table))
        self.empty = self._embed([""])[0]  # (L, D)

    @torch.no_grad()
    def _embed(self, texts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(texts, padding="max_length", max_length=self.max_len, truncation=True,
                             return_tensors="pt").input_ids
        return self.encoder(ids.to(self.device))[0].float().cpu()

    def of(self, prompts: list[str]) -> torch.Tensor:
        """(N, L, D) embeddings of `prompts`, in order."""
        return torch.stack([self.table[p] for p in prompts])


def reward_stats(rewards) -> dict:
    """Of D_model's rewards, or for draft of the rewards its samples got while training."""
    r = np.asarray(rewards, np.float64)
    if not len(r):
        return {"n": 0}
    return {"n": int(len(r)), "mean": round(float(r.mean()), 4), "std": round(float(r.std()), 4),
            "share_positive": round(float(np.mean(r > 0.5)), 4)}
