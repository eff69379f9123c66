"""One generator API over Stable Diffusion 1.x/2.x diffusers pipelines: the embedded ShapesWorld
model in `rhf_core/assets/t2i-shapes/`, a hub id, or a local folder. Other families (SDXL, SD3, Flux,
…) are refused before loading, by the pipeline class their `model_index.json` names.

    gen = load_generator()
    images = gen.generate(["two red circles"], n=4, seed=0)   # images[i][j]: sample j of prompt i
    fixed = gen.inpaint(image, mask, prompt, n=4, seed=0)       # mask: white = repaint

Sample j of a prompt with a seed is a pure function of (prompt, seed, j): the same whichever batch
or position it is generated in, so arms of an experiment can share seeds exactly."""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from rhf_core.cache import file_fingerprint, weights_fingerprint
from rhf_core.errors import RHFError
from rhf_core.images import load_image
from rhf_core.shipped import GENERATOR

DEFAULT_GENERATOR = GENERATOR
MAX_IMAGES_PER_CALL = 4096
# Diffusers' schedulers have 1000 training timesteps: more inference steps than that are refused there.
MAX_STEPS = 1000
# Classifier-free guidance beyond this only saturates the image (infinity gave black images, ranked).
MAX_GUIDANCE = 100.0
# The pipeline classes of Stable Diffusion 1.x and 2.x (ε- and v-prediction alike): one text encoder,
# a 4-channel latent UNet (9 for inpainting checkpoints), no added time/size conditioning. SDXL, SD3,
# Flux and the rest condition differently; LoRA training, inpainting and sampling here assume SD's.
SUPPORTED_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionInpaintPipeline",
                       "StableDiffusionImg2ImgPipeline")
SUPPORTED_TEXT = ("Stable Diffusion 1.x/2.x pipelines (StableDiffusionPipeline, or StableDiffusionInpaintPipeline "
                  "for inpainting checkpoints), as a local folder or a downloaded hub id")
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
# Reward guidance: the part of the schedule it applies to, as fractions of the steps (start, end).
ALL_STEPS = (0.0, 1.0)


class GeneratorError(RHFError, ValueError):
    """A generator that cannot be loaded, or a request it cannot serve (empty prompt, bad mask, ...)."""


def sample_seed(seed: int, prompt: str, j: int) -> int:
    return int(np.random.SeedSequence([int(seed), zlib.crc32(prompt.encode()), int(j)]).generate_state(1)[0])


def _check_prompts(prompts) -> list[str]:
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise GeneratorError("no prompts given")
    for p in prompts:
        if not isinstance(p, str) or not p.strip():
            raise GeneratorError("empty prompt: write what the image should show, e.g. 'two red circles'")
    return prompts


def _finite_number(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float, np.number)) and math.isfinite(v)


def _check_n(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise GeneratorError(f"n must be a positive number of images, got {n!r}")
    return int(n)


def whole_number(name: str, value, lo: int, hi: int | None, error: type[Exception]) -> int:
    """`value` as an int in [lo, hi]: ints, numpy ints and whole floats (25.0) pass; 2.5, True, NaN,
    strings do not."""
    ok = not isinstance(value, bool) and (
        isinstance(value, (int, np.integer)) or (isinstance(value, (float, np.floating)) and float(value).is_integer()))
    if ok:
        value = int(value)
        ok = value >= lo and (hi is None or value <= hi)
    if not ok:
        upper = f" to {hi:,}" if hi is not None else " or more"
        raise error(f"{name} must be a whole number from {lo}{upper}, got {value!r}")
    return value


def check_sampling(seed, steps, guidance, strength=None, error: type[Exception] = None) -> tuple:
    """(seed, steps, guidance[, strength]) checked before any work, as ints and floats; raises `error`
    (GeneratorError by default) with a readable message."""
    error = error or GeneratorError
    seed = whole_number("seed", seed, 0, None, error)
    steps = whole_number("steps", steps, 1, MAX_STEPS, error)
    if (isinstance(guidance, bool) or not isinstance(guidance, (int, float, np.number))
            or not math.isfinite(guidance) or not 0 <= guidance <= MAX_GUIDANCE):
        raise error(f"guidance must be a number from 0 to {MAX_GUIDANCE:g}, got {guidance!r}")
    out = (seed, steps, float(guidance))
    if strength is None:
        return out
    if (isinstance(strength, bool) or not isinstance(strength, (int, float, np.number))
            or not 0.0 < strength <= 1.0):
        raise error(f"strength must be in (0, 1], got {strength!r}")
    if int(steps * strength) < 1:
        raise error(f"{steps} steps at strength {strength} leave no denoising step: raise either")
    return out + (float(strength),)


def mask_array(mask, size: tuple[int, int]) -> np.ndarray:
    """A repaint mask as bool H×W (True = repaint) from a PIL 'L'/'1' image or a 2-D array."""
    if isinstance(mask, Image.Image):
        if mask.mode not in ("L", "1", "I", "F"):
            raise GeneratorError(f"the mask must be a single-channel (grayscale) image, got mode {mask.mode}; "
                                 "white = repaint, black = keep")
        arr = np.asarray(mask.convert("L")) >= 128
    else:
        arr = np.asarray(mask)
        if arr.ndim != 2:
            raise GeneratorError(f"the mask must be 2-D (H×W), got shape {arr.shape}")
        arr = arr > (127 if arr.dtype == np.uint8 else 0.5)
    w, h = size
    if arr.shape != (h, w):
        raise GeneratorError(f"the mask is {arr.shape[1]}×{arr.shape[0]} but the image is {w}×{h}")
    return arr


def pick_dtype(device: torch.device, dtype: str = "auto") -> torch.dtype:
    """`auto`: float32 on a CPU; on CUDA bfloat16 where the GPU has it (float32's range, so SD 2.x's
    attention and VAE cannot overflow to NaN as they can in float16), else float16."""
    if dtype != "auto":
        if dtype not in DTYPES:
            raise GeneratorError(f"dtype must be auto, {', '.join(DTYPES)}; got {dtype!r}")
        return DTYPES[dtype]
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class Generator:
    def __init__(self, pipe, name: str = "", device: str | None = None, dtype: str = "auto"):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = pick_dtype(self.device, dtype)
        self.pipe = pipe.to(self.device) if pipe.unet.dtype == self.dtype else pipe.to(self.device, self.dtype)
        self.pipe.set_progress_bar_config(disable=True)
        self.name = name
        self.adapter: str | None = None
        self._inpaint = None

    # --- facts ---------------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        return int(self.pipe.unet.config.sample_size) * int(self.pipe.vae_scale_factor)

    @property
    def is_inpainting_model(self) -> bool:
        return int(self.pipe.unet.config.in_channels) == 9

    @property
    def root(self) -> Path:
        """The folder (or hub id, as a path) the pipeline was loaded from."""
        return Path(str(self.pipe.config._name_or_path))

    @property
    def is_shapes_world(self) -> bool:
        """A ShapesWorld generator: the embedded one, or any pipeline `train-t2i` wrote (it leaves its
        train_log.json beside the weights), wherever it was saved and whatever it is called. Only these
        draw scenes the judge can read."""
        return "shapes" in self.name or (self.root / "train_log.json").is_file()

    @property
    def prediction_type(self) -> str:
        """What the UNet predicts: `epsilon` (SD 1.x, SD 2 base) or `v_prediction` (SD 2.x 768)."""
        return str(self.pipe.scheduler.config.get("prediction_type", "epsilon"))

    def fingerprint(self) -> list:
        """What identifies this model's weights for cache keys: its files (size, mtime) and the adapter's."""
        root = self.root
        files = file_fingerprint(root.rglob("*.safetensors")) if root.exists() else [self.name]
        if self.adapter:
            files += weights_fingerprint(self.adapter)
        return files

    def describe(self) -> str:
        n = sum(p.numel() for p in self.pipe.unet.parameters())
        extra = f", LoRA {Path(self.adapter).name}" if self.adapter else ""
        return f"{self.name} ({n / 1e6:.1f}M-parameter UNet, {self.image_size} px{extra}) on {self.device.type}"

    # --- LoRA ----------------------------------------------------------------------------
    def load_lora(self, path: str | Path) -> "Generator":
        """Load LoRA adapters (diffusers' `pytorch_lora_weights.safetensors`) into the UNet."""
        path = Path(path)
        if not (path / "pytorch_lora_weights.safetensors").is_file():
            raise GeneratorError(f"{path} holds no pytorch_lora_weights.safetensors (a LoRA adapter folder)")
        self.unload_lora()
        self.pipe.load_lora_weights(str(path), adapter_name="reward")
        self.pipe.to(self.device)
        self.adapter = str(path)
        return self

    def unload_lora(self) -> None:
        if self.adapter:
            self.pipe.unload_lora_weights()
            self.adapter = None

    # --- sampling ------------------------------------------------------------------------
    def _generators(self, prompt: str, seed: int, js) -> list[torch.Generator]:
        gdev = self.device if self.device.type == "cuda" else "cpu"
        return [torch.Generator(gdev).manual_seed(sample_seed(seed, prompt, j)) for j in js]

    @torch.no_grad()
    def generate(self, prompts: str | Sequence[str], n: int = 16, seed: int = 0, steps: int = 25,
                 guidance: float = 7.5, batch_size: int = 64,
                 progress: Callable[[int, int], None] | None = None, with_latents: bool = False,
                 reward_guidance=None, reward_scale: float = 1.0, guidance_steps: tuple = ALL_STEPS,
                 grad_clip: float = 0.0):
        """n images for each prompt: a list (one per prompt) of n PIL images. With `with_latents`,
        also the scaled latents the images were decoded from (P×n×C×h×w float32 on the CPU): the model's
        own samples exactly, without the loss of a decode → 8-bit → encode round trip.

        `reward_guidance` (a differentiable reward by spec, e.g. "rahf-plausibility" or "lee:DIR", or a
        reward object) steers every sample up that reward's gradient (see `guided_output`); the starting
        noise is the unguided sample's, so arms compare sample by sample. `reward_scale` is the step size,
        `guidance_steps` the (start, end) fractions of the schedule it acts in, `grad_clip` (> 0) caps each
        sample's gradient norm. None (the default) samples exactly as without these options."""
        if reward_guidance is not None:
            return self._generate_guided(prompts, n, seed, steps, guidance, batch_size, progress, with_latents,
                                         reward_guidance, reward_scale, guidance_steps, grad_clip)
        prompts, n, seed, steps, guidance, batch_size = self._check_generate(prompts, n, seed, steps, guidance,
                                                                             batch_size)
        jobs = [(i, p, j) for i, p in enumerate(prompts) for j in range(n)]
        out: list[list] = [[None] * n for _ in prompts]
        lat: list[list] = [[None] * n for _ in prompts]
        total, done = len(jobs) * steps, 0
        for s in range(0, len(jobs), batch_size):
            chunk = jobs[s:s + batch_size]

            def step_end(pipe, i, t, kw, _base=done):
                if progress is not None:
                    progress(_base + (i + 1) * len(chunk), total)
                return kw

            gens = [self._generators(p, seed, [j])[0] for _, p, j in chunk]
            res = self.pipe([p for _, p, _ in chunk], num_inference_steps=steps, guidance_scale=guidance,
                            height=self.image_size, width=self.image_size, generator=gens,
                            callback_on_step_end=step_end, output_type="latent" if with_latents else "pil").images
            imgs = self._decode(res) if with_latents else res
            for c, ((i, _, j), img) in enumerate(zip(chunk, imgs)):
                out[i][j] = img
                if with_latents:
                    lat[i][j] = res[c].float().cpu()
            done += len(chunk) * steps
        if with_latents:
            return out, torch.stack([torch.stack(row) for row in lat])
        return out

    def score_latents(self, latents: torch.Tensor, prompts: Sequence[str], reward) -> torch.Tensor:
        """A differentiable reward of scaled latents: decoded by the VAE, mapped to [0, 1] as the pipeline's
        postprocessing does, scored by `reward.score_pixels`; differentiable in `latents`."""
        vae = self.pipe.vae
        x = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0].float()
        return reward.score_pixels(((x + 1) / 2).clamp(0, 1), list(prompts)).float()

    def guided_output(self, out: torch.Tensor, latents: torch.Tensor, t, prompts: Sequence[str], reward,
                      scale: float, clip: float) -> torch.Tensor:
        """The model output (ε or v) shifted so that its predicted clean latent climbs the reward.

        Scheme: one step of universal guidance's *backward* guidance (Bansal et al., 2023). From x_t and the
        model output, the clean latent x̂0 is predicted; the reward r(decode(x̂0)) is differentiated with
        respect to x̂0 only (the UNet is not backpropagated: that would cost a UNet backward per step for a
        gradient that DPS-style methods find noisier); x̂0 moves by Δ = scale·∇r (each sample's gradient
        norm capped at `clip` when > 0), and the output is re-expressed so that, with x_t unchanged, it
        predicts x̂0 + Δ: ε' = ε − √(ᾱ/(1−ᾱ))·Δ, or v' = v − Δ/√(1−ᾱ). The scheduler then steps as usual, so
        any variance-preserving scheduler (DDIM, PNDM, DPM-Solver, …) works. Unlike forward (classifier)
        guidance, whose ε-shift √(1−ᾱ)·∇_{x_t} r = √((1−ᾱ)/ᾱ)·∇_{x̂0} r explodes at the noisiest steps
        (ᾱ → 0), this shift stays bounded there and acts through the clean-image estimate."""
        alpha = float(self.pipe.scheduler.alphas_cumprod[int(t)])
        out, latents = out.float(), latents.float()
        if self.prediction_type == "v_prediction":
            x0 = alpha ** 0.5 * latents - (1 - alpha) ** 0.5 * out
        else:
            x0 = (latents - (1 - alpha) ** 0.5 * out) / alpha ** 0.5
        x0 = x0.detach().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(self.score_latents(x0, prompts, reward).sum(), x0)
        if clip > 0:
            norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (grad.ndim - 1))
            grad = grad * (clip / norm).clamp(max=1.0)
        delta = scale * grad
        if self.prediction_type == "v_prediction":
            return out - delta / (1 - alpha) ** 0.5
        return out - (alpha / (1 - alpha)) ** 0.5 * delta

    def guidance_reward(self, reward):
        """A reward spec or object, checked to have a pixel gradient before any work."""
        if isinstance(reward, str):
            # Imported here: rhf_core.reward imports rhf_core.t2i (its experiments sample), so a top-level
            # import would be a cycle. No generator check: the judge is refused below, whatever the model.
            from rhf_core.reward.rewards import get_reward

            reward = get_reward(reward)
        if not getattr(reward, "differentiable", False) or not callable(getattr(reward, "score_pixels", None)):
            raise GeneratorError(f"reward guidance follows the reward's gradient, and {getattr(reward, 'spec', reward)!r} "
                                 "has none: use a differentiable reward (rahf-<score>[:DIR] for a trained or the "
                                 "embedded RAHF, lee, lee:DIR)")
        return reward

    def _check_guided(self, scale, steps_range, clip) -> tuple[float, float, float, float]:
        if not _finite_number(scale):
            raise GeneratorError(f"reward_scale must be a finite number, got {scale!r}")
        if not _finite_number(clip) or clip < 0:
            raise GeneratorError(f"grad_clip must be a number ≥ 0 (0 = no clipping), got {clip!r}")
        try:
            lo, hi = (float(v) for v in steps_range)
        except (TypeError, ValueError):
            raise GeneratorError(f"guidance_steps must be (start, end) fractions of the steps, got {steps_range!r}") from None
        if not 0.0 <= lo < hi <= 1.0:
            raise GeneratorError(f"guidance_steps must satisfy 0 ≤ start < end ≤ 1, got {steps_range!r}")
        sched = self.pipe.scheduler
        if not hasattr(sched, "alphas_cumprod") or float(getattr(sched, "init_noise_sigma", 1.0)) != 1.0:
            raise GeneratorError(f"reward guidance needs a variance-preserving scheduler (DDIM, PNDM, DDPM, "
                                 f"DPM-Solver…), not {type(sched).__name__}")
        return float(scale), lo, hi, float(clip)

    def _check_generate(self, prompts, n, seed, steps, guidance, batch_size) -> tuple:
        """`generate`'s arguments checked before any work (guided or not); returns them normalised."""
        prompts, n = _check_prompts(prompts), _check_n(n)
        seed, steps, guidance = check_sampling(seed, steps, guidance)
        batch_size = whole_number("batch_size", batch_size, 1, MAX_IMAGES_PER_CALL, GeneratorError)
        if len(prompts) * n > MAX_IMAGES_PER_CALL:
            raise GeneratorError(f"{len(prompts) * n} images asked for; at most {MAX_IMAGES_PER_CALL} per call")
        if self.is_inpainting_model:
            raise GeneratorError("this is an inpainting checkpoint (9-channel UNet): it can only inpaint")
        return prompts, n, seed, steps, guidance, batch_size

    def _generate_guided(self, prompts, n, seed, steps, guidance, batch_size, progress, with_latents,
                         reward, scale, steps_range, clip):
        prompts, n, seed, steps, guidance, batch_size = self._check_generate(prompts, n, seed, steps, guidance,
                                                                             batch_size)
        scale, lo, hi, clip = self._check_guided(scale, steps_range, clip)
        reward = self.guidance_reward(reward)
        jobs = [(i, p, j) for i, p in enumerate(prompts) for j in range(n)]
        out: list[list] = [[None] * n for _ in prompts]
        lat: list[list] = [[None] * n for _ in prompts]
        total = len(jobs) * steps
        for s in range(0, len(jobs), batch_size):
            chunk = jobs[s:s + batch_size]
            gens = [self._generators(p, seed, [j])[0] for _, p, j in chunk]

            def tick(i, _base=s * steps, _m=len(chunk)):
                if progress is not None:
                    progress(_base + (i + 1) * _m, total)

            res = self._sample_guided([p for _, p, _ in chunk], gens, steps, guidance, reward, scale,
                                      (lo, hi), clip, tick)
            imgs = self._decode(res)
            for c, ((i, _, j), img) in enumerate(zip(chunk, imgs)):
                out[i][j] = img
                lat[i][j] = res[c].float().cpu()
        if with_latents:
            return out, torch.stack([torch.stack(row) for row in lat])
        return out

    @torch.no_grad()
    def _sample_guided(self, prompts, gens, steps, guidance, reward, scale, steps_range, clip, tick):
        """StableDiffusionPipeline's denoising loop (same prompt encoding, starting noise, classifier-free
        guidance and scheduler steps), with the reward shift on the model output in the guided steps."""
        pipe, dev = self.pipe, self.device
        cfg = guidance > 1.0 and pipe.unet.config.time_cond_proj_dim is None
        cond, uncond = pipe.encode_prompt(prompts, dev, 1, cfg)
        emb = torch.cat([uncond, cond]) if cfg else cond
        pipe.scheduler.set_timesteps(steps, device=dev)
        latents = pipe.prepare_latents(len(prompts), int(pipe.unet.config.in_channels), self.image_size,
                                       self.image_size, emb.dtype, dev, gens)
        extra = pipe.prepare_extra_step_kwargs(gens, 0.0)
        lo, hi = steps_range
        for i, t in enumerate(pipe.scheduler.timesteps):
            x_in = pipe.scheduler.scale_model_input(torch.cat([latents] * 2) if cfg else latents, t)
            pred = pipe.unet(x_in, t, encoder_hidden_states=emb, return_dict=False)[0]
            if cfg:
                uncond_pred, cond_pred = pred.chunk(2)
                pred = uncond_pred + guidance * (cond_pred - uncond_pred)
            if scale and lo <= i / steps < hi:
                pred = self.guided_output(pred, latents, t, prompts, reward, scale, clip).to(pred.dtype)
            latents = pipe.scheduler.step(pred, t, latents, **extra, return_dict=False)[0]
            tick(i)
        return latents

    @torch.no_grad()
    def _decode(self, latents: torch.Tensor) -> list[Image.Image]:
        """Scaled latents → PIL images, as the pipeline's own output_type="pil" does it."""
        vae = self.pipe.vae
        x = vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]
        x, nsfw = self.pipe.run_safety_checker(x, x.device, x.dtype)
        keep = [True] * len(x) if nsfw is None else [not flag for flag in nsfw]
        return self.pipe.image_processor.postprocess(x, output_type="pil", do_denormalize=keep)

    def inpaint_pipeline(self):
        if self._inpaint is None:
            from diffusers import StableDiffusionInpaintPipeline

            self._inpaint = StableDiffusionInpaintPipeline.from_pipe(self.pipe)
            self._inpaint.set_progress_bar_config(disable=True)
        return self._inpaint

    @torch.no_grad()
    def inpaint(self, image, mask, prompt: str, n: int = 4, seed: int = 0, steps: int = 25, guidance: float = 7.5,
                strength: float = 1.0, progress: Callable[[int, int], None] | None = None) -> list[Image.Image]:
        """n candidates that repaint the white area of `mask`; every other pixel equals `image` exactly.

        The image is resized to the model's resolution for diffusion and the result resized back; the
        unmasked pixels are then copied from the original, so only the mask's inside ever changes."""
        (prompt,), n = _check_prompts([prompt]), _check_n(n)
        seed, steps, guidance, strength = check_sampling(seed, steps, guidance, strength)
        if n > MAX_IMAGES_PER_CALL:
            raise GeneratorError(f"{n} images asked for; at most {MAX_IMAGES_PER_CALL} per call")
        # Every image through load_image (16-bit, alpha, EXIF); a PIL image keeps its size.
        img = load_image(image, max_side=None) if isinstance(image, Image.Image) else load_image(image)
        keep = ~mask_array(mask, img.size)
        if keep.all():
            raise GeneratorError("the mask is empty: nothing to repaint")
        side = self.image_size
        small = img.resize((side, side), Image.BICUBIC)
        small_mask = Image.fromarray((~keep * 255).astype(np.uint8)).resize((side, side), Image.NEAREST)

        def step_end(pipe, i, t, kw):
            if progress is not None:
                progress((i + 1), steps)
            return kw

        pipe = self.inpaint_pipeline()
        outs = pipe([prompt] * n, image=[small] * n, mask_image=[small_mask] * n, height=side, width=side,
                    num_inference_steps=steps, guidance_scale=guidance, strength=strength,
                    generator=self._generators(prompt, seed, range(n)), callback_on_step_end=step_end).images
        orig = np.asarray(img)
        result = []
        for o in outs:
            big = np.asarray(o.convert("RGB").resize(img.size, Image.BICUBIC))
            result.append(Image.fromarray(np.where(keep[..., None], orig, big)))
        return result


def pipeline_class(target: str) -> str | None:
    """The pipeline class a folder's or (already downloaded) hub id's model_index.json names; None when it
    cannot be read without loading (the check after loading still applies)."""
    path = Path(target).expanduser()
    try:
        if path.exists():
            raw = json.loads((path / "model_index.json").read_text())
        else:
            from diffusers import DiffusionPipeline

            raw = DiffusionPipeline.load_config(target)
    except Exception:  # unreadable JSON, not downloaded, offline: the loader reports it
        return None
    name = raw.get("_class_name") if isinstance(raw, dict) else None
    return name if isinstance(name, str) else None


def check_pipeline_class(name: str | None, target: str) -> None:
    """Refuse every pipeline family but Stable Diffusion 1.x/2.x, naming what is supported."""
    if name is not None and name not in SUPPORTED_PIPELINES:
        raise GeneratorError(f"{target} is a {name}, which this project does not run: supported are {SUPPORTED_TEXT}")


def load_generator(name_or_path: str | Path | None = None, device: str | None = None,
                   dtype: str = "auto") -> Generator:
    """The embedded ShapesWorld pipeline, or a Stable Diffusion 1.x/2.x pipeline by folder or hub id.
    `dtype`: auto (float32 on CPU, bfloat16 or float16 on CUDA), float16, bfloat16 or float32."""
    from diffusers import DiffusionPipeline, StableDiffusionPipeline

    target = str(name_or_path) if name_or_path else str(DEFAULT_GENERATOR)
    path = Path(target).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise GeneratorError(f"{path} is not a diffusers pipeline folder (no model_index.json)")
        name = path.name
    elif not name_or_path:
        raise GeneratorError(f"the embedded generator is missing at {path}: run `python -m rhf_core train-t2i "
                             f"--out {path}`")
    elif target.count("/") != 1 or target.startswith((".", "/", "~")):
        raise GeneratorError(f"no such folder: {target} (and it is not a hub id like org/model)")
    else:
        name = target
    check_pipeline_class(pipeline_class(target), target)  # before loading gigabytes of another family
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch_dtype = pick_dtype(dev, dtype)
    try:
        pipe = DiffusionPipeline.from_pretrained(target if not path.exists() else str(path), dtype=torch_dtype,
                                                 safety_checker=None, requires_safety_checker=False)
    except Exception as err:  # diffusers raises OSError, ValueError, EnvironmentError, HF errors...
        raise GeneratorError(f"could not load a diffusers pipeline from {target}: {err}") from err
    check_pipeline_class(type(pipe).__name__, target)
    if not hasattr(pipe, "unet") or not hasattr(pipe, "vae"):
        raise GeneratorError(f"{target} is a {type(pipe).__name__}, not a Stable-Diffusion-style pipeline")
    if pipe.unet.config.get("addition_embed_type"):  # SDXL-style size/time conditioning under an SD class name
        raise GeneratorError(f"{target}'s UNet takes added {pipe.unet.config.addition_embed_type!r} conditioning "
                             f"(SDXL-style), which this project does not run: supported are {SUPPORTED_TEXT}")
    if not isinstance(pipe, StableDiffusionPipeline) and int(pipe.unet.config.in_channels) == 4:
        pipe = StableDiffusionPipeline.from_pipe(pipe)
    return Generator(pipe, name=name, device=str(dev), dtype=dtype)
