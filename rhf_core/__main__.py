"""Command line: `rhf <command> …` or `python -m rhf_core <command> …` (see `--help` of each command).

A command with a settings dataclass gets its flags from it (rhf_core/cli_args.py): the defaults are the
dataclass's, `--config FILE.toml` reads settings from a file (configs/ holds the shipped runs'), and the
command reads `args.settings`. Adding a command is `build_parser`'s few lines: `ap.command(name, help,
Settings("module:ConfigClass"))`, any flags that are not settings, and `set_defaults(func=…)`."""

from __future__ import annotations

import json
import os
import signal
import sys
from dataclasses import asdict
from pathlib import Path

from rhf_core.cli_args import Alias, CommandLine, Settings
from rhf_core.errors import RHFError


def _train_rahf(args) -> None:
    from rhf_core.rahf.train import train_rahf

    train_rahf(args.settings, resume=not args.no_resume)
    if os.environ.get("RANK", "0") == "0":  # under accelerate launch / torchrun, the main process says it once
        print(f"saved the best epoch to {args.settings.out}")


def _calibrate_rahf(args) -> None:
    from rhf_core.data import open_dataset, spec_split
    from rhf_core.rahf.calibrate import calibrate_checkpoint

    scales = calibrate_checkpoint(args.checkpoint, open_dataset(args.data, split=args.split or spec_split(args.data, "dev")), args.max_records)
    print(f"heatmap scales written to {args.checkpoint}/config.json: {scales}")


def _eval_rahf(args) -> None:
    from rhf_core.rahf.evaluate import evaluate_rahf, format_tables

    result = evaluate_rahf(**asdict(args.settings))
    print(format_tables(result))
    _write_json(args.json, result)


def _eval_judge(args) -> None:
    from rhf_core.judge import evaluate_judge

    n, seed = args.settings.n, args.settings.seed
    result = {"renders": evaluate_judge(n, seed), "degraded": evaluate_judge(n, seed, degraded=True)}
    print(json.dumps(result, indent=2))
    _write_json(args.json, result)


def _train_t2i(args) -> None:
    from rhf_core.t2i.train import train_t2i

    cfg = args.settings
    train_t2i(cfg, resume=not args.no_resume)
    print(f"saved the pipeline to {cfg.out}")
    if args.eval:
        from rhf_core.t2i.evaluate import evaluate_generator, format_table

        result = evaluate_generator(cfg.out, **({} if args.per_prompt is None else {"per_prompt": args.per_prompt}))
        print(format_table(result))
        _write_json(str(Path(cfg.out) / "metrics.json"), result)


def _eval_t2i(args) -> None:
    from rhf_core.t2i.evaluate import evaluate_generator, format_table

    result = evaluate_generator(args.checkpoint or None, **asdict(args.settings))
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

    result = train_tiny_clip(**asdict(args.settings))
    _write_json(str(Path(args.settings.out) / "train_log.json"), result)


def _train_reward(args) -> None:
    from rhf_core.reward.train import format_metrics, train_reward

    _, metrics = train_reward(args.settings)
    print(format_metrics(metrics))
    print(f"saved the reward model and metrics.json to {args.settings.out}")


def _finetune(args) -> None:
    from tqdm.auto import tqdm

    from rhf_core.align import finetune, saved_steps

    cfg = args.settings
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
    from rhf_core.reward.experiment import format_experiment, run_lee_eval

    print(format_experiment(run_lee_eval(args.settings)))  # (the JSON is written before this prints)


def _study_guidance(args) -> None:
    from rhf_core.reward.guidance_study import format_study, run_guidance_study

    print(format_study(run_guidance_study(args.settings)))  # (the JSON is written before this prints)


def _eval_repair(args) -> None:
    from rhf_core.repair import evaluate_repair

    result = evaluate_repair(**asdict(args.settings))
    print(json.dumps(result, indent=2))
    _write_json(args.json, result)


# Older flags of train-rahf and train-t2i, kept so that existing commands still run.
RAHF_ALIASES = (
    Alias("--patch-size", ("model.vision.patch_size",), "the scratch ViT's patch size (= --vision-patch-size)"),
    Alias("--dim", ("model.vision.dim", "model.text.dim", "model.fusion_dim"),
          "one width for the scratch vision and text encoders and the fusion transformer"),
    Alias("--vision", ("model.vision.name_or_path",), "HF vision tower (hub id or local path) instead of the scratch ViT",
          also=(("model.vision.kind", "hf"),)),
    Alias("--text", ("model.text.name_or_path",), "HF text encoder (hub id or local path) instead of the scratch one",
          also=(("model.text.kind", "hf"),)),
)
T2I_ALIASES = (
    Alias("--batch-size", ("unet_batch",), "= --unet-batch"),
    Alias("--lr", ("unet_lr",), "= --unet-lr"),
    Alias("--ema", ("ema_decay",), "= --ema-decay"),
)


def _convert_port_flags(parser) -> None:
    """convert-port's flags and handler, from rhf_core/rahf/port_cli.py (imported only when the command
    is used: rhf_core.rahf loads torch)."""
    from rhf_core.rahf.port_cli import add_convert_port_command

    class ThisParser:  # port_cli adds its command to a subparsers object: hand it the one already registered
        def add_parser(self, name, **kwargs):
            return parser

    add_convert_port_command(ThisParser())


def _json_flag(parser) -> None:
    parser.add_argument("--json", default="", help="write the results here")


def _no_resume_flag(parser, what: str) -> None:
    parser.add_argument("--no-resume", action="store_true", help=f"discard the saved state of {what} and start over")


def build_parser() -> CommandLine:
    """Every command and flag (the docs' commands are checked against this parser in tests)."""
    ap = CommandLine(prog="python -m rhf_core", description="Rich Human Feedback Studio commands")

    t = ap.command("train-rahf", "train a RAHF predictor on a dataset spec",
                   Settings("rhf_core.rahf.train:TrainConfig", aliases=RAHF_ALIASES))
    _no_resume_flag(t, "this --out")
    t.set_defaults(func=_train_rahf)

    cal = ap.command("calibrate-rahf", "fit a checkpoint's heatmap calibration on held-out labels "
                     "(train-rahf does this on its dev split when it finishes)")
    cal.add_argument("checkpoint", help="checkpoint folder")
    cal.add_argument("--data", required=True, help="dataset spec with heatmap labels")
    cal.add_argument("--split", default="", help="split the calibration is fitted on (default: the spec's split=, else dev)")
    cal.add_argument("--max-records", type=int, default=0, help="cap on records used (0 = all)")
    cal.set_defaults(func=_calibrate_rahf)

    e = ap.command("eval-rahf", "the paper's tables for a checkpoint and baselines trained in the same run",
                   Settings("rhf_core.rahf.evaluate:evaluate_rahf"))
    _json_flag(e)
    e.set_defaults(func=_eval_rahf)

    j = ap.command("eval-judge", "the ShapesWorld judge's accuracy per verdict, on renders and degraded renders",
                   Settings("rhf_core.judge:evaluate_judge", exclude=("degraded",)))
    _json_flag(j)
    j.set_defaults(func=_eval_judge)

    g = ap.command("train-t2i", "train the embedded text-to-image pipeline on clean ShapesWorld renders",
                   Settings("rhf_core.t2i.train:T2ITrainConfig", aliases=T2I_ALIASES))
    _no_resume_flag(g, "this --out")
    g.add_argument("--eval", action="store_true", help="then write metrics.json beside the pipeline (as eval-t2i)")
    g.add_argument("--per-prompt", type=int, default=None, help="with --eval: images per evaluation prompt "
                                                                "(default: eval-t2i's)")
    g.set_defaults(func=_train_t2i)

    v = ap.command("eval-t2i", "judge alignment rate per prompt category, seen and unseen, of a generator",
                   Settings("rhf_core.t2i.evaluate:evaluate_generator"))
    v.add_argument("--checkpoint", default="", help="pipeline folder or hub id (default: the embedded one)")
    _json_flag(v)
    v.set_defaults(func=_eval_t2i)

    sg = ap.command("sample-grid", "a PNG grid of generator samples with the judge's verdicts")
    sg.add_argument("--generator", default="", help="pipeline folder or hub id (default: the embedded one)")
    sg.add_argument("--adapter", default="", help="LoRA adapter folder to load first")
    sg.add_argument("--prompts", default="", help="prompts separated by ';' (default: a few of each category)")
    sg.add_argument("--n", type=int, default=6, help="samples per prompt")
    sg.add_argument("--seed", type=int, default=0, help="random seed")
    sg.add_argument("--out", default="cache/t2i-grid.png", help="PNG file written")
    sg.set_defaults(func=_sample_grid)

    c = ap.command("train-clip", "train the small ShapesWorld CLIP (reward encoders) contrastively",
                   Settings("rhf_core.reward.encoders:train_tiny_clip", defaults={"out": "cache/clip-shapes"},
                            exclude=("cfg",)))
    c.set_defaults(func=_train_clip)

    r = ap.command("train-reward", "Lee et al.'s reward model on judge-labelled generations, with baselines",
                   Settings("rhf_core.reward.train:RewardTrainConfig"))
    r.set_defaults(func=_train_reward)

    f = ap.command("finetune", "LoRA fine-tuning of a generator on a reward (reward-weighted likelihood, "
                   "Diffusion-DPO or DRaFT)", Settings("rhf_core.align:FinetuneConfig", presets="rhf_core.align.config:PRESETS"))
    _no_resume_flag(f, "--name (a run resumes it only with the settings it was trained with)")
    f.set_defaults(func=_finetune)

    le = ap.command("eval-lee", "rejection sampling vs fine-tuning: selection and held-out rewards (judged on ShapesWorld)",
                    Settings("rhf_core.reward.experiment:LeeEvalConfig"))
    le.set_defaults(func=_eval_lee)

    sg = ap.command("study-guidance", "does RAHF-guided sampling help, by the judge? scales tuned on a separate set, "
                    "then paired-bootstrap changes on held-out prompts", Settings("rhf_core.reward.guidance_study:GuidanceStudyConfig"))
    sg.set_defaults(func=_study_guidance)

    ap.command("convert-port", "convert the RichHF port's published weights (model.pt) into a checkpoint folder "
               "that load_rahf and the sidebar read offline", setup=_convert_port_flags)

    rp = ap.command("eval-repair", "how often inpainting repair lowers the judge's implausibility",
                    Settings("rhf_core.repair:evaluate_repair", aliases=(Alias("--mode", ("threshold_mode",),
                                                                               "= --threshold-mode"),)))
    _json_flag(rp)
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
