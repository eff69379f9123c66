"""Reward fine-tuning of a text-to-image model (Lee et al. 2023 sec. 4.3; `python -m rhf_core finetune`):
the one function to read to see how it works.

    loss = objective term on the model's own samples + β · denoising loss on pre-training pairs (D_pre)

trained into LoRA adapters on the UNet, saved as diffusers LoRA weights (safetensors) with
`adapter.json` under `cache/adapters/<name>/`. The objectives (rhf_core/align/objectives.py): "rwr"
(Lee et al.'s reward-weighted likelihood), "dpo" (Diffusion-DPO), "draft" (reward backpropagation).
Runs under `accelerate launch` on several GPUs; single-process on a CPU. Resumable and cancellable
(rhf_core/align/state.py). See docs/design.md for where this sits in the project."""

from __future__ import annotations

import copy
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from accelerate import Accelerator

from rhf_core.align.config import OBJECTIVES, FinetuneConfig
from rhf_core.align.data import PretrainLatents, PromptEmbeddings, fine_tune_prompts, pretrain_latents
from rhf_core.align.lora import add_lora, adapter_weights, check_adapter_folder, save_adapter, set_adapter_weights
from rhf_core.align.objectives import Denoiser, check_reward_fits, make_objective, prediction_type, pretrain_loss
from rhf_core.align.state import (RunRecord, check_name, clear_state, load_finetune_state, resumable_state,
                                  run_settings)
from rhf_core.reward.model import RewardError
from rhf_core.reward.rewards import get_reward
from rhf_core.t2i import load_generator
from rhf_core.training import warmup_cosine

WARMUP_STEPS = 50  # linear warm-up of the learning rate, then a cosine to 0 at `steps`


def finetune(cfg: FinetuneConfig, generator=None, reward=None, resume: bool = True,
             progress: Callable[[str, float], None] | None = None,
             should_stop: Callable[[], bool] | None = None) -> Path:
    """Train a LoRA adapter by `cfg.objective`; returns the adapter folder.

    `generator` (a rhf_core.t2i Generator) and `reward` (a callable `reward(images, prompts) -> scores`)
    stand in for `cfg.generator` and `cfg.reward`. With `resume`, continues from the saved state of
    `cfg.name` when it was trained with the same settings and refuses one trained with others
    (FinetuneSettingsError); without, discards it first. `progress(stage, fraction)` hears "generating",
    "scoring" and "fine-tuning". `should_stop` (polled after each step) ends the run early: the state
    is saved and the adapter written, marked incomplete. Any exception (Ctrl-C, Streamlit stopping the
    script) saves the state at the last finished step and passes through, writing no adapter;
    `saved_steps(cfg.name)` says what was kept."""
    # 1. Check the settings, before anything is loaded
    check_config(cfg)
    report = progress or (lambda stage, fraction: None)
    accelerator = Accelerator()

    # 2. The generator, the reward and the prompts: refuse what does not fit together
    generator = generator or load_generator(cfg.generator or None)
    generator.unload_lora()
    reward = reward or get_reward(cfg.reward, generator=generator)
    check_reward_fits(cfg, reward)
    prediction_type(generator.pipe.scheduler)
    prompts = fine_tune_prompts(cfg, generator)

    # 3. Resume the saved state or start over (before the costly part: a refusal comes at once)
    settings = run_settings(cfg, generator, reward, prompts)
    if not resume:
        clear_state(cfg.name)
    resume_from = resumable_state(cfg.name, settings)

    # 4. The objective and its data: D_model sampled and scored (a reward that cannot rank it is refused)
    objective = make_objective(cfg, generator, reward, prompts, report)

    # 5. D_pre for the β term, encoded; the text embedding of every prompt
    pre = pretrain_latents(cfg, generator) if cfg.beta > 0 else None  # (means, stds, captions), cached
    beta = cfg.beta if pre is not None else 0.0
    embeddings = PromptEmbeddings(generator, [*objective.prompts, *(pre[2] if pre else [])])
    model_cond = embeddings.of(objective.prompts)  # (N, L, D)
    pretrain = PretrainLatents(pre[0], pre[1], embeddings.of(pre[2])) if pre else None

    # 6. The adapted UNet: a copy of the generator's (which stays as it was) with float32 LoRA adapters
    unet = copy.deepcopy(generator.pipe.unet)
    unet.requires_grad_(False)
    torch.manual_seed(cfg.seed)  # LoRA's initial A matrices: the same adapter from the same config
    params = add_lora(unet, cfg.rank, cfg.lora_convs)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    meta = None
    if resume_from is not None:
        lora, opt_state, meta = load_finetune_state(resume_from)
        set_adapter_weights(unet, lora)
        opt.load_state_dict(opt_state)
    record = RunRecord(cfg, settings, objective.log_key, objective.log_sign, meta)  # the step, the log, …
    unet_t, opt = accelerator.prepare(unet, opt)
    gen = torch.Generator().manual_seed(cfg.seed + record.start)  # noise, timesteps, dropped prompts
    rng = np.random.default_rng(cfg.seed + record.start)  # which samples make each batch
    d = Denoiser(cfg, unet_t, generator.pipe.unet, generator.pipe.scheduler, embeddings.empty, gen, accelerator.device)

    def save() -> None:
        weights = adapter_weights(accelerator.unwrap_model(unet_t)) if accelerator.is_main_process else {}
        record.save(weights, opt.state_dict(), write=accelerator.is_main_process)

    # 7. Train: the objective's term + β · the pre-training term, saving the state as it goes
    stopped = False
    try:
        for step in range(record.start, cfg.steps):
            for g in opt.param_groups:
                g["lr"] = learning_rate(cfg, step)
            l_model = objective.loss(d, model_cond, rng)
            l_pre = pretrain_loss(d, pretrain, rng, cfg.batch_size) if beta > 0 else torch.zeros(())
            loss = l_model + beta * l_pre if beta > 0 else l_model
            opt.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(params, 1.0)
            opt.step()
            record.finish_step(l_model.item(), float(l_pre.detach()), objective.batch_rewards())
            report("fine-tuning", record.done / cfg.steps)
            stopped = should_stop is not None and should_stop()
            log_and_save, save_only = record.save_due(stopped)
            if log_and_save:
                record.log_steps()
            if log_and_save or save_only:
                save()
            if stopped:
                break
    except BaseException:
        # Interrupted (Ctrl-C, or a page that reran while training) or failed: keep every finished step, so
        # the next run resumes from here rather than from the last periodic save. A failure while saving
        # leaves the previous state file as it was (it is replaced atomically).
        record.log_steps()
        if record.unsaved():
            save()
        raise

    # 8. Save the adapter, with what it was trained on and how the training went
    accelerator.wait_for_everyone()
    info = {"config": asdict(cfg), "generator": generator.name, "beta_used": beta,
            "steps_done": record.log[-1]["step"] if record.log else record.start, "complete": not stopped,
            "resumed_from": record.start, "prompts": len(prompts), **objective.info(),
            "reward_stats": objective.reward_stats(record), "log": record.log}
    if accelerator.is_main_process:
        save_adapter(accelerator.unwrap_model(unet_t), cfg.out_dir, info)
    return cfg.out_dir


def learning_rate(cfg: FinetuneConfig, step: int) -> float:
    """The learning rate at `step` (0-based): linear warm-up over WARMUP_STEPS, then a cosine to 0 at `steps`.
    (Before rhf_core/training.py this was written inline in another order, which rounds differently by
    one unit in the last place of a double in about a quarter of the steps; AdamW uses the step size as a
    float32, where the two agree for every step of lr 1e-4…0.1 and 1–5000 steps, so the trained weights
    are bit-identical.)"""
    return cfg.lr * warmup_cosine(step, cfg.steps, WARMUP_STEPS)


def check_config(cfg: FinetuneConfig) -> None:
    """Refuse settings that cannot run, naming what is allowed (RewardError), before any work."""
    check_name(cfg.name)
    for field in ("steps", "save_every", "batch_size", "rank"):
        value = getattr(cfg, field)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise RewardError(f"{field} must be a whole number ≥ 1, got {value!r}")
    check_adapter_folder(cfg.out_dir)
    if not 0.0 <= cfg.reward_t_min < 1.0:
        raise RewardError(f"reward_t_min must lie in [0, 1): the share of the schedule skipped, got {cfg.reward_t_min}")
    if cfg.objective not in OBJECTIVES:
        raise RewardError(f"unknown objective {cfg.objective!r}: one of {', '.join(OBJECTIVES)}")
    if cfg.objective == "dpo" and cfg.pair_margin <= 0:
        raise RewardError(f"pair_margin must be > 0 (a pair needs a better and a worse sample), got {cfg.pair_margin}")
    if cfg.objective == "draft" and not 0 <= cfg.draft_k <= cfg.sample_steps:
        raise RewardError(f"draft_k must lie in [0, {cfg.sample_steps}] (sampler steps to backpropagate through), "
                          f"got {cfg.draft_k}")
