"""Command-line flags generated from a settings dataclass, so that each default lives in one place.

A command names where its settings come from, as "module:Name" (imported when the command is used):
a dataclass, or a function whose annotated keyword parameters are its settings. Its parser then gets
one flag per field:

    field type                  flag
    int / float / str           --name VALUE
    bool                        --name / --no-name
    X | None                    --name VALUE  ('' gives None)
    tuple / list                --name a,b,c
    Literal[...] or CHOICES     --name {a,b}
    a nested dataclass          its fields, prefixed with the field's name (--vision-dim); a field
                                named `model` adds no prefix (--image-size, not --model-image-size)
    dict                        no flag (calibrations and extras are written by code, not typed)

A value comes, lowest first, from the dataclass's default, a TOML file (`--config FILE.toml`, whose keys
and tables are the dataclass's fields as a checkpoint records them: `epochs = 24`, `[model.vision]`),
then the flags. The help of each field is in HELP below, keyed "Class.field" or just "field"
(tests/test_cli.py checks that every flag has one). `python -m rhf_core.cli_args --markdown` prints
docs/reference/cli.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import sys
import tomllib
import types
import typing
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from rhf_core.errors import InvalidArgumentError

# Nested settings whose fields are flags without a prefix.
FLATTENED = ("model",)

HELP: dict[str, str] = {
    # shared names
    "seed": "random seed",
    "out": "output folder",
    "steps": "optimizer steps",
    "batch_size": "samples per optimizer step",
    "lr": "learning rate (peak)",
    "generator": "diffusers pipeline folder or hub id (empty: the embedded ShapesWorld generator)",
    "per_prompt": "samples generated per prompt",
    "save_every": "steps between saves of the resumable state",
    "max_records": "cap on records used (0 = all)",
    # train-rahf: TrainConfig, RAHFConfig, VisionConfig, TextConfig
    "TrainConfig.data": "dataset spec to train on (its train and dev splits are used)",
    "TrainConfig.train_split": "split trained on",
    "TrainConfig.val_split": "split that picks the best epoch (and fits the heatmap calibration)",
    "TrainConfig.out": "folder for the best checkpoint (config.json, model.safetensors, train_log.json)",
    "TrainConfig.state_dir": "resumable state (empty: cache/rahf-train/<out name>)",
    "TrainConfig.epochs": "passes over the training split",
    "TrainConfig.weight_decay": "AdamW weight decay",
    "TrainConfig.heatmap_pos_weight": "extra loss weight of flagged heatmap pixels (0 = plain per-pixel loss)",
    "TrainConfig.heatmap_cc_loss": "weight of 1 − CC between predicted and label heatmaps (non-empty labels)",
    "TrainConfig.heatmap_loss": "weight of the heatmap head's loss",
    "TrainConfig.score_loss": "weight of the score MSE",
    "TrainConfig.word_loss": "weight of the per-word misalignment loss",
    "TrainConfig.augment": "random flips and mild crops, applied alike to images and heatmaps",
    "TrainConfig.max_records": "cap on training records (0 = all)",
    "TrainConfig.vision_lr_scale": "vision backbone's learning rate as a multiple of --lr (0 freezes it)",
    "TrainConfig.text_lr_scale": "text backbone's learning rate as a multiple of --lr (0 freezes it)",
    "TrainConfig.mixed_precision": "autocast: no, bf16 or fp16 (CUDA); empty: what `accelerate launch` says",
    "TrainConfig.gradient_checkpointing": "recompute the HF backbones' activations in backward (less memory, slower)",
    "TrainConfig.preload_mb": "a split decoding to more MB than this is cached on disk and read per batch",
    "TrainConfig.decoded_dir": "folder of that on-disk cache (empty: decoded/ in the state folder)",
    "RAHFConfig.image_size": "input resolution in pixels (square)",
    "RAHFConfig.fusion_dim": "width of the fusion transformer over image and text tokens",
    "RAHFConfig.fusion_layers": "depth of the fusion transformer",
    "RAHFConfig.fusion_heads": "attention heads of the fusion transformer",
    "RAHFConfig.variant": "multihead: one pass, a head per output; augmented: the task named in the prompt",
    "RAHFConfig.max_words": "longest prompt in words (longer ones are truncated)",
    "RAHFConfig.dropout": "dropout in the fusion transformer",
    "RAHFConfig.heatmap_skip": "heatmap decoder skip connections from the pixels (sharper than the patch grid)",
    "VisionConfig.kind": "scratch: a small ViT trained from scratch; hf: a Hugging Face vision tower",
    "VisionConfig.name_or_path": "the HF vision tower's hub id or folder (with kind hf)",
    "VisionConfig.patch_size": "scratch ViT patch size in pixels (a power of two dividing the image size; refused with --vision)",
    "VisionConfig.dim": "scratch ViT width (refused with --vision)",
    "VisionConfig.layers": "scratch ViT depth",
    "VisionConfig.heads": "scratch ViT attention heads",
    "TextConfig.kind": "scratch: hashed word embeddings + a small transformer; hf: a T5 / BERT-style encoder",
    "TextConfig.name_or_path": "the HF text encoder's hub id or folder (with kind hf)",
    "TextConfig.vocab_buckets": "scratch encoder: hash buckets for (case-folded) words",
    "TextConfig.dim": "scratch text encoder width (refused with --text)",
    "TextConfig.layers": "scratch text encoder depth",
    "TextConfig.heads": "scratch text encoder attention heads",
    # train-t2i: T2ITrainConfig, TinyT2IConfig
    "T2ITrainConfig.out": "folder for the saved diffusers pipeline",
    "T2ITrainConfig.n_images": "clean renders of seen prompts trained on",
    "T2ITrainConfig.vae_steps": "VAE training steps (ignored with --init-from: the VAE is kept)",
    "T2ITrainConfig.vae_batch": "VAE batch size",
    "T2ITrainConfig.vae_lr": "VAE learning rate",
    "T2ITrainConfig.vae_crop": "VAE training crop in pixels (the VAE is convolutional; 0 = whole images)",
    "T2ITrainConfig.kl_weight": "weight of the VAE's KL term",
    "T2ITrainConfig.unet_steps": "UNet and text encoder training steps",
    "T2ITrainConfig.unet_batch": "UNet batch size",
    "T2ITrainConfig.unet_lr": "UNet and text encoder learning rate",
    "T2ITrainConfig.uncond_prob": "share of captions dropped (for classifier-free guidance)",
    "T2ITrainConfig.lr_schedule": "cosine: to zero at --unet-steps; constant: a longer run is a resumed one",
    "T2ITrainConfig.ema_decay": "EMA decay of the saved weights (0 = no EMA)",
    "T2ITrainConfig.snr_gamma": "min-SNR loss weighting γ (0 = plain MSE)",
    "T2ITrainConfig.state_dir": "resumable state (empty: cache/t2i-train/<out name>)",
    "T2ITrainConfig.init_from": "continue from this saved pipeline's weights (fresh optimizer; the VAE is kept)",
    "T2ITrainConfig.caption_noise": "share of captions that misstate one attribute, as web captions do (0 = exact)",
    "TinyT2IConfig.image_size": "image size in pixels",
    "TinyT2IConfig.vae_channels": "VAE channels per level (latents are image_size / 2**(levels − 1) a side)",
    "TinyT2IConfig.latent_channels": "latent channels",
    "TinyT2IConfig.unet_channels": "UNet channels per level",
    "TinyT2IConfig.unet_layers": "UNet layers per block",
    "TinyT2IConfig.attention_head_dim": "UNet attention head width",
    "TinyT2IConfig.text_dim": "text encoder width",
    "TinyT2IConfig.text_layers": "text encoder depth",
    "TinyT2IConfig.text_heads": "text encoder attention heads",
    "TinyT2IConfig.max_length": "longest prompt in tokens",
    "TinyT2IConfig.norm_groups": "UNet GroupNorm groups",
    "TinyT2IConfig.vae_norm_groups": "VAE GroupNorm groups",
    "TinyT2IConfig.prediction_type": "what the UNet predicts: epsilon or v_prediction",
    "TinyT2IConfig.sd2_layout": "SD 2.x UNet layout (linear attention projections, float32 attention)",
    # train-reward: RewardTrainConfig, RewardConfig
    "RewardTrainConfig.out": "folder for the reward model and its metrics.json",
    "RewardTrainConfig.generator": "no --data: pipeline whose samples are labelled by the judge (empty: embedded)",
    "RewardTrainConfig.data": "rated dataset spec to learn from (empty: judge-labelled generations of ShapesWorld)",
    "RewardTrainConfig.pickapic": "RichHF-18K only: the Pick-a-Pic folder holding its prompts and images",
    "RewardTrainConfig.score": "the score that labels a rated image: good when it is at least --threshold",
    "RewardTrainConfig.threshold": "score at or above which a rated image is good (0.5 = 3 on a 1–5 scale)",
    "RewardTrainConfig.max_records": "most rated records read (0 = all), in the data's order",
    "RewardTrainConfig.heldout_share": "share of prompts held out when the data has no dev/test split",
    "RewardTrainConfig.train_prompts": "training prompts",
    "RewardTrainConfig.heldout_prompts": "held-out prompts per split (seen, unseen)",
    "RewardConfig.encoders": "CLIP hub id or folder (empty: the embedded ShapesWorld CLIP)",
    "RewardConfig.hidden": "width of the reward head's MLP",
    "RewardConfig.lam": "weight of the prompt-classification loss",
    "RewardConfig.temperature": "temperature of the prompt-classification softmax",
    "RewardConfig.n_perturbed": "perturbed prompts per image in the prompt-classification loss",
    # finetune: FinetuneConfig
    "FinetuneConfig.name": "adapter name (its resumable state is cache/finetune-state/<name>)",
    "FinetuneConfig.out": "adapter folder (empty: cache/adapters/<name>)",
    "FinetuneConfig.reward": "reward spec: lee, lee:DIR, rahf-<score>[:DIR] (plausibility, alignment, aesthetics, overall) or judge (ShapesWorld only)",
    "FinetuneConfig.prompts": "train (the reward's training prompts) or a text file, one prompt a line",
    "FinetuneConfig.n_prompts": "prompts sampled from --prompts",
    "FinetuneConfig.beta": "weight of the pre-training denoising loss",
    "FinetuneConfig.pretrain_folder": "image + .txt caption pairs for a real model (empty: ShapesWorld renders)",
    "FinetuneConfig.n_pretrain": "pre-training images",
    "FinetuneConfig.rank": "LoRA rank",
    "FinetuneConfig.uncond_prob": "share of the batch trained with the empty prompt",
    "FinetuneConfig.snr_gamma": "min-SNR-γ loss weighting (the embedded generator was trained with 5); 0 = ε-MSE",
    "FinetuneConfig.sample_guidance": "classifier-free guidance of the model's own samples (1 = unguided)",
    "FinetuneConfig.guided_objective": "fit the guided prediction at --sample-guidance (the sampler that made the samples)",
    "FinetuneConfig.reward_threshold": "> 0: train only on samples whose reward reaches this (the filtered variant)",
    "FinetuneConfig.reward_t_min": "train the reward-weighted term on the noisiest (1 − this) share of timesteps",
    "FinetuneConfig.lora_convs": "LoRA on the residual blocks' convolutions and time projections too",
    "FinetuneConfig.reward_x0_cap": "> 0: the reward-weighted term in x0 space, its weight capped at this",
    "FinetuneConfig.objective": "rwr: reward-weighted likelihood; dpo: Diffusion-DPO; draft: reward backpropagation",
    "FinetuneConfig.dpo_beta": "Diffusion-DPO's β (its KL weight)",
    "FinetuneConfig.pair_margin": "dpo: least reward difference between a pair's better and worse sample",
    "FinetuneConfig.draft_k": "draft: backpropagate through the last k sampler steps only (0 = all)",
    "FinetuneConfig.sample_steps": "draft: sampler steps per training sample",
    "FinetuneConfig.save_every": "steps between saves of the resumable state (what a kill can lose)",
    # train-clip: train_tiny_clip(...)
    "train_tiny_clip.out": "output folder (the shipped one is rebuilt only when named)",
    "train_tiny_clip.n": "(render, prompt) pairs",
    # eval-rahf: evaluate_rahf(...)
    "evaluate_rahf.checkpoint": "checkpoint folder (empty: the embedded one)",
    "evaluate_rahf.data": "dataset spec to evaluate on",
    "evaluate_rahf.split": "split evaluated (default: the spec's split=, else test)",
    "evaluate_rahf.train_data": "dataset the baselines are fitted on",
    "evaluate_rahf.train_split": "split the baselines are fitted on (default: the spec's split=, else train)",
    "evaluate_rahf.baseline_epochs": "epochs of the CNN baseline",
    "evaluate_rahf.max_records": "cap on evaluated and baseline-training records (0 = all)",
    # eval-judge: evaluate_judge(...)
    "evaluate_judge.n": "records per set (renders, degraded renders)",
    # eval-t2i: evaluate_generator(...)
    "evaluate_generator.per_prompt": "images per evaluation prompt",
    "evaluate_generator.per_category": "prompts per category and split",
    "evaluate_generator.steps": "sampler steps",
    "evaluate_generator.guidance": "classifier-free guidance",
    # eval-lee: LeeEvalConfig
    "LeeEvalConfig.adapters": "adapter folders, comma-separated; each is measured on the same prompts and seeds",
    "LeeEvalConfig.prompts": "a text file, one prompt a line (any generator); empty: ShapesWorld's splits",
    "LeeEvalConfig.n_prompts": "prompts per split (trained, held-out seen, unseen), or the first N of --prompts",
    "LeeEvalConfig.n": "samples per prompt and model",
    "LeeEvalConfig.k": "how many of the n samples best-k keeps",
    "LeeEvalConfig.reward": "reward best-of-k selects by (empty: the first adapter's training reward)",
    "LeeEvalConfig.held_out": "held-out rewards reported beside it, comma-separated",
    "LeeEvalConfig.generator": "the generator the adapters were trained on (empty: the embedded one)",
    "LeeEvalConfig.json": "write the results here (before anything is printed); empty: not written",
    # study-guidance: GuidanceStudyConfig
    "GuidanceStudyConfig.rewards": "guidance rewards, comma-separated (each with a judge measure: rahf-plausibility, rahf-alignment)",
    "GuidanceStudyConfig.scales": "candidate guidance scales tried on the tuning set, comma-separated",
    "GuidanceStudyConfig.tune_prompts": "tuning-set prompts (from the reward model's training prompts, never measured)",
    "GuidanceStudyConfig.tune_n": "samples per tuning prompt",
    "GuidanceStudyConfig.n_prompts": "measured prompts per split (held-out seen and unseen)",
    "GuidanceStudyConfig.n": "samples per measured prompt and arm (paired seeds across arms)",
    "GuidanceStudyConfig.steps": "sampling steps",
    "GuidanceStudyConfig.guidance": "classifier-free guidance scale",
    "GuidanceStudyConfig.guidance_steps": "the part of the schedule reward guidance acts in, \"start,end\" fractions",
    "GuidanceStudyConfig.grad_clip": "cap on each sample's reward-gradient norm (0 = none)",
    "GuidanceStudyConfig.seed": "seed of the measured samples (the tuning set uses seed + 1000)",
    "GuidanceStudyConfig.batch_size": "images per sampling batch",
    "GuidanceStudyConfig.generator": "a ShapesWorld generator folder (empty: the embedded one); the judge reads only ShapesWorld",
    "GuidanceStudyConfig.json": "write the results here (atomically, before anything is printed)",
    # eval-repair: evaluate_repair(...)
    "evaluate_repair.n": "images per set",
    "evaluate_repair.threshold": "heatmap threshold of the repair mask",
    "evaluate_repair.threshold_mode": "relative: a share of the map's peak; absolute: a heat level",
    "evaluate_repair.dilation": "mask dilation in pixels",
    "evaluate_repair.candidates": "inpainted candidates per image",
    "evaluate_repair.steps": "inpainting sampler steps",
    "evaluate_repair.strength": "inpainting strength (1 = repaint from noise)",
}

# Fields whose text takes one of a few values (checked on the command line and in TOML files).
CHOICES: dict[str, tuple[str, ...]] = {
    "RAHFConfig.variant": ("multihead", "augmented"),
    "VisionConfig.kind": ("scratch", "hf"),
    "TextConfig.kind": ("scratch", "hf"),
    "T2ITrainConfig.lr_schedule": ("cosine", "constant"),
    "TinyT2IConfig.prediction_type": ("epsilon", "v_prediction"),
    "FinetuneConfig.objective": ("rwr", "dpo", "draft"),
    "evaluate_repair.threshold_mode": ("relative", "absolute"),
}

TYPE_WORDS = {int: "a whole number", float: "a number", str: "text", bool: "true or false"}
SETTING = "setting:"  # namespace names of the generated flags (removed once the settings are built)
ALIAS = "alias:"


@dataclass(frozen=True)
class Field:
    """One setting: where it sits in the settings object, its flag, its type and its default."""

    path: tuple[str, ...]
    owner: str  # the class (or function) that declares it, for HELP and CHOICES
    flag: str
    kind: type  # int, float, str or bool; of the elements for a sequence
    sequence: type | None  # tuple or list
    optional: bool
    choices: tuple[str, ...] | None
    default: Any

    @property
    def key(self) -> str:
        """Its TOML key, as in a checkpoint's recorded config: `model.vision.dim`."""
        return ".".join(self.path)

    @property
    def help(self) -> str:
        return HELP.get(f"{self.owner}.{self.path[-1]}") or HELP.get(self.path[-1], "")


@dataclass(frozen=True)
class Alias:
    """An older or shorter flag: its value goes to each of `fields` (TOML keys); `also` sets fixed values."""

    flag: str
    fields: tuple[str, ...]
    help: str
    also: tuple[tuple[str, Any], ...] = ()


@dataclass
class Settings:
    """Where a command's settings come from: a dataclass, or a function whose annotated keyword
    parameters are the settings (unannotated ones are objects that code passes). Named "module:Name",
    it is imported only when the command is used."""

    source: str | type | typing.Callable
    aliases: tuple[Alias, ...] = ()
    defaults: dict[str, Any] = field(default_factory=dict)  # for function parameters without a default
    exclude: tuple[str, ...] = ()  # function parameters that are not settings
    # "module:NAME" of a dict: preset name → setting values (TOML keys), offered as `--preset NAME`.
    presets: str = ""

    def preset_values(self) -> dict[str, dict[str, Any]]:
        if not self.presets:
            return {}
        module, name = self.presets.split(":")
        return getattr(importlib.import_module(module), name)

    def settings_class(self) -> type:
        obj = self.source
        if isinstance(obj, str):
            module, name = obj.split(":")
            obj = getattr(importlib.import_module(module), name)
        return obj if dataclasses.is_dataclass(obj) else function_settings(obj, self.defaults, self.exclude)


def function_settings(func, defaults: dict[str, Any], exclude: tuple[str, ...] = ()) -> type:
    """A dataclass, named after `func`, of its annotated keyword parameters with their defaults."""
    hints = typing.get_type_hints(func)
    fields = []
    for name, param in inspect.signature(func).parameters.items():
        if name in exclude or name not in hints or param.kind not in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
            continue
        default = defaults.get(name, param.default)
        if default is param.empty:
            raise TypeError(f"{func.__name__}({name}) has no default: give one in Settings.defaults")
        fields.append((name, hints[name], field(default_factory=partial(_copy, default))))
    return dataclasses.make_dataclass(func.__name__, fields)


def _copy(value):
    return list(value) if isinstance(value, list) else value


def settings_fields(cls: type, path: tuple[str, ...] = (), prefix: str = "", defaults=None) -> list[Field]:
    """Every setting of the dataclass `cls`, nested dataclasses included (see the module docstring)."""
    defaults = cls() if defaults is None else defaults
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        hint, value = hints[f.name], getattr(defaults, f.name)
        if dataclasses.is_dataclass(hint):
            sub_prefix = prefix if f.name in FLATTENED else f"{prefix}{f.name}-"
            out += settings_fields(hint, path + (f.name,), sub_prefix, value)
        elif hint is not dict and typing.get_origin(hint) is not dict:
            out.append(make_field(cls.__name__, path + (f.name,), "--" + (prefix + f.name).replace("_", "-"), hint, value))
    flags = [f.flag for f in out]
    clashes = sorted({f for f in flags if flags.count(f) > 1})
    if clashes:
        raise TypeError(f"{cls.__name__}: two settings would share the flags {clashes}")
    return out


def make_field(owner: str, path: tuple[str, ...], flag: str, hint, default) -> Field:
    """The Field of one annotated setting (Optional, str | Path, Literal, tuple/list unwrapped)."""
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        optional = type(None) in args
        rest = [a for a in args if a is not type(None)]
        hint = str if str in rest else rest[0]  # str | Path: a path is typed as text
    choices = CHOICES.get(f"{owner}.{path[-1]}")
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        choices, hint = tuple(args), type(args[0])
    sequence = None
    if hint in (tuple, list) or origin in (tuple, list):
        sequence = origin or hint
        elements = [a for a in args if a is not Ellipsis]
        hint = elements[0] if elements else type(default[0]) if default else str
    if hint not in TYPE_WORDS:
        raise TypeError(f"{owner}.{path[-1]}: no flag for the type {hint!r}")
    return Field(path, owner, flag, hint, sequence, optional, choices, default)


# --- values: from the command line and from TOML ---------------------------------------------------------

def parse_text(fld: Field, text: str):
    """A flag's value from its text: '' is None for an optional field; a sequence is comma-separated."""
    try:
        if fld.optional and text == "":
            return None
        if fld.sequence is not None:
            return fld.sequence(_scalar(fld, part.strip()) for part in text.split(",") if part.strip())
        return _scalar(fld, text)
    except InvalidArgumentError as err:  # argparse shows this message after the flag's name
        raise argparse.ArgumentTypeError(str(err)) from None


def _scalar(fld: Field, text: str):
    try:
        value = fld.kind(text)
    except ValueError:
        raise InvalidArgumentError(f"{text!r} is not {TYPE_WORDS[fld.kind]}") from None
    return _checked_choice(fld, value)


def _checked_choice(fld: Field, value):
    if fld.choices and value not in fld.choices:
        raise InvalidArgumentError(f"{value!r} is not one of: {', '.join(fld.choices)}")
    return value


def toml_value(fld: Field, value):
    """A TOML value checked against the field's type (an integer is a valid float; an array a sequence)."""
    if fld.sequence is not None:
        if not isinstance(value, list):
            raise InvalidArgumentError(f"{fld.key} must be an array of {TYPE_WORDS[fld.kind]}s, got {value!r}")
        return fld.sequence(toml_value(dataclasses.replace(fld, sequence=None), v) for v in value)
    ok = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}[fld.kind]
    if not isinstance(value, ok) or (fld.kind is not bool and isinstance(value, bool)):
        raise InvalidArgumentError(f"{fld.key} must be {TYPE_WORDS[fld.kind]}, got {value!r}")
    try:
        return _checked_choice(fld, fld.kind(value))
    except InvalidArgumentError as err:
        raise InvalidArgumentError(f"{fld.key}: {err}") from None


def read_settings_file(path: str | Path, fields: list[Field]) -> dict[str, Any]:
    """{TOML key: value} of a settings file; an unknown key is refused with the list of valid ones."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidArgumentError(f"--config {path}: no such file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise InvalidArgumentError(f"--config {path}: not valid TOML ({err})") from None
    by_key = {f.key: f for f in fields}
    tables = {".".join(f.path[:i]) for f in fields for i in range(1, len(f.path))}  # the nested dataclasses
    values = dict(_flat_items(data, "", tables))
    unknown = sorted(set(values) - set(by_key))
    if unknown:
        raise InvalidArgumentError(f"{path}: unknown key{'s' * (len(unknown) > 1)} {', '.join(unknown)}; "
                                   f"the valid keys are: {', '.join(by_key)}")
    try:
        return {key: toml_value(by_key[key], value) for key, value in values.items()}
    except InvalidArgumentError as err:
        raise InvalidArgumentError(f"{path}: {err}") from None


def _flat_items(data: dict, prefix: str, tables: set[str]):
    """(dotted key, value) pairs; a table is entered only where the settings have a nested dataclass."""
    for key, value in data.items():
        dotted = prefix + key
        if isinstance(value, dict) and dotted in tables:
            yield from _flat_items(value, dotted + ".", tables)
        else:
            yield dotted, value


def with_values(obj, values: dict[str, Any]):
    """A copy of the dataclass `obj` with {dotted key: value} set, nested dataclasses copied too."""
    top, nested = {}, {}
    for key, value in values.items():
        head, _, rest = key.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            top[head] = value
    top.update({name: with_values(getattr(obj, name), sub) for name, sub in nested.items()})
    return dataclasses.replace(obj, **top)


def shown(value) -> str:
    """A default as a user types it."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    if value is None or value == "":
        return '""'
    return str(value)


# --- parsers -------------------------------------------------------------------------------------------------

class CommandParser(argparse.ArgumentParser):
    """A command's parser. Flags that need an import are added when it is first used: the settings
    classes (and `setup` functions) live in modules that import torch, seconds that `rhf --help` and the
    other commands need not pay. With `settings`, `args.settings` is the settings object built from
    the defaults, `--config` and the flags."""

    def __init__(self, *args, settings: Settings | None = None, setup: typing.Callable | None = None, **kwargs):
        self.settings, self.setup = settings, setup  # setup(parser): adds the command's other flags
        self.flags: list[argparse.Action] = []  # in order, for the reference table (set before -h is added)
        self._fields: list[Field] | None = None
        self._settings_class: type | None = None
        super().__init__(*args, **kwargs)

    def add_argument(self, *args, **kwargs):
        action = super().add_argument(*args, **kwargs)
        self.flags.append(action)
        return action

    def settings_fields(self) -> list[Field]:
        """The settings' fields, once the flags that need an import are added (here, the first time)."""
        if self._fields is None:
            self._fields = []
            if self.setup is not None:
                self.setup(self)
            if self.settings is not None:
                self._settings_class, self._fields = add_settings_flags(self, self.settings)
        return self._fields

    def parse_known_args(self, args=None, namespace=None):
        fields = self.settings_fields()
        namespace, extras = super().parse_known_args(args, namespace)
        if self.settings is not None:
            try:
                namespace.settings = build_settings(self._settings_class, fields, self.settings.aliases, namespace,
                                                    self.settings.preset_values())
            except InvalidArgumentError as err:
                self.error(str(err))
        return namespace, extras

    def format_help(self) -> str:
        self.settings_fields()
        return super().format_help()

    def format_usage(self) -> str:
        self.settings_fields()
        return super().format_usage()


class CommandLine(argparse.ArgumentParser):
    """The top parser: `command(name, help, settings)` adds a command; `commands` maps names to parsers."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # (a module may add its own command to it: `subparsers.add_parser(...)`)
        self.subparsers = self.add_subparsers(dest="command", required=True, parser_class=CommandParser)

    def command(self, name: str, help: str, settings: Settings | None = None,
                setup: typing.Callable | None = None) -> CommandParser:
        return self.subparsers.add_parser(name, help=help, description=help, settings=settings, setup=setup)

    @property
    def commands(self) -> dict[str, CommandParser]:
        return self.subparsers.choices


def add_settings_flags(parser: CommandParser, settings: Settings) -> tuple[type, list[Field]]:
    """`--config` and one flag per setting (and alias) of `settings`, in a group of their own."""
    cls = settings.settings_class()
    fields = settings_fields(cls)
    group = parser.add_argument_group(f"settings ({cls.__name__}; TOML keys as in `--config`)")
    parser.flags.append(group.add_argument(
        "--config", dest="config_file", metavar="FILE.toml",
        help=f"read settings from this TOML file (keys: the fields of {cls.__name__}, a table for each nested "
             "one); flags given as well override it"))
    presets = settings.preset_values()
    if presets:
        parser.flags.append(group.add_argument(
            "--preset", dest="preset_name", choices=sorted(presets), metavar="{" + ",".join(sorted(presets)) + "}",
            help="start from a named recipe's settings (" + "; ".join(
                f"{name}: " + ", ".join(f"{k} = {v!r}" for k, v in values.items()) for name, values in sorted(presets.items()))
            + "); --config and flags given as well override it"))
    for fld in fields:
        kwargs = dict(dest=SETTING + fld.key, default=argparse.SUPPRESS, help=f"{fld.help} (default: {shown(fld.default)})")
        if fld.kind is bool and fld.sequence is None:
            action = group.add_argument(fld.flag, action=argparse.BooleanOptionalAction, **kwargs)
        else:
            action = group.add_argument(fld.flag, type=partial(parse_text, fld), metavar=_metavar(fld), **kwargs)
        action.setting = fld
        parser.flags.append(action)
    by_key = {f.key: f for f in fields}
    for alias in settings.aliases:
        target = by_key[alias.fields[0]]
        also = "".join(f", {k} = {v!r}" for k, v in alias.also)
        action = group.add_argument(alias.flag, dest=ALIAS + alias.flag, default=argparse.SUPPRESS,
                                    type=partial(parse_text, target), metavar=_metavar(target),
                                    help=f"{alias.help} (sets {', '.join(alias.fields)}{also})")
        parser.flags.append(action)
    return cls, fields


def _metavar(fld: Field) -> str:
    if fld.choices:
        return "{" + ",".join(fld.choices) + "}"
    word = {int: "N", float: "X", str: "TEXT"}[fld.kind]
    return f"{word},…" if fld.sequence else word


def build_settings(cls: type, fields: list[Field], aliases: tuple[Alias, ...], namespace,
                   presets: dict[str, dict[str, Any]] | None = None) -> Any:
    """The settings object: defaults, then the --preset, then the --config file, then aliases, then the
    flags themselves. The generated flags' entries are taken out of `namespace`, so that code reads only
    `args.settings`."""
    values: dict[str, Any] = {}
    if getattr(namespace, "preset_name", None):
        values.update((presets or {})[namespace.preset_name])
    if getattr(namespace, "config_file", None):
        values.update(read_settings_file(namespace.config_file, fields))
    for alias in aliases:
        if hasattr(namespace, ALIAS + alias.flag):
            value = getattr(namespace, ALIAS + alias.flag)
            delattr(namespace, ALIAS + alias.flag)
            values.update({key: value for key in alias.fields})
            values.update(dict(alias.also))
    for fld in fields:
        if hasattr(namespace, SETTING + fld.key):
            values[fld.key] = getattr(namespace, SETTING + fld.key)
            delattr(namespace, SETTING + fld.key)
    return with_values(cls(), values)


# --- the reference page ----------------------------------------------------------------------------------------

def markdown_reference(parser: CommandLine) -> str:
    """docs/reference/cli.md: each command's flags, TOML keys, defaults and help."""
    lines = ["# Command line reference", "",
             "Generated from `build_parser()` by `python -m rhf_core.cli_args --markdown > docs/reference/cli.md`",
             "(`tests/test_cli.py` fails when it is out of date). `rhf COMMAND …` and `python -m rhf_core COMMAND …`",
             "are the same. Settings flags are generated from the command's settings dataclass (see",
             "`rhf_core/cli_args.py`); `--config FILE.toml` reads them from a file whose keys are the TOML keys",
             "below, and flags given as well override the file. `configs/` holds the shipped runs' files.", ""]
    for name, sub in parser.commands.items():
        sub.settings_fields()
        lines += [f"## `{name}`", "", sub.description or "", "", "| flag | TOML key | default | meaning |", "|---|---|---|---|"]
        for action in (a for a in sub.flags if a.dest != "help"):
            flags = " / ".join(f"`{s}`" for s in action.option_strings) or f"`{action.dest}` (positional)"
            fld = getattr(action, "setting", None)
            default = shown(fld.default) if fld else "" if action.default in (None, False, argparse.SUPPRESS) else shown(action.default)
            help_text = (fld.help if fld else action.help or "").replace("|", "\\|").replace("<", "\\<")
            key, default = (f"`{text}`" if text else "" for text in (fld.key if fld else "", default))
            lines.append(f"| {flags} | {key} | {default} | {help_text} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    # Imported here, not at the top: rhf_core.__main__ imports this module.
    from rhf_core.__main__ import build_parser

    if sys.argv[1:] != ["--markdown"]:
        sys.exit("usage: python -m rhf_core.cli_args --markdown  (prints docs/reference/cli.md)")
    print(markdown_reference(build_parser()), end="")
