"""Train the embedded text-to-image generator on clean ShapesWorld renders (`python -m rhf_core train-t2i`).

Two stages, both resumable from `cache/t2i-train/<out name>/`:
1. the VAE (AutoencoderKL) learns to reconstruct renders (L1 + MSE + a small KL term) on random crops;
2. the UNet and the text encoder learn to denoise the VAE's latents given the prompt (epsilon
   prediction; the prompt is dropped 10% of the time for classifier-free guidance).
The result is a standard diffusers StableDiffusionPipeline saved with `save_pretrained`. The schedule,
the EMA, the SNR weighting and the state file come from the shared toolbox, rhf_core/training.py."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rhf_core.cache import atomic_write_bytes, cache_dir
from rhf_core.errors import InvalidArgumentError
from rhf_core.perturb import perturbed_prompts
from rhf_core.shapes.grammar import sample_prompt
from rhf_core.shapes.render import render, sample_scene
from rhf_core.t2i.build import TinyT2IConfig, build_components
from rhf_core.training import EMA, load_state, min_snr_weight, read_json, snr, state_bytes, warmup_cosine, write_json

STATE_FORMAT = "rhf-t2i-state/1"
TRAINER_FILE = "trainer.safetensors"  # the optimizer, the step and the log, beside one file per module


@dataclass
class T2ITrainConfig:
    out: str = "cache/t2i-run"
    n_images: int = 20000
    seed: int = 0
    vae_steps: int = 1200
    vae_batch: int = 32
    vae_lr: float = 2e-3
    vae_crop: int = 32  # the VAE is convolutional: train on random crops, 4× cheaper than full 64 px images
    kl_weight: float = 1e-6
    unet_steps: int = 3000
    unet_batch: int = 64
    unet_lr: float = 5e-4
    uncond_prob: float = 0.1
    lr_schedule: str = "cosine"  # "cosine" (to zero at unet_steps) or "constant" (a longer run = a resumed one)
    ema_decay: float = 0.0  # > 0: keep an exponential moving average of the UNet and text encoder and save it
    snr_gamma: float = 0.0  # > 0: min-SNR-gamma loss weighting (Hang et al. 2023), faster convergence
    save_every: int = 200
    state_dir: str | None = None
    init_from: str | None = None  # a saved pipeline: start from its weights (VAE kept as is) with a fresh optimizer
    # Share of training captions that misstate one attribute (count, colour, shape or background), as web
    # captions do: Lee et al.'s fine-tuning corrects a model whose pre-training text was unreliable.
    caption_noise: float = 0.0
    model: TinyT2IConfig = field(default_factory=TinyT2IConfig)


def training_set(n: int, seed: int, size: int, caption_noise: float = 0.0) -> tuple[np.ndarray, list[str]]:
    """n clean renders (no planted defects) of seen prompts: uint8 N×H×W×3 and their captions. With
    `caption_noise`, that share of captions misstates one attribute of its image (the images are the
    same as without)."""
    if not 0.0 <= caption_noise <= 1.0:
        raise InvalidArgumentError(f"caption_noise is a share of captions, in [0, 1]; got {caption_noise}")
    rng = np.random.default_rng(seed)
    noise_rng = np.random.default_rng([seed, 7])  # its own stream: the renders do not depend on it
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    prompts = []
    for i in tqdm(range(n), desc="rendering", leave=False):
        spec = sample_prompt(rng, unseen=False)
        scene, _ = sample_scene(spec, rng, size)
        images[i] = np.asarray(render(scene))
        caption = spec.text
        if caption_noise > 0 and noise_rng.random() < caption_noise:
            caption = (perturbed_prompts(caption, 1, noise_rng) or [caption])[0]
        prompts.append(caption)
    return images, prompts


def _pixels(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _save_state(path: Path, modules: dict, opt, step: int, log: list) -> None:
    """Each module's weights in `<name>.safetensors`, then the optimizer, step and log in TRAINER_FILE (the
    step a resume starts from, so it is written last); each file replaced atomically."""
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    for name, m in modules.items():
        save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(path / f"{name}.safetensors.tmp"))
        (path / f"{name}.safetensors.tmp").replace(path / f"{name}.safetensors")
    atomic_write_bytes(path / TRAINER_FILE, state_bytes({}, opt.state_dict(), {"step": step, "log": log}, STATE_FORMAT))


def _load_state(path: Path, modules: dict, opt) -> tuple[int, list]:
    from safetensors.torch import load_file

    if not (path / TRAINER_FILE).is_file():
        if (path / "trainer.pt").is_file():
            raise InvalidArgumentError(f"{path} holds a state saved by an older version (trainer.pt, a pickle this "
                                       "version does not read): start over with --no-resume")
        return 0, []
    for name, m in modules.items():
        m.load_state_dict(load_file(str(path / f"{name}.safetensors")))
    _, opt_state, meta = load_state(path / TRAINER_FILE, STATE_FORMAT)
    opt.load_state_dict(opt_state)
    return int(meta["step"]), meta["log"]


def train_vae(vae, images: np.ndarray, cfg: T2ITrainConfig, state: Path, resume: bool,
              should_stop: Callable[[], bool] | None = None) -> list:
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    start, log = _load_state(state, {"vae": vae}, opt) if resume else (0, [])
    if start:
        print(f"VAE: resumed at step {start}")
    rng = np.random.default_rng(cfg.seed + 1 + start)
    gen = torch.Generator().manual_seed(cfg.seed + start)
    vae.train()
    bar = tqdm(range(start, cfg.vae_steps), desc="VAE", initial=start, total=cfg.vae_steps)
    t0, losses = time.time(), []
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = cfg.vae_lr * warmup_cosine(step, cfg.vae_steps, 100, cfg.lr_schedule)  # VAE: 100 warm-up steps
        x = _pixels(images[rng.integers(len(images), size=cfg.vae_batch)])
        if cfg.vae_crop and cfg.vae_crop < x.shape[-1]:
            c = cfg.vae_crop
            oy, ox = (int(v) for v in rng.integers(0, x.shape[-1] - c + 1, size=2))
            x = x[:, :, oy:oy + c, ox:ox + c]
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=gen)).sample
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + cfg.kl_weight * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.vae_steps:
            log.append({"stage": "vae", "step": step + 1, "loss": float(np.mean(losses)),
                        "seconds": round(time.time() - t0, 1)})
            losses, t0 = [], time.time()
            _save_state(state, {"vae": vae}, opt, step + 1, log)
        if should_stop is not None and should_stop():
            _save_state(state, {"vae": vae}, opt, step + 1, log)
            raise KeyboardInterrupt("stopped")
    vae.eval()
    return log


@torch.no_grad()
def encode_all(vae, images: np.ndarray, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every image (sampled afresh at each UNet step)."""
    means, stds = [], []
    for s in tqdm(range(0, len(images), batch), desc="encoding", leave=False):
        post = vae.encode(_pixels(images[s:s + batch])).latent_dist
        means.append(post.mean)
        stds.append(post.std)
    return torch.cat(means), torch.cat(stds)


def train_t2i(cfg: T2ITrainConfig, resume: bool = True, should_stop: Callable[[], bool] | None = None):
    """Train both stages and save the pipeline to `cfg.out`; returns the pipeline."""
    from accelerate import Accelerator
    from diffusers import StableDiffusionPipeline

    accelerator = Accelerator()
    out = Path(cfg.out)
    root = Path(cfg.state_dir) if cfg.state_dir else cache_dir("t2i-train") / out.resolve().name
    torch.manual_seed(cfg.seed)
    comps = build_components(cfg.model, seed=cfg.seed)
    vae, unet, te, tok, sched = (comps[k] for k in ("vae", "unet", "text_encoder", "tokenizer", "scheduler"))
    images, prompts = training_set(cfg.n_images, cfg.seed, cfg.model.image_size, cfg.caption_noise)
    accelerator.print(f"T2I training: {len(images)} clean renders ({cfg.caption_noise:.0%} of captions misstated); "
                      f"VAE {sum(p.numel() for p in vae.parameters()):,} params, UNet {sum(p.numel() for p in unet.parameters()):,}, text encoder "
                      f"{sum(p.numel() for p in te.parameters()):,}; device {accelerator.device}")

    # 1. VAE (small: single process), or the weights of an earlier run to continue from
    if cfg.init_from:
        log = _init_from(Path(cfg.init_from), {"vae": vae, "unet": unet, "text_encoder": te})
        accelerator.print(f"continuing from {cfg.init_from} ({len(log)} earlier log entries); VAE kept")
    else:
        log = train_vae(vae, images, cfg, root / "vae", resume, should_stop)
    vae.requires_grad_(False)
    means, stds = encode_all(vae, images)
    scale = float(1.0 / means.std())
    vae.register_to_config(scaling_factor=scale)
    accelerator.print(f"latents {tuple(means.shape[1:])}, scaling factor {scale:.3f}")

    # 2. UNet + text encoder on latents
    ids = tok(prompts, padding="max_length", max_length=cfg.model.max_length, truncation=True,
              return_tensors="pt").input_ids
    empty = tok([""], padding="max_length", max_length=cfg.model.max_length, return_tensors="pt").input_ids
    params = list(unet.parameters()) + list(te.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=1e-2)
    start, log2 = _load_state(root / "unet", {"unet": unet, "text_encoder": te}, opt) if resume else (0, [])
    if start:
        accelerator.print(f"UNet: resumed at step {start}")
    modules = {"unet": unet, "text_encoder": te}
    ema = EMA(modules, cfg.ema_decay) if cfg.ema_decay > 0 else None
    if ema is not None and resume and ema.load(root / "unet"):
        accelerator.print(f"EMA: resumed after {ema.updates} updates")
    snr_t = snr(sched) if cfg.snr_gamma > 0 else None
    unet, te, opt = accelerator.prepare(unet, te, opt)
    rng = np.random.default_rng(cfg.seed + 2 + start)
    gen = torch.Generator().manual_seed(cfg.seed + 3 + start)
    unet.train()
    te.train()
    bar = tqdm(range(start, cfg.unet_steps), desc="UNet", initial=start, total=cfg.unet_steps,
               disable=not accelerator.is_local_main_process)
    t0, losses = time.time(), []
    dev = accelerator.device
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = cfg.unet_lr * warmup_cosine(step, cfg.unet_steps, 200, cfg.lr_schedule)  # UNet: 200
        idx = torch.from_numpy(rng.integers(len(means), size=cfg.unet_batch))
        lat = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen)) * scale
        noise = torch.randn(lat.shape, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (len(idx),), generator=gen)
        noisy = sched.add_noise(lat, noise, t)
        tokens = ids[idx].clone()
        drop = torch.rand(len(idx), generator=gen) < cfg.uncond_prob
        tokens[drop] = empty[0]
        pred = unet(noisy.to(dev), t.to(dev), te(tokens.to(dev))[0]).sample
        if snr_t is None:
            loss = F.mse_loss(pred.float(), noise.to(dev))
        else:  # epsilon prediction: weight min(SNR, gamma) / SNR per sample
            w = min_snr_weight(snr_t[t], cfg.snr_gamma).to(dev)
            loss = (F.mse_loss(pred.float(), noise.to(dev), reduction="none").mean(dim=(1, 2, 3)) * w).mean()
        opt.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(params, 1.0)
        opt.step()
        if ema is not None:
            ema.update({k: accelerator.unwrap_model(m) for k, m in (("unet", unet), ("text_encoder", te))})
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.unet_steps:
            log2.append({"stage": "unet", "step": step + 1, "loss": float(np.mean(losses)),
                         "seconds": round(time.time() - t0, 1)})
            accelerator.print(json.dumps(log2[-1]))
            losses, t0 = [], time.time()
            if accelerator.is_main_process:
                _save_state(root / "unet", {"unet": accelerator.unwrap_model(unet),
                                            "text_encoder": accelerator.unwrap_model(te)}, opt, step + 1, log2)
                if ema is not None:
                    ema.save(root / "unet")
        if should_stop is not None and should_stop():
            break
    accelerator.wait_for_everyone()
    unet, te = accelerator.unwrap_model(unet).eval(), accelerator.unwrap_model(te).eval()
    if ema is not None:  # ship the averaged weights
        ema.copy_to({"unet": unet, "text_encoder": te})
    pipe = StableDiffusionPipeline(vae=vae, unet=unet, text_encoder=te, tokenizer=tok, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    if accelerator.is_main_process:
        save_pipeline(pipe, out)
        write_json(out / "train_log.json", {"config": _jsonable(cfg), "log": log + log2})
    return pipe


def _init_from(path: Path, modules: dict) -> list:
    """Load a saved pipeline's weights (safetensors, any dtype) into `modules`; return its training log,
    each entry marked with the run it came from."""
    from safetensors.torch import load_file

    files = {"vae": "vae/diffusion_pytorch_model.safetensors", "unet": "unet/diffusion_pytorch_model.safetensors",
             "text_encoder": "text_encoder/model.safetensors"}
    for name, module in modules.items():
        f = path / files[name]
        if not f.is_file():
            raise FileNotFoundError(f"--init-from {path}: no {files[name]} (a pipeline saved by train-t2i)")
        sd = load_file(str(f))
        try:
            module.load_state_dict({k: v.float() for k, v in sd.items()})
        except RuntimeError as e:  # a different architecture
            raise InvalidArgumentError(f"--init-from {path}: the {name} does not match this model config ({e})") from None
    log_file = path / "train_log.json"
    if not log_file.is_file():
        return []
    earlier = read_json(log_file)
    run = {k: v for k, v in earlier.get("config", {}).items() if k != "model"}
    return [{**entry, "run": entry.get("run", run)} for entry in earlier.get("log", [])]


def save_pipeline(pipe, out: Path) -> None:
    """save_pretrained in float16 (half the bytes; loading casts back to the device's dtype)."""
    import copy
    import shutil

    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    copy.deepcopy(pipe).to(torch.float16).save_pretrained(tmp)
    keep = [p for p in ("metrics.json", "train_log.json", "README.md") if (out / p).is_file()]
    for p in keep:
        shutil.copy2(out / p, tmp / p)
    if out.exists():
        shutil.rmtree(out)
    tmp.replace(out)


def _jsonable(cfg: T2ITrainConfig) -> dict:
    d = asdict(cfg)
    d["model"] = cfg.model.to_dict()
    return d
