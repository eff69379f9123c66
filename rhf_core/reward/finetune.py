"""Reward-weighted fine-tuning (Lee et al. sec. 4.3; `python -m rhf_core finetune`).

1. D_model: n images per prompt of a prompt set from the original model, each scored by a reward r.
2. LoRA adapters on the UNet are trained with
       loss = mean(r · denoising loss on D_model) + β · denoising loss on D_pre,
   D_pre being pre-training data: clean ShapesWorld renders for the embedded world, or a folder of
   image–caption pairs for a real model (the β term is off, with a warning, when there is none).
3. The adapter is saved as diffusers LoRA weights (safetensors) with `adapter.json` (config and
   reward statistics) under `cache/adapters/<name>/`.

Runs under `accelerate launch` on several GPUs; single-process on a CPU. Resumable and cancellable: the LoRA
weights, optimizer state and log are saved every `save_every` steps as one file,
`cache/finetune-state/<name>/state.safetensors`, replaced atomically, with the settings it was trained with;
a run resumes it only with the same settings (see `run_settings`)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from rhf_core.cache import atomic_savez, atomic_write_bytes, atomic_write_text, cache_dir
from rhf_core.reward.model import RewardError

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
# With --lora-convs the residual blocks' convolutions and time projections are adapted too.
LORA_CONV_TARGETS = ["conv1", "conv2", "time_emb_proj"]


@dataclass
class FinetuneConfig:
    name: str = "lee-shapes"
    out: str = ""  # default: cache/adapters/<name>
    generator: str = ""
    reward: str = "lee"
    prompts: str = "train"  # "train" = the reward's training prompt set; or a text file, one prompt a line
    n_prompts: int = 300
    per_prompt: int = 8
    beta: float = 1.0
    pretrain_folder: str = ""  # image–caption pairs for a real model (ShapesWorld renders are used otherwise)
    n_pretrain: int = 4000
    rank: int = 8
    steps: int = 600
    batch_size: int = 32
    lr: float = 3e-4
    # Share of each batch trained with the empty prompt, as the base model was: classifier-free guidance
    # amplifies any untrained drift of the unconditional branch.
    uncond_prob: float = 0.1
    # > 0: min-SNR-γ weighting of the denoising loss per timestep; the embedded generator was trained
    # with γ = 5. 0 = the plain ε-MSE of Stable Diffusion.
    snr_gamma: float = 5.0
    # Classifier-free guidance of the samples in D_model (the comparison samples at 7.5). Fitting guided
    # samples with the plain conditional loss and then guiding again at inference guides twice
    # (over-saturated, implausible images); the guided objective below avoids that.
    sample_guidance: float = 7.5
    # Fit the sampler that made D_model rather than the conditional branch: the reward-weighted loss
    # is taken on the classifier-free-guided prediction ε_u + w (ε_c − ε_u) at w = sample_guidance, so
    # guided samples are fitted as what they are and sampling at that guidance afterwards guides once.
    guided_objective: bool = True
    # > 0: Lee et al.'s filtered variant: weight 1 for samples whose reward reaches this, 0 otherwise.
    reward_threshold: float = 0.0
    # > 0: the reward-weighted term draws its timesteps from the noisiest (1 − this) share of the
    # schedule only, where layout, count and colour are decided; 0 = all timesteps, as Lee et al.
    reward_t_min: float = 0.0
    # Adapt the residual blocks' convolutions and time projections as well as the attention projections.
    lora_convs: bool = False
    # > 0: the reward-weighted term is an x0-space error (ε-MSE / SNR, the weight capped at this) instead
    # of min-SNR ε-MSE. Count, colour and layout are decided at low SNR, where the ε-error of a wrong
    # layout is tiny and the low-noise texture error swamps it; in x0 space it is what the loss measures.
    reward_x0_cap: float = 0.0
    # "rwr": Lee et al.'s reward-weighted likelihood. "dpo": Diffusion-DPO (Wallace et al. 2023) on
    # pairs of samples of one prompt whose rewards differ by at least `pair_margin`: the adapter is
    # pushed to denoise the better sample of each pair better, and the worse one worse, than the
    # original model does. Reward-weighted likelihood only fits the good samples, which the model
    # already fits; the pairs also say what the bad ones got wrong.
    objective: str = "rwr"
    dpo_beta: float = 2000.0
    pair_margin: float = 0.5
    # "draft": reward backpropagation (DRaFT, Clark et al. 2023; AlignProp): each step samples the batch's
    # prompts with the adapted model at `sample_guidance`, decodes, scores with a differentiable reward
    # (lee) and ascends r through the sampler. The gradient reaches the first, noisiest denoising steps,
    # where count and layout are decided, which no denoising loss on fixed samples does. `draft_k` > 0
    # backpropagates through the last k sampler steps only (DRaFT-K); 0 = all of them.
    draft_k: int = 0
    sample_steps: int = 25
    seed: int = 0
    # Steps between saves of the resumable state: at most what a kill -9 loses. A step of the default
    # objective (rwr, batch 32, β term on) takes about 3 s on a 2-core CPU (2.1–4.2 CPU-s measured), so 10
    # steps lose 30–40 s; a save costs milliseconds. Slower steps (draft: minutes each on a CPU) are also
    # saved once SAVE_SECONDS have passed since the last save.
    save_every: int = 10

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else cache_dir("adapters") / self.name


class FinetuneSettingsError(RewardError):
    """The saved state of a fine-tune was trained with other settings than this run's; `differences`
    names them ("lr: 0.0003 → 0.001", "generator weights", …)."""

    def __init__(self, message: str, differences: list[str]):
        super().__init__(message)
        self.differences = differences


def x0_weight(snr: torch.Tensor, cap: float) -> torch.Tensor:
    """Per-timestep factor turning an ε-MSE into the x0-space error (‖x̂0 − x0‖² = ‖ε̂ − ε‖² / SNR),
    capped where the SNR reaches 0 at the end of the schedule."""
    return (1.0 / snr.clamp(min=1e-12)).clamp(max=cap)


OBJECTIVES = ("rwr", "dpo", "draft")


def preference_pairs(prompts: list[str], rewards: np.ndarray, margin: float) -> np.ndarray:
    """(better, worse) index pairs of samples of the same prompt whose rewards differ by ≥ margin."""
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(p, []).append(i)
    pairs = [(i, j) for idx in groups.values() for i in idx for j in idx if rewards[i] - rewards[j] >= margin]
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


def dpo_loss(err_w: torch.Tensor, err_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor,
             beta: float) -> torch.Tensor:
    """Diffusion-DPO per pair: −log σ(−β/2 · [(e_w − e_w^ref) − (e_l − e_l^ref)]), e being the
    denoising error at a shared timestep and noise. 0 when the adapter denoises the better sample
    much better than the original and the worse one much worse; log 2 when it is the original."""
    return -torch.nn.functional.logsigmoid(-0.5 * beta * ((err_w - ref_w) - (err_l - ref_l)))


# --- resumable state ---------------------------------------------------------------------------------

STATE_FILE = "state.safetensors"
STATE_FORMAT = "rhf-finetune-state/1"
# Config fields that do not change the trained weights: what the run is called, where its adapter goes and
# how often its state is saved. Every other field does, `steps` included: the cosine learning-rate schedule
# spans `steps`, so the first 300 steps of a 600-step run are not those of a 300-step run, and a resumed
# state with other `steps` would be neither (start over with --no-resume to train longer).
NOT_SETTINGS = ("name", "out", "save_every")
SAVE_SECONDS = 45.0  # a save also comes after a step that ends this long after the last one
# Settings shown by name only in a mismatch message: paths, and digests of what the run reads.
_UNSHOWN = ("generator", "prompts", "pretrain_folder", "generator_weights", "reward_function", "prompt_list",
            "pretrain_files")
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _files_id(folder, patterns: tuple[str, ...]) -> list:
    """(relative path, size, mtime) of the matching files under `folder`: changes when they are rewritten,
    and not when the folder is addressed by another path."""
    root = Path(folder)
    files = sorted({f for pat in patterns for f in root.rglob(pat) if f.is_file()}) if root.is_dir() else []
    return [[str(f.relative_to(root)), f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def run_settings(cfg: FinetuneConfig, generator, reward, prompts: list[str]) -> dict:
    """Everything that changes the trained weights: the config fields (but NOT_SETTINGS), with floats as
    floats (beta=1 and beta=1.0 are one setting), and digests of what the paths and the reward name point
    at — the generator's weights, the reward's weights or function, the prompts read, the pre-training
    files — since a page passes its own generator and reward objects."""
    fields = FinetuneConfig.__dataclass_fields__
    out = {k: (float(v) if fields[k].type == "float" else v) for k, v in asdict(cfg).items() if k not in NOT_SETTINGS}
    root = getattr(generator, "root", None)
    out["generator_weights"] = _digest(_files_id(root, ("*.safetensors", "*.bin")) if root and Path(root).is_dir()
                                       else str(getattr(generator, "name", "")))
    fn = reward if callable(reward) and hasattr(reward, "__qualname__") else type(reward)
    out["reward_function"] = _digest([getattr(fn, "__module__", ""), getattr(fn, "__qualname__", ""),
                                      _files_id(getattr(reward, "path", None) or "", ("*.safetensors",))])
    out["prompt_list"] = _digest(prompts)
    out["pretrain_files"] = _digest(_files_id(cfg.pretrain_folder, ("*",))) if cfg.pretrain_folder else ""
    return out


def state_folder(name: str) -> Path:
    """Where fine-tune `name` keeps its resumable state (not created here)."""
    return cache_dir("finetune-state") / name


def _read_state_meta(path: Path) -> dict:
    """The JSON metadata of a state file, without loading its tensors."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != STATE_FORMAT:
            raise ValueError(f"not a {STATE_FORMAT} file")
        out = {k: json.loads(v) for k, v in meta.items() if k != "format"}
        if not isinstance(out.get("step"), int) or not {"fingerprint", "settings", "log", "optimizer", "parts",
                                                         "draft_rewards"} <= set(out):
            raise ValueError("its step or settings are missing")
    except (SafetensorError, OSError, ValueError) as e:  # damaged or not ours: say so, never resume it
        raise RewardError(f"the saved state of fine-tune {path.parent.name!r} cannot be read ({e}): "
                          "start over with --no-resume (discards it)") from None
    return out


def saved_steps(name: str) -> int:
    """Finished steps the saved state of fine-tune `name` holds (0 when there is none, or none this version
    can resume): the step a run with the same settings resumes from, what a stopped run has kept."""
    path = state_folder(name) / STATE_FILE
    if not path.is_file():
        return 0
    try:
        return _read_state_meta(path)["step"]
    except RewardError:
        return 0


def clear_state(name: str) -> None:
    """Discard the saved state of fine-tune `name` (what --no-resume does first)."""
    shutil.rmtree(state_folder(name), ignore_errors=True)


def _check_resumable(name: str, settings: dict) -> Path | None:
    """The state file to resume from, None when there is none; refuses a state trained with other
    settings, naming them, or one saved without its settings."""
    folder = state_folder(name)
    path = folder / STATE_FILE
    if not path.is_file():
        if (folder / "trainer.pt").is_file() or (folder / "lora.safetensors").is_file():
            raise FinetuneSettingsError(
                f"fine-tune {name!r} has a state saved by an older version, without its settings, so whether they "
                "are this run's cannot be told: start over with --no-resume (discards it)", ["unknown"])
        return None
    meta = _read_state_meta(path)
    if meta.get("fingerprint") == _digest(settings):
        return path
    old = meta.get("settings", {})
    diffs = []
    for k in sorted(set(old) | set(settings)):
        a, b = old.get(k, "(unset)"), settings.get(k, "(unset)")
        if a != b:
            diffs.append(k.replace("_", " ") if k in _UNSHOWN else f"{k}: {a!r} → {b!r}")
    diffs = diffs or ["settings"]
    raise FinetuneSettingsError(
        f"the saved state of fine-tune {name!r} ({meta.get('step', '?')} steps) was trained with other settings — "
        f"{'; '.join(diffs)}. Run with its settings to resume it, or start over from step 0 with --no-resume "
        "(discards it).", diffs)


def _state_bytes(lora: dict, opt_state: dict, meta: dict) -> bytes:
    """One safetensors file: the LoRA weights (`lora/…`), the optimizer's tensors (`opt/<param>/<name>`) and,
    as JSON metadata, the rest of the optimizer state, the step, the settings and the log — one file, so
    that weights, optimizer and step can never disagree."""
    from safetensors.torch import save

    tensors = {f"lora/{k}": v.detach().cpu().contiguous() for k, v in lora.items()}
    opt_json = {"param_groups": opt_state["param_groups"], "state": {}}
    for idx, entry in opt_state["state"].items():
        opt_json["state"][str(idx)] = {}
        for k, v in entry.items():
            if torch.is_tensor(v):
                tensors[f"opt/{idx}/{k}"] = v.detach().cpu().contiguous()
            else:
                opt_json["state"][str(idx)][k] = v
    metadata = {"format": STATE_FORMAT, "optimizer": json.dumps(opt_json), **{k: json.dumps(v) for k, v in meta.items()}}
    return save(tensors, metadata)


def _load_state(path: Path) -> tuple[dict, dict, dict]:
    """(LoRA weights, optimizer state dict, metadata) of a state file `_state_bytes` wrote."""
    from safetensors import safe_open

    meta = _read_state_meta(path)
    with safe_open(str(path), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    lora = {k[5:]: v for k, v in tensors.items() if k.startswith("lora/")}
    opt_json = meta.pop("optimizer")
    state = {int(i): dict(entry) for i, entry in opt_json["state"].items()}
    for k, v in tensors.items():
        if k.startswith("opt/"):
            _, i, name = k.split("/", 2)
            state.setdefault(int(i), {})[name] = v
    return lora, {"state": state, "param_groups": opt_json["param_groups"]}, meta


def _check_out(path: Path) -> None:
    """The adapter folder is replaced as a whole: refuse one that holds anything but an adapter."""
    if path.exists() and (not path.is_dir() or (any(path.iterdir()) and not (path / "adapter.json").is_file())):
        raise RewardError(f"{path} exists and is not an adapter folder (no adapter.json): it would be replaced; "
                          "pick another --out")


def fine_tune_prompts(cfg: FinetuneConfig) -> list[str]:
    if cfg.prompts == "train":
        from rhf_core.reward.train import default_prompt_split

        return default_prompt_split()["train"][: cfg.n_prompts]
    path = Path(cfg.prompts)
    if not path.is_file():
        raise RewardError(f"prompt file not found: {path}")
    prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
        raise RewardError(f"{path} holds no prompts")
    return prompts[: cfg.n_prompts]


@torch.no_grad()
def encode_latents(generator, images: list, batch: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled VAE posterior mean and std of PIL images at the generator's resolution (a latent is
    drawn afresh from them at each step, as in pre-training)."""
    from PIL import Image

    side = generator.image_size
    vae = generator.pipe.vae
    means, stds = [], []
    for s in range(0, len(images), batch):
        arr = np.stack([np.asarray(im.convert("RGB").resize((side, side), Image.BICUBIC)) for im in images[s:s + batch]])
        x = torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(127.5).sub(1).to(generator.device, generator.dtype)
        post = vae.encode(x).latent_dist
        means.append((post.mean * vae.config.scaling_factor).float().cpu())
        stds.append((post.std * vae.config.scaling_factor).float().cpu())
    return torch.cat(means), torch.cat(stds)


def is_shapes_generator(generator) -> bool:
    """A ShapesWorld generator: the embedded one, or any pipeline `train-t2i` wrote (it leaves its
    train_log.json beside the weights), wherever it was saved and whatever it is called."""
    return "shapes" in generator.name or (generator.root / "train_log.json").is_file()


def pretrain_pairs(cfg: FinetuneConfig, generator) -> tuple[list, list[str]] | None:
    """D_pre: clean ShapesWorld renders (embedded model) or the user's image–caption folder."""
    from PIL import Image

    if cfg.pretrain_folder:
        root = Path(cfg.pretrain_folder)
        pairs = [(p, p.with_suffix(".txt")) for p in sorted(root.glob("*")) if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp")]
        pairs = [(p, t) for p, t in pairs if t.is_file()][: cfg.n_pretrain]
        if not pairs:
            raise RewardError(f"{root}: no image with a caption file beside it (photo.png + photo.txt)")
        from rhf_core.images import load_image

        return [load_image(p) for p, _ in pairs], [t.read_text().strip() for _, t in pairs]
    if is_shapes_generator(generator):
        from rhf_core.t2i.train import training_set

        images, prompts = training_set(cfg.n_pretrain, cfg.seed + 101, generator.image_size)
        return [Image.fromarray(a) for a in images], prompts
    warnings.warn("no pre-training folder for this model: the β term is off (pass --pretrain-folder)", stacklevel=2)
    return None


def add_lora(unet, rank: int, convs: bool = False) -> None:
    from peft import LoraConfig

    targets = LORA_TARGETS + (LORA_CONV_TARGETS if convs else [])
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=targets))


def save_adapter(unet, path: Path, info: dict) -> None:
    """Write the adapter folder (weights + adapter.json) as a whole: built in a temporary folder beside it,
    then renamed into place, so a reader or a crash never leaves new weights with an old adapter.json."""
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    path = Path(path)
    _check_out(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # PEFT's own key names (lora_A / lora_B), which diffusers loads as they are. Converting them to
    # diffusers' older names covers attention layers only: a file mixing both was read as PEFT and
    # its attention adapters silently dropped.
    state = get_peft_model_state_dict(unet)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.saving-"))
    try:
        StableDiffusionPipeline.save_lora_weights(save_directory=str(tmp), unet_lora_layers=state, safe_serialization=True)
        atomic_write_text(tmp / "adapter.json", json.dumps(info, indent=2) + "\n")
        for f in tmp.iterdir():
            f.chmod(0o644)
            with open(f, "rb") as fh:  # on disk before the rename makes it visible
                os.fsync(fh.fileno())
        tmp.chmod(0o755)  # mkdtemp makes it private
        _replace_folder(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace_folder(new: Path, path: Path) -> None:
    """Rename `new` to `path`. A folder cannot be renamed over a non-empty one, so an existing `path` is
    first renamed aside (for an instant there is no folder, never a mixed one), then removed."""
    old = None
    if path.exists():
        old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old-"))
        os.replace(path, old)  # onto the empty placeholder
    try:
        os.replace(new, path)
    except BaseException:
        if old is not None:
            os.replace(old, path)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def model_dataset(cfg: FinetuneConfig, generator, reward, prompts: list[str], progress) -> dict:
    """Generate, score and encode D_model (cached on disk)."""
    from rhf_core.cache import cache_key, weights_fingerprint

    weights = weights_fingerprint(getattr(reward, "path", None))
    key = cache_key("d-model", "sampled-latents", generator.fingerprint(), cfg.reward, getattr(reward, "__name__", ""),
                    weights, prompts, cfg.per_prompt, cfg.seed, cfg.sample_guidance)
    path = cache_dir("finetune-data") / f"{key}.npz"
    if path.is_file():
        z = np.load(path, allow_pickle=False)
        return {"latents": torch.from_numpy(z["latents"]), "prompts": [str(p) for p in z["prompts"]],
                "rewards": z["rewards"]}
    # The latents the sampler produced are the model's samples exactly; re-encoding the decoded 8-bit
    # images would train the UNet on the VAE's round-trip error instead.
    images, latents = generator.generate(prompts, n=cfg.per_prompt, seed=cfg.seed, with_latents=True,
                                         guidance=cfg.sample_guidance,
                                         progress=lambda d, t: progress("generating", d / t))
    latents = latents.flatten(0, 1)
    flat = [im for imgs in images for im in imgs]
    flat_prompts = [p for p in prompts for _ in range(cfg.per_prompt)]
    progress("scoring", 0.0)
    rewards = np.asarray(reward(flat, flat_prompts), np.float32)
    atomic_savez(path, compressed=False, latents=latents.numpy(), prompts=np.array(flat_prompts), rewards=rewards)
    return {"latents": latents, "prompts": flat_prompts, "rewards": rewards}


def finetune(cfg: FinetuneConfig, generator=None, reward=None, resume: bool = True,
             progress: Callable[[str, float], None] | None = None,
             should_stop: Callable[[], bool] | None = None) -> Path:
    """Train a LoRA adapter by reward-weighted likelihood; returns the adapter folder.

    With `resume`, continues from the saved state of `cfg.name` when it was trained with the same settings
    (`run_settings`) and refuses one trained with others (FinetuneSettingsError); without, discards it first.
    `should_stop` (polled after each step) ends the run early: the state is saved and the adapter written,
    marked incomplete. Any exception (Ctrl-C, Streamlit stopping the script) saves the state at the last
    finished step and passes through, writing no adapter; `saved_steps(cfg.name)` says what was kept."""
    from accelerate import Accelerator

    from rhf_core.reward.rewards import get_reward
    from rhf_core.t2i import load_generator

    if not isinstance(cfg.name, str) or not _NAME.fullmatch(cfg.name):
        raise RewardError(f"fine-tune name {cfg.name!r}: up to 100 letters, digits, '-', '_' or '.' (not first), "
                          "since it names folders")
    for field in ("steps", "save_every", "batch_size", "rank"):
        value = getattr(cfg, field)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise RewardError(f"{field} must be a whole number ≥ 1, got {value!r}")
    _check_out(cfg.out_dir)
    if not 0.0 <= cfg.reward_t_min < 1.0:
        raise RewardError(f"reward_t_min must lie in [0, 1): the share of the schedule skipped, got {cfg.reward_t_min}")
    if cfg.objective not in OBJECTIVES:
        raise RewardError(f"unknown objective {cfg.objective!r}: one of {', '.join(OBJECTIVES)}")
    if cfg.objective == "dpo" and cfg.pair_margin <= 0:
        raise RewardError(f"pair_margin must be > 0 (a pair needs a better and a worse sample), got {cfg.pair_margin}")
    if cfg.objective == "draft" and not 0 <= cfg.draft_k <= cfg.sample_steps:
        raise RewardError(f"draft_k must lie in [0, {cfg.sample_steps}] (sampler steps to backpropagate through), "
                          f"got {cfg.draft_k}")
    report = progress or (lambda stage, f: None)
    accelerator = Accelerator()
    generator = generator or load_generator(cfg.generator or None)
    generator.unload_lora()
    reward_fn = reward or get_reward(cfg.reward)
    if cfg.objective == "draft" and not hasattr(reward_fn, "score_pixels"):
        raise RewardError(f"the draft objective backpropagates through the reward, so it needs a differentiable "
                          f"one: {cfg.reward!r} is not (use --reward lee)")
    prompts = fine_tune_prompts(cfg)
    settings = run_settings(cfg, generator, reward_fn, prompts)
    if not resume:
        clear_state(cfg.name)
    resume_from = _check_resumable(cfg.name, settings)  # before the costly part: a refusal comes at once
    if cfg.objective == "draft":  # no fixed dataset: the adapted model samples afresh at every step
        data = {"latents": torch.zeros(0), "prompts": prompts, "rewards": np.zeros(0, np.float32)}
    else:
        data = model_dataset(cfg, generator, reward_fn, prompts, report)
    r = np.clip(data["rewards"], 0.0, None)  # reward-weighted likelihood needs weights ≥ 0
    if cfg.reward_threshold > 0:
        r = (data["rewards"] >= cfg.reward_threshold).astype(np.float32)
        if not r.any():
            raise RewardError(f"no sample reaches the reward threshold {cfg.reward_threshold}: lower it")
    pairs = None
    if cfg.objective == "dpo":
        pairs = preference_pairs(data["prompts"], data["rewards"], cfg.pair_margin)
        if not len(pairs):
            raise RewardError(f"no two samples of one prompt differ in reward by {cfg.pair_margin}: "
                              "lower --pair-margin or draw more samples per prompt")
    pre = pretrain_pairs(cfg, generator) if cfg.beta > 0 else None
    pre_mean, pre_std = encode_latents(generator, pre[0]) if pre else (None, None)
    beta = cfg.beta if pre is not None else 0.0

    import copy

    pipe = generator.pipe
    tok, te, sched = pipe.tokenizer, pipe.text_encoder, pipe.scheduler
    unet = copy.deepcopy(pipe.unet)  # the generator itself stays as it was
    max_len = min(tok.model_max_length, 77)

    @torch.no_grad()
    def embed(texts: list[str]) -> torch.Tensor:
        ids = tok(texts, padding="max_length", max_length=max_len, truncation=True, return_tensors="pt").input_ids
        return te(ids.to(generator.device))[0].float().cpu()

    uniq = sorted(set(data["prompts"]) | (set(pre[1]) if pre else set()))
    table = {p: e for p, e in zip(uniq, torch.cat([embed(uniq[s:s + 256]) for s in range(0, len(uniq), 256)]))}
    empty = embed([""])[0]
    model_cond = torch.stack([table[p] for p in data["prompts"]])
    pre_cond = torch.stack([table[p] for p in pre[1]]) if pre else None

    unet.requires_grad_(False)
    unet.to(torch.float32)
    torch.manual_seed(cfg.seed)  # LoRA's initial A matrices: the same adapter from the same config
    add_lora(unet, cfg.rank, cfg.lora_convs)
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    out = cfg.out_dir
    state_path = state_folder(cfg.name) / STATE_FILE
    start, log = 0, []
    if resume_from is not None:
        from peft.utils import set_peft_model_state_dict

        lora, opt_state, meta = _load_state(resume_from)
        set_peft_model_state_dict(unet, lora)
        opt.load_state_dict(opt_state)
        start, log = int(meta["step"]), list(meta["log"])
    unet_t, opt = accelerator.prepare(unet, opt)
    # Steps not yet logged, and draft's sampled rewards: kept in the state too, so that a resumed run logs
    # and reports what an uninterrupted one would.
    parts = [tuple(p) for p in meta["parts"]] if resume_from is not None else []
    draft_rewards: list[float] = list(meta["draft_rewards"]) if resume_from is not None else []
    gen = torch.Generator().manual_seed(cfg.seed + start)
    rng = np.random.default_rng(cfg.seed + start)
    dev = accelerator.device
    rw = torch.from_numpy(r)
    t0 = time.time()

    from rhf_core.t2i.train import _snr

    snr = _snr(sched)
    w = cfg.sample_guidance

    t_max = sched.config.num_train_timesteps

    def predict(net, noisy, t, cond, guided):
        dt = next(net.parameters()).dtype  # the reference UNet keeps the generator's dtype
        if guided and w != 1.0:  # the guided sampler's prediction, as at inference
            both = net(torch.cat([noisy, noisy]).to(dev, dt), torch.cat([t, t]).to(dev),
                       torch.cat([cond, empty.expand_as(cond)]).to(dev, dt)).sample.float()
            pred_c, pred_u = both.chunk(2)
            return pred_u + w * (pred_c - pred_u)
        return net(noisy.to(dev, dt), t.to(dev), cond.to(dev, dt)).sample.float()

    def denoise_loss(lat, cond, guided=False, t_lo=0, x0_cap=0.0):
        if cfg.uncond_prob > 0 and not guided:
            drop = torch.rand(len(cond), generator=gen) < cfg.uncond_prob
            cond = torch.where(drop[:, None, None], empty.expand_as(cond), cond)
        noise = torch.randn(lat.shape, generator=gen)
        t = torch.randint(t_lo, t_max, (len(lat),), generator=gen)
        noisy = sched.add_noise(lat, noise, t)
        pred = predict(unet_t, noisy, t, cond, guided)
        loss = ((pred - noise.to(dev)) ** 2).mean(dim=(1, 2, 3))
        if x0_cap > 0:
            return loss * x0_weight(snr[t], x0_cap).to(dev)
        if cfg.snr_gamma > 0:  # the generator's own weighting, so the objective is the one it was trained on
            loss = loss * (snr[t].clamp(max=cfg.snr_gamma) / snr[t]).to(dev)
        return loss

    ref_unet = pipe.unet  # the original model, untouched: Diffusion-DPO's reference

    def preference_loss(pair_idx):
        """Diffusion-DPO on a batch of (better, worse) pairs, each pair sharing its noise and timestep."""
        i_w, i_l = pair_idx[:, 0], pair_idx[:, 1]
        lat_w = data["latents"][i_w]
        lat = torch.cat([lat_w, data["latents"][i_l]])
        cond = torch.cat([model_cond[i_w], model_cond[i_l]])
        noise = torch.randn(lat_w.shape, generator=gen).repeat(2, 1, 1, 1)
        t = torch.randint(int(cfg.reward_t_min * t_max), t_max, (len(i_w),), generator=gen).repeat(2)
        noisy = sched.add_noise(lat, noise, t)
        err = ((predict(unet_t, noisy, t, cond, cfg.guided_objective) - noise.to(dev)) ** 2).mean(dim=(1, 2, 3))
        with torch.no_grad():
            ref = ((predict(ref_unet, noisy, t, cond, cfg.guided_objective) - noise.to(dev)) ** 2).mean(dim=(1, 2, 3))
        n = len(i_w)
        return dpo_loss(err[:n], err[n:], ref[:n], ref[n:], cfg.dpo_beta).mean()

    vae = pipe.vae
    if cfg.objective == "draft":  # frozen, but the gradient must pass through them to the adapter
        from rhf_core.reward.model import RewardModel

        vae.requires_grad_(False)
        if isinstance(reward_fn, RewardModel):
            reward_fn.encoders.model.requires_grad_(False)
            reward_fn.head.requires_grad_(False)

    def draft_loss(idx):
        """−mean r of a batch sampled with the adapter, backpropagated through the last draft_k steps."""
        sampler = type(sched).from_config(sched.config)
        sampler.set_timesteps(cfg.sample_steps)
        side = int(unet.config.sample_size)
        lat = torch.randn((len(idx), int(unet.config.in_channels), side, side), generator=gen).to(dev)
        lat = lat * sampler.init_noise_sigma
        steps = sampler.timesteps
        first_grad = len(steps) - (cfg.draft_k or len(steps))
        cond = model_cond[idx]
        for i, t in enumerate(steps):
            with torch.set_grad_enabled(i >= first_grad):
                eps = predict(unet_t, sampler.scale_model_input(lat, t), t.expand(len(idx)), cond, True)
                lat = sampler.step(eps, t, lat).prev_sample
        x = vae.decode(lat.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0].float()
        rew = reward_fn.score_pixels(((x + 1) / 2).clamp(0, 1), [data["prompts"][i] for i in idx.tolist()])
        draft_rewards.extend(rew.detach().cpu().tolist())
        return -rew.mean()

    def log_steps(done: int) -> None:
        """Log the steps finished since the last log entry."""
        nonlocal parts, t0
        if not parts:
            return
        model_term = float(np.mean([p[0] for p in parts]))
        key = {"dpo": "dpo_loss", "draft": "sampled_reward"}.get(cfg.objective, "reward_weighted_loss")
        log.append({"step": done, key: round(-model_term if cfg.objective == "draft" else model_term, 5),
                    "pretrain_loss": round(float(np.mean([p[1] for p in parts])), 5),
                    "seconds": round(time.time() - t0, 1)})
        parts, t0 = [], time.time()

    saved_at, saved_time = start, time.time()

    def save_state(done: int) -> None:
        """Replace the state file by one at `done` steps (weights, optimizer, log and settings together)."""
        nonlocal saved_at, saved_time
        if accelerator.is_main_process:
            from peft.utils import get_peft_model_state_dict

            lora = get_peft_model_state_dict(accelerator.unwrap_model(unet_t))
            meta = {"step": done, "steps": cfg.steps, "fingerprint": _digest(settings), "settings": settings,
                    "log": log, "parts": parts, "draft_rewards": draft_rewards}
            atomic_write_bytes(state_path, _state_bytes(lora, opt.state_dict(), meta))
        saved_at, saved_time = done, time.time()

    stopped, done = False, start
    try:
        for step in range(start, cfg.steps):
            for g in opt.param_groups:
                g["lr"] = cfg.lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
            if cfg.objective == "draft":
                l_model = draft_loss(torch.from_numpy(rng.integers(len(prompts), size=cfg.batch_size)))
            elif pairs is not None:  # half a batch of pairs is a batch of samples
                l_model = preference_loss(torch.from_numpy(pairs[rng.integers(len(pairs), size=max(1, cfg.batch_size // 2))]))
            else:
                idx = torch.from_numpy(rng.integers(len(rw), size=cfg.batch_size))
                l_model = (rw[idx].to(dev) * denoise_loss(data["latents"][idx], model_cond[idx], cfg.guided_objective,
                                                          int(cfg.reward_t_min * t_max), cfg.reward_x0_cap)).mean()
            loss = l_model
            l_pre = torch.zeros(())
            if beta > 0:
                jdx = torch.from_numpy(rng.integers(len(pre_mean), size=cfg.batch_size))
                lat = pre_mean[jdx] + pre_std[jdx] * torch.randn(pre_mean[jdx].shape, generator=gen)
                l_pre = denoise_loss(lat, pre_cond[jdx]).mean()
                loss = loss + beta * l_pre
            opt.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(params, 1.0)
            opt.step()
            parts.append((l_model.item(), float(l_pre.detach())))
            done = step + 1
            report("fine-tuning", done / cfg.steps)
            stopped = should_stop is not None and should_stop()
            if done % cfg.save_every == 0 or done == cfg.steps or stopped:
                log_steps(done)
                save_state(done)
            elif time.time() - saved_time >= SAVE_SECONDS:  # slow steps: never much more than this lost
                save_state(done)
            if stopped:
                break
    except BaseException:
        # Interrupted (Ctrl-C, or a page that reran while training) or failed: keep every finished step, so
        # the next run resumes from here rather than from the last periodic save. A failure while saving
        # leaves the previous state file as it was (it is replaced atomically).
        log_steps(done)
        if done > saved_at:
            save_state(done)
        raise
    accelerator.wait_for_everyone()
    unet = accelerator.unwrap_model(unet_t)
    info = {"config": asdict(cfg), "generator": generator.name, "beta_used": beta, "steps_done": log[-1]["step"] if log else start,
            "complete": not stopped, "resumed_from": start, "prompts": len(prompts),
            **({"pairs": int(len(pairs))} if pairs is not None else {}),
            "reward_stats": _reward_stats(draft_rewards if cfg.objective == "draft" else data["rewards"]),
            "log": log}
    if accelerator.is_main_process:
        save_adapter(unet, out, info)
    return out


def _reward_stats(rewards) -> dict:
    """Of D_model's rewards, or for draft of the rewards its samples got while training."""
    r = np.asarray(rewards, np.float64)
    if not len(r):
        return {"n": 0}
    return {"n": int(len(r)), "mean": round(float(r.mean()), 4), "std": round(float(r.std()), 4),
            "share_positive": round(float(np.mean(r > 0.5)), 4)}


def load_adapter_info(path: str | Path) -> dict:
    p = Path(path) / "adapter.json"
    if not p.is_file():
        raise RewardError(f"{path} holds no adapter.json (not an adapter written by `finetune`)")
    return json.loads(p.read_text())
