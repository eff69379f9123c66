"""Command line: `python -m rhf_core <command> …` (see `--help` of each command)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from rhf_core.errors import RHFError


def _train_rahf(args) -> None:
    from rhf_core.rahf.config import RAHFConfig, TextConfig, VisionConfig
    from rhf_core.rahf.train import TrainConfig, train_rahf

    vision = VisionConfig(kind="hf", name_or_path=args.vision) if args.vision else VisionConfig(
        patch_size=args.patch_size, dim=args.dim, layers=args.vision_layers)
    text = TextConfig(kind="hf", name_or_path=args.text) if args.text else TextConfig(dim=args.dim)
    model = RAHFConfig(image_size=args.image_size, vision=vision, text=text, fusion_dim=args.dim,
                       fusion_layers=args.fusion_layers, variant=args.variant, dropout=args.dropout,
                       heatmap_skip=args.heatmap_skip)
    cfg = TrainConfig(data=args.data, out=args.out, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      augment=not args.no_augment, seed=args.seed, max_records=args.max_records, model=model,
                      state_dir=args.state_dir, heatmap_pos_weight=args.heatmap_pos_weight,
                      heatmap_cc_loss=args.heatmap_cc_loss, score_loss=args.score_loss)
    train_rahf(cfg, resume=not args.no_resume)
    print(f"saved the best epoch to {args.out}")


def _calibrate_rahf(args) -> None:
    from rhf_core.data import open_dataset
    from rhf_core.rahf.calibrate import calibrate_checkpoint

    scales = calibrate_checkpoint(args.checkpoint, open_dataset(args.data, split=args.split), args.max_records)
    print(f"heatmap scales written to {args.checkpoint}/config.json: {scales}")


def _eval_rahf(args) -> None:
    from rhf_core.rahf.evaluate import evaluate_rahf, format_tables

    result = evaluate_rahf(args.checkpoint, args.data, split=args.split, train_data=args.train_data,
                           train_split=args.train_split, baseline_epochs=args.baseline_epochs,
                           max_records=args.max_records, seed=args.seed)
    print(format_tables(result))
    _write_json(args.json, result)


def _eval_judge(args) -> None:
    from rhf_core.judge import evaluate_judge

    result = {"renders": evaluate_judge(args.n, args.seed), "degraded": evaluate_judge(args.n, args.seed, degraded=True)}
    print(json.dumps(result, indent=2))
    _write_json(args.json, result)


def _train_t2i(args) -> None:
    from rhf_core.t2i.build import TinyT2IConfig
    from rhf_core.t2i.train import T2ITrainConfig, train_t2i

    model = TinyT2IConfig(unet_channels=tuple(int(c) for c in args.unet_channels.split(",")),
                          vae_channels=tuple(int(c) for c in args.vae_channels.split(",")))
    cfg = T2ITrainConfig(out=args.out, n_images=args.n_images, seed=args.seed, vae_steps=args.vae_steps,
                         unet_steps=args.unet_steps, unet_batch=args.batch_size, unet_lr=args.lr,
                         lr_schedule=args.lr_schedule, ema_decay=args.ema, snr_gamma=args.snr_gamma,
                         state_dir=args.state_dir or None, init_from=args.init_from or None,
                         caption_noise=args.caption_noise, model=model)
    train_t2i(cfg, resume=not args.no_resume)
    print(f"saved the pipeline to {args.out}")
    if args.eval:
        _eval_t2i(argparse.Namespace(checkpoint=args.out, per_prompt=args.per_prompt, seed=1,
                                     json=str(Path(args.out) / "metrics.json")))


def _eval_t2i(args) -> None:
    from rhf_core.t2i.evaluate import evaluate_generator, format_table

    result = evaluate_generator(args.checkpoint or None, per_prompt=args.per_prompt, seed=args.seed)
    print(format_table(result))
    _write_json(args.json, result)


def _sample_grid(args) -> None:
    from rhf_core.t2i import load_generator
    from rhf_core.t2i.evaluate import sample_grid

    gen = load_generator(args.generator or None)
    if args.adapter:
        gen.load_lora(args.adapter)
    prompts = args.prompts.split(";") if args.prompts else [
        "one circle", "three squares", "a red circle", "a green triangle", "a star on the sand", "a square in the snow",
        "two blue circles on the grass", "four yellow triangles in the ocean", "a purple circle", "two stars"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    sample_grid(gen, prompts, n=args.n, seed=args.seed).save(args.out)
    print(f"wrote {args.out}")


def _write_json(path: str, result: dict) -> None:
    if path:
        from rhf_core.cache import atomic_write_text, json_text

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json_text(result))
        print(f"wrote {path}")


def _train_clip(args) -> None:
    from rhf_core.reward.encoders import train_tiny_clip

    result = train_tiny_clip(args.out, n=args.n, steps=args.steps, batch_size=args.batch_size, seed=args.seed)
    _write_json(str(Path(args.out) / "train_log.json"), result)


def _train_reward(args) -> None:
    from rhf_core.reward.model import RewardConfig
    from rhf_core.reward.train import RewardTrainConfig, format_metrics, train_reward

    cfg = RewardTrainConfig(out=args.out, generator=args.generator, per_prompt=args.per_prompt,
                            train_prompts=args.train_prompts, heldout_prompts=args.heldout_prompts, seed=args.seed,
                            steps=args.steps, model=RewardConfig(encoders=args.encoders, lam=args.lam,
                                                                 temperature=args.temperature, n_perturbed=args.n_perturbed))
    _, metrics = train_reward(cfg)
    print(format_metrics(metrics))
    print(f"saved the reward model and metrics.json to {args.out}")


def _finetune(args) -> None:
    from tqdm.auto import tqdm

    from rhf_core.reward.finetune import FinetuneConfig, finetune, saved_steps

    cfg = FinetuneConfig(name=args.name, out=args.out, generator=args.generator, reward=args.reward,
                         prompts=args.prompts, n_prompts=args.n_prompts, per_prompt=args.per_prompt, beta=args.beta,
                         pretrain_folder=args.pretrain_folder, rank=args.rank, steps=args.steps,
                         batch_size=args.batch_size, lr=args.lr, uncond_prob=args.uncond_prob,
                         snr_gamma=args.snr_gamma, sample_guidance=args.sample_guidance,
                         guided_objective=args.guided_objective,
                         reward_threshold=args.reward_threshold, reward_t_min=args.reward_t_min,
                         lora_convs=args.lora_convs, reward_x0_cap=args.reward_x0_cap, objective=args.objective,
                         dpo_beta=args.dpo_beta, pair_margin=args.pair_margin, draft_k=args.draft_k,
                         sample_steps=args.sample_steps, seed=args.seed,
                         **({} if args.save_every is None else {"save_every": args.save_every}))
    bars: dict = {}

    def progress(stage: str, frac: float) -> None:
        if stage not in bars:  # (setdefault would build, and print, a new bar at every call)
            bars[stage] = tqdm(total=cfg.steps if stage == "fine-tuning" else 1000, desc=stage, leave=False)
        bar = bars[stage]
        bar.n = round(frac * bar.total)  # fine-tuning counts steps
        bar.refresh()

    def terminate(signum, frame):  # SIGTERM (a scheduler, `kill`) stops like Ctrl-C: state kept, no traceback
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        out = finetune(cfg, resume=not args.no_resume, progress=progress)
    except KeyboardInterrupt:
        # finetune has saved the state at the last finished step; say so in one line, without a traceback.
        for bar in bars.values():
            bar.close()
        kept = saved_steps(cfg.name)
        print(f"interrupted: {kept} of {cfg.steps} steps kept in the saved state of {cfg.name!r}; run the same "
              f"command again to resume from step {kept} (--no-resume starts over)", file=sys.stderr)
        raise SystemExit(130) from None  # 128 + SIGINT, as a shell reports it
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(f"saved the adapter to {out}")


def _eval_lee(args) -> None:
    from rhf_core.reward.experiment import format_experiment, lee_experiment
    from rhf_core.t2i import load_generator

    result = lee_experiment(adapters=args.adapters.split(","), n_prompts=args.n_prompts, n=args.n, k=args.k,
                            reward_name=args.reward, seed=args.seed, generator=load_generator(args.generator or None))
    print(format_experiment(result))
    _write_json(args.json, result)


def _eval_repair(args) -> None:
    from rhf_core.repair import evaluate_repair

    result = evaluate_repair(n=args.n, seed=args.seed, threshold=args.threshold, threshold_mode=args.mode,
                             dilation=args.dilation, candidates=args.candidates, strength=args.strength)
    print(json.dumps(result, indent=2))
    _write_json(args.json, result)


def build_parser() -> argparse.ArgumentParser:
    """Every command and flag (the docs' commands are checked against this parser in tests)."""
    ap = argparse.ArgumentParser(prog="python -m rhf_core", description="Rich Human Feedback Studio commands")
    sub = ap.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train-rahf", help="train a RAHF predictor on a dataset spec")
    t.add_argument("--data", default="shapes:n=10000,seed=0", help="dataset spec (train and dev splits are used)")
    t.add_argument("--out", default="cache/rahf-run", help="folder for the best checkpoint")
    t.add_argument("--epochs", type=int, default=24)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--variant", choices=["multihead", "augmented"], default="multihead")
    t.add_argument("--image-size", type=int, default=64)
    t.add_argument("--patch-size", type=int, default=8)
    t.add_argument("--dim", type=int, default=96)
    t.add_argument("--vision-layers", type=int, default=2)
    t.add_argument("--fusion-layers", type=int, default=3)
    t.add_argument("--dropout", type=float, default=0.0)
    t.add_argument("--heatmap-skip", action="store_true", help="heatmap decoder skip connections from the pixels")
    t.add_argument("--heatmap-pos-weight", type=float, default=1.0, help="extra loss weight of flagged heatmap pixels")
    t.add_argument("--heatmap-cc-loss", type=float, default=1.0,
                   help="weight of 1 − CC between predicted and label heatmaps (non-empty labels)")
    t.add_argument("--score-loss", type=float, default=2.0, help="weight of the score MSE")
    t.add_argument("--vision", default="", help="HF vision tower (hub id or local path); default: scratch ViT")
    t.add_argument("--text", default="", help="HF text encoder (hub id or local path); default: scratch")
    t.add_argument("--max-records", type=int, default=0, help="cap on training records (0 = all)")
    t.add_argument("--state-dir", default="", help="resumable state (default: cache/rahf-train/<out name>)")
    t.add_argument("--no-augment", action="store_true")
    t.add_argument("--no-resume", action="store_true")
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=_train_rahf)

    cal = sub.add_parser("calibrate-rahf", help="fit a checkpoint's heatmap calibration on held-out labels "
                         "(train-rahf does this on its dev split when it finishes)")
    cal.add_argument("checkpoint", help="checkpoint folder")
    cal.add_argument("--data", required=True, help="dataset spec with heatmap labels")
    cal.add_argument("--split", default="dev")
    cal.add_argument("--max-records", type=int, default=0)
    cal.set_defaults(func=_calibrate_rahf)

    e = sub.add_parser("eval-rahf", help="the paper's tables for a checkpoint and baselines trained in the same run")
    e.add_argument("--checkpoint", default="", help="checkpoint folder (default: the embedded one)")
    e.add_argument("--data", default="shapes:n=3000,seed=1", help="dataset spec to evaluate on")
    e.add_argument("--split", default="test")
    e.add_argument("--train-data", default="shapes:n=10000,seed=0", help="dataset the baselines are fitted on")
    e.add_argument("--train-split", default="train")
    e.add_argument("--baseline-epochs", type=int, default=8, help="epochs of the CNN baseline")
    e.add_argument("--max-records", type=int, default=0, help="cap on evaluated and baseline-training records")
    e.add_argument("--json", default="", help="write the results here")
    e.add_argument("--seed", type=int, default=0)
    e.set_defaults(func=_eval_rahf)

    j = sub.add_parser("eval-judge", help="the ShapesWorld judge's accuracy per verdict, on renders and degraded renders")
    j.add_argument("--n", type=int, default=1000)
    j.add_argument("--seed", type=int, default=0)
    j.add_argument("--json", default="")
    j.set_defaults(func=_eval_judge)

    g = sub.add_parser("train-t2i", help="train the embedded text-to-image pipeline on clean ShapesWorld renders")
    g.add_argument("--out", default="cache/t2i-run", help="folder for the saved diffusers pipeline")
    g.add_argument("--n-images", type=int, default=20000)
    g.add_argument("--vae-steps", type=int, default=1200)
    g.add_argument("--unet-steps", type=int, default=3000)
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--lr", type=float, default=5e-4)
    g.add_argument("--lr-schedule", default="cosine", choices=["cosine", "constant"])
    g.add_argument("--ema", type=float, default=0.0, help="EMA decay of the saved weights (0 = no EMA)")
    g.add_argument("--snr-gamma", type=float, default=0.0, help="min-SNR loss weighting gamma (0 = plain MSE)")
    g.add_argument("--unet-channels", default="32,64,64")
    g.add_argument("--vae-channels", default="16,32,32")
    g.add_argument("--state-dir", default="", help="resumable state (default: cache/t2i-train/<out name>)")
    g.add_argument("--no-resume", action="store_true")
    g.add_argument("--init-from", default="", help="continue from this saved pipeline's weights (fresh optimizer; "
                                                    "the VAE is kept, --vae-steps ignored)")
    g.add_argument("--caption-noise", type=float, default=0.0,
                   help="share of training captions that misstate one attribute, as web captions do (0 = exact)")
    g.add_argument("--eval", action="store_true", help="then write metrics.json beside the pipeline")
    g.add_argument("--per-prompt", type=int, default=4, help="images per evaluation prompt")
    g.add_argument("--seed", type=int, default=0)
    g.set_defaults(func=_train_t2i)

    v = sub.add_parser("eval-t2i", help="judge alignment rate per prompt category, seen and unseen, of a generator")
    v.add_argument("--checkpoint", default="", help="pipeline folder or hub id (default: the embedded one)")
    v.add_argument("--per-prompt", type=int, default=4)
    v.add_argument("--seed", type=int, default=1)
    v.add_argument("--json", default="")
    v.set_defaults(func=_eval_t2i)

    sg = sub.add_parser("sample-grid", help="a PNG grid of generator samples with the judge's verdicts")
    sg.add_argument("--generator", default="")
    sg.add_argument("--adapter", default="", help="LoRA adapter folder to load first")
    sg.add_argument("--prompts", default="", help="prompts separated by ';' (default: a few of each category)")
    sg.add_argument("--n", type=int, default=6)
    sg.add_argument("--seed", type=int, default=0)
    sg.add_argument("--out", default="cache/t2i-grid.png")
    sg.set_defaults(func=_sample_grid)

    c = sub.add_parser("train-clip", help="train the small ShapesWorld CLIP (reward encoders) contrastively")
    c.add_argument("--out", default="cache/clip-shapes", help="output folder (the shipped one is rebuilt only when named)")
    c.add_argument("--n", type=int, default=20000, help="(render, prompt) pairs")
    c.add_argument("--steps", type=int, default=1500)
    c.add_argument("--batch-size", type=int, default=128)
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(func=_train_clip)

    r = sub.add_parser("train-reward", help="Lee et al.'s reward model on judge-labelled generations, with baselines")
    r.add_argument("--out", default="cache/reward-shapes", help="output folder (the shipped one is rebuilt only when named)")
    r.add_argument("--generator", default="", help="pipeline whose samples are labelled (default: embedded)")
    r.add_argument("--encoders", default="", help="CLIP hub id or folder (default: the embedded ShapesWorld CLIP)")
    r.add_argument("--per-prompt", type=int, default=6)
    r.add_argument("--train-prompts", type=int, default=300)
    r.add_argument("--heldout-prompts", type=int, default=60)
    r.add_argument("--lam", type=float, default=0.5, help="weight of the prompt-classification loss")
    r.add_argument("--temperature", type=float, default=0.1)
    r.add_argument("--n-perturbed", type=int, default=8)
    r.add_argument("--steps", type=int, default=1500)
    r.add_argument("--seed", type=int, default=0)
    r.set_defaults(func=_train_reward)

    f = sub.add_parser("finetune", help="reward-weighted LoRA fine-tuning of a generator (Lee et al.)")
    f.add_argument("--name", default="lee-shapes")
    f.add_argument("--out", default="", help="adapter folder (default: cache/adapters/<name>)")
    f.add_argument("--generator", default="")
    f.add_argument("--reward", default="lee", help="lee, rahf-alignment, rahf-plausibility, rahf-overall or judge")
    f.add_argument("--prompts", default="train", help="'train' (the grammar's training prompts) or a text file")
    f.add_argument("--n-prompts", type=int, default=300)
    f.add_argument("--per-prompt", type=int, default=8)
    f.add_argument("--beta", type=float, default=1.0, help="weight of the pre-training denoising loss")
    f.add_argument("--pretrain-folder", default="", help="image + .txt caption pairs (real models)")
    f.add_argument("--rank", type=int, default=8)
    f.add_argument("--steps", type=int, default=600)
    f.add_argument("--batch-size", type=int, default=32)
    f.add_argument("--lr", type=float, default=3e-4)
    f.add_argument("--uncond-prob", type=float, default=0.1, help="share of the batch trained with the empty prompt")
    f.add_argument("--sample-guidance", type=float, default=7.5,
                   help="classifier-free guidance of the model's own samples (1 = the conditional model, unguided)")
    f.add_argument("--guided-objective", action=argparse.BooleanOptionalAction, default=True,
                   help="take the reward-weighted loss on the guided prediction at --sample-guidance (fit the sampler "
                        "that made the samples, so sampling at that guidance guides once)")
    f.add_argument("--reward-threshold", type=float, default=0.0,
                   help="> 0: train only on samples whose reward reaches this (Lee et al.'s filtered variant)")
    f.add_argument("--reward-t-min", type=float, default=0.0,
                   help="train the reward-weighted term on the noisiest (1 − this) share of timesteps only")
    f.add_argument("--lora-convs", action="store_true",
                   help="LoRA on the residual blocks' convolutions and time projections too (not only attention)")
    f.add_argument("--reward-x0-cap", type=float, default=0.0,
                   help="> 0: take the reward-weighted term in x0 space (ε-MSE / SNR, the weight capped at this), "
                        "where count and layout errors at high noise are not swamped by texture")
    f.add_argument("--snr-gamma", type=float, default=5.0,
                   help="min-SNR-γ loss weighting (the embedded generator was trained with 5); 0 = plain ε-MSE")
    f.add_argument("--objective", default="rwr", choices=["rwr", "dpo", "draft"],
                   help="rwr: Lee et al.'s reward-weighted likelihood; dpo: Diffusion-DPO on pairs of one prompt's samples; "
                        "draft: reward backpropagation through the sampler (differentiable rewards: lee)")
    f.add_argument("--dpo-beta", type=float, default=2000.0, help="Diffusion-DPO's β (its KL weight)")
    f.add_argument("--draft-k", type=int, default=0,
                   help="draft: backpropagate through the last k sampler steps only (0 = all)")
    f.add_argument("--sample-steps", type=int, default=25, help="draft: sampler steps per training sample")
    f.add_argument("--pair-margin", type=float, default=0.5,
                   help="dpo: the least reward difference between the better and the worse sample of a pair")
    f.add_argument("--save-every", type=int, default=None,  # None: FinetuneConfig's (not imported here: torch)
                   help="steps between saves of the resumable state, what a kill can lose (default 10: under a "
                        "minute of the default objective on a 2-core CPU); a step ending 45 s or more after the "
                        "last save is saved too")
    f.add_argument("--no-resume", action="store_true",
                   help="discard the saved state of --name first and train from step 0 (a run resumes it only "
                        "with the settings it was trained with)")
    f.add_argument("--seed", type=int, default=0)
    f.set_defaults(func=_finetune)

    le = sub.add_parser("eval-lee", help="rejection sampling vs fine-tuning on held-out prompts, judged")
    le.add_argument("--adapters", default="rhf_core/assets/adapters/lee-shapes,rhf_core/assets/adapters/lee-shapes-beta0")
    le.add_argument("--n-prompts", type=int, default=12, help="prompts per split (trained, held-out seen, unseen)")
    le.add_argument("--n", type=int, default=16)
    le.add_argument("--k", type=int, default=4)
    le.add_argument("--reward", default="lee")
    le.add_argument("--generator", default="", help="the generator the adapters were trained on (default: embedded)")
    le.add_argument("--seed", type=int, default=11)
    le.add_argument("--json", default="")
    le.set_defaults(func=_eval_lee)

    rp = sub.add_parser("eval-repair", help="how often inpainting repair lowers the judge's implausibility")
    rp.add_argument("--n", type=int, default=40, help="images per set")
    rp.add_argument("--seed", type=int, default=7)
    rp.add_argument("--threshold", type=float, default=0.5)
    rp.add_argument("--mode", default="relative", choices=["relative", "absolute"])
    rp.add_argument("--dilation", type=int, default=3)
    rp.add_argument("--candidates", type=int, default=4)
    rp.add_argument("--strength", type=float, default=1.0, help="inpainting strength (1 = repaint from noise)")
    rp.add_argument("--json", default="")
    rp.set_defaults(func=_eval_repair)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except RHFError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
