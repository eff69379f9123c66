"""The command line's settings have one source: flags are generated from the settings dataclasses
(rhf_core/cli_args.py), `--config FILE.toml` reads the same keys, and configs/*.toml rebuild the
settings the shipped checkpoints record."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import re
import subprocess
import sys
import typing
from dataclasses import asdict
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from rhf_core.__main__ import build_parser, main
from rhf_core.cli_args import CHOICES, HELP, CommandLine, Settings, markdown_reference, settings_fields, shown

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "rhf_core" / "assets"
CONFIGS = sorted((ROOT / "configs").glob("*.toml"))
PARSER = build_parser()
WITH_SETTINGS = [name for name, p in PARSER.commands.items() if p.settings is not None]


def parse(*argv: str):
    return build_parser().parse_args(list(argv))


def parse_error(capsys, *argv: str) -> str:
    """argparse's message for a refused command line (it exits 2)."""
    with pytest.raises(SystemExit) as exc:
        parse(*argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


def flat(d: dict, prefix: str = "") -> dict:
    """{dotted key: value} of nested settings; sequences as tuples (TOML and JSON give lists)."""
    out = {}
    for key, value in d.items():
        if isinstance(value, dict) and value:
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = tuple(value) if isinstance(value, list) else value
    return out


# --- defaults come from the settings source, for every command ----------------------------------------------------

def test_the_commands_with_settings():
    assert set(WITH_SETTINGS) == {"train-rahf", "eval-rahf", "eval-judge", "train-t2i", "eval-t2i", "train-clip",
                                  "train-reward", "finetune", "eval-lee", "eval-repair", "study-guidance"}


@pytest.mark.parametrize("command", WITH_SETTINGS)
def test_default_settings_are_the_sources_defaults(command):
    spec = PARSER.commands[command].settings
    defaults = asdict(parse(command).settings)
    source = getattr(importlib.import_module(spec.source.split(":")[0]), spec.source.split(":")[1])
    if dataclasses.is_dataclass(source):
        assert defaults == asdict(source())
    else:  # a function's settings: its own defaults (the CLI's only for a parameter that has none)
        parameters = inspect.signature(source).parameters
        assert defaults == {k: spec.defaults.get(k, parameters[k].default) for k in defaults}
        assert set(defaults) == {k for k in parameters if k in typing.get_type_hints(source)} - set(spec.exclude)


@pytest.mark.parametrize("command", WITH_SETTINGS)
def test_every_flag_shows_its_default_and_has_help(command):
    sub = build_parser().commands[command]
    fields = sub.settings_fields()
    defaults = flat(asdict(sub.settings.settings_class()()))
    missing = [f"{f.owner}.{f.path[-1]}" for f in fields if not f.help]
    assert not missing, f"add these to HELP in rhf_core/cli_args.py: {missing}"
    for f in fields:
        assert f.default == defaults[f.key] or tuple(f.default) == defaults[f.key]
    shown_by_help = {a.setting.key: a.help for a in sub.flags if hasattr(a, "setting")}
    assert set(shown_by_help) == {f.key for f in fields}
    for f in fields:  # --help shows each one's default
        assert shown_by_help[f.key].endswith(f"(default: {shown(f.default)})")
    assert "--config FILE.toml" in sub.format_help()


def test_the_drifted_defaults_are_the_dataclasses_now():
    # Before, the CLI declared its own defaults and they had drifted from the dataclasses'.
    from rhf_core.rahf.train import TrainConfig
    from rhf_core.reward.train import RewardTrainConfig
    from rhf_core.t2i.build import TinyT2IConfig

    rahf = parse("train-rahf").settings
    assert (rahf.epochs, rahf.data) == (TrainConfig.epochs, TrainConfig.data)
    assert parse("train-t2i").settings.model.unet_channels == TinyT2IConfig.unet_channels
    assert parse("train-reward").settings.out == RewardTrainConfig.out
    assert parse("eval-judge").settings.n == inspect.signature(
        __import__("rhf_core.judge", fromlist=["_"]).evaluate_judge).parameters["n"].default


def test_help_has_no_stale_entries():
    # Every "Class.field" help names a setting some command has (a renamed field must not leave its help behind).
    owners = {f"{f.owner}.{f.path[-1]}" for name in WITH_SETTINGS for f in PARSER.commands[name].settings_fields()}
    stale = [key for key in {**HELP, **CHOICES} if "." in key and key not in owners]
    assert not stale


def test_objective_choices_are_the_libraries():
    from rhf_core.align import OBJECTIVES

    assert CHOICES["FinetuneConfig.objective"] == OBJECTIVES


# --- the older flag names, bools, optionals, sequences, choices -----------------------------------------------------

def test_the_older_flags_still_set_their_fields():
    cfg = parse("train-rahf", "--dim", "128", "--patch-size", "16", "--vision", "google/vit-base-patch16-384",
                "--no-augment", "--heatmap-skip").settings
    assert (cfg.model.vision.dim, cfg.model.text.dim, cfg.model.fusion_dim) == (128, 128, 128)
    assert cfg.model.vision.patch_size == 16 and cfg.augment is False and cfg.model.heatmap_skip is True
    assert (cfg.model.vision.kind, cfg.model.vision.name_or_path) == ("hf", "google/vit-base-patch16-384")
    assert cfg.model.text.kind == "scratch"
    t2i = parse("train-t2i", "--batch-size", "8", "--lr", "1e-3", "--ema", "0.99").settings
    assert (t2i.unet_batch, t2i.unet_lr, t2i.ema_decay) == (8, 1e-3, 0.99)
    assert parse("eval-repair", "--mode", "absolute").settings.threshold_mode == "absolute"
    lee = parse("eval-lee", "--reward", "judge", "--json", "cache/x.json", "--n-prompts", "60").settings
    assert (lee.reward, lee.json, lee.n_prompts) == ("judge", "cache/x.json", 60)


def test_a_field_flag_beats_an_alias_that_sets_it_too():
    cfg = parse("train-rahf", "--dim", "64", "--vision-dim", "32").settings
    assert (cfg.model.vision.dim, cfg.model.text.dim, cfg.model.fusion_dim) == (32, 64, 64)


def test_bool_optional_and_sequence_flags():
    f = parse("finetune", "--no-guided-objective", "--lora-convs", "--save-every", "5").settings
    assert (f.guided_objective, f.lora_convs, f.save_every) == (False, True, 5)
    assert parse("finetune", "--guided-objective").settings.guided_objective is True
    t2i = parse("train-t2i", "--unet-channels", "8,16", "--vae-channels", " 4, 8 ,", "--state-dir", "",
                "--init-from", "cache/x").settings
    assert t2i.model.unet_channels == (8, 16) and t2i.model.vae_channels == (4, 8)
    assert t2i.state_dir is None and t2i.init_from == "cache/x"  # '' is None for an optional field


@pytest.mark.parametrize("argv, message", [
    (["train-rahf", "--epochs", "many"], "argument --epochs: 'many' is not a whole number"),
    (["train-rahf", "--lr", "fast"], "argument --lr: 'fast' is not a number"),
    (["train-rahf", "--variant", "both"], "'both' is not one of: multihead, augmented"),
    (["train-t2i", "--unet-channels", "8,x"], "'x' is not a whole number"),
    (["finetune", "--objective", "ppo"], "'ppo' is not one of: rwr, dpo, draft"),
    (["finetune", "--epochs", "3"], "unrecognized arguments: --epochs 3"),
])
def test_bad_values_are_refused_naming_what_is_valid(capsys, argv, message):
    assert message in parse_error(capsys, *argv)


# --- --config FILE.toml -------------------------------------------------------------------------------------------------

def test_config_file_then_flags(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('epochs = 5\nlr = 1\naugment = false\n[model]\nfusion_dim = 32\n[model.vision]\ndim = 16\n')
    cfg = parse("train-rahf", "--config", str(path)).settings
    assert (cfg.epochs, cfg.lr, cfg.augment, cfg.model.fusion_dim, cfg.model.vision.dim) == (5, 1.0, False, 32, 16)
    assert isinstance(cfg.lr, float)  # TOML's integer 1 is the float setting 1.0
    over = parse("train-rahf", "--epochs", "7", "--config", str(path), "--dim", "48", "--augment").settings
    assert (over.epochs, over.model.fusion_dim, over.model.vision.dim, over.augment) == (7, 48, 48, True)
    assert over.lr == 1.0 and over.model.text.dim == 48


@pytest.mark.parametrize("text, message", [
    ("epoch = 3\n", "unknown key epoch; the valid keys are: data, train_split"),
    ("[model]\nvision_dim = 3\n", "unknown key model.vision_dim"),
    ("[model.heatmap_scale]\nimplausibility = 2.0\n", "unknown key model.heatmap_scale"),  # written by calibration
    ("[model.vision]\ndim = 3\ncolour = 1\n", "model.vision.colour"),
    ('epochs = "many"\n', "epochs must be a whole number, got 'many'"),
    ("epochs = 2.5\n", "epochs must be a whole number"),
    ("augment = 1\n", "augment must be true or false"),
    ('[model]\nvariant = "both"\n', "model.variant: 'both' is not one of: multihead, augmented"),
    ("epochs = \n", "not valid TOML"),
])
def test_a_bad_config_file_is_refused_with_a_message(tmp_path, capsys, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    assert message in parse_error(capsys, "train-rahf", "--config", str(path))


def test_a_preset_then_config_then_flags(tmp_path, capsys):
    """`finetune --preset richhf-plausibility` is the RichHF recipe; a config file and flags override it."""
    from rhf_core.align import FinetuneConfig
    from rhf_core.align.config import PRESETS

    cfg = parse("finetune", "--preset", "richhf-plausibility").settings
    assert (cfg.reward, cfg.objective, cfg.reward_threshold, cfg.beta, cfg.name) == (
        "rahf-plausibility", "rwr", 0.7, 1.0, "richhf-plausibility")
    assert cfg == FinetuneConfig.preset("richhf-plausibility")
    assert cfg.steps == FinetuneConfig().steps  # what the preset does not name keeps its default
    path = tmp_path / "run.toml"
    path.write_text("reward_threshold = 0.8\nsteps = 50\n")
    over = parse("finetune", "--preset", "richhf-plausibility", "--config", str(path), "--steps", "7").settings
    assert (over.reward_threshold, over.steps, over.reward) == (0.8, 7, "rahf-plausibility")
    assert "invalid choice: 'richhf'" in parse_error(capsys, "finetune", "--preset", "richhf")
    with pytest.raises(ValueError, match="the presets are \\['richhf-plausibility'\\]"):
        FinetuneConfig.preset("richhf")
    fields = {f.name for f in dataclasses.fields(FinetuneConfig)}
    assert all(set(values) <= fields for values in PRESETS.values())


def test_a_missing_config_file_is_refused(tmp_path, capsys):
    assert "no such file" in parse_error(capsys, "finetune", "--config", str(tmp_path / "nope.toml"))


def test_sequences_in_a_config_file(tmp_path):
    path = tmp_path / "t2i.toml"
    path.write_text("[model]\nunet_channels = [8, 16]\n")
    assert parse("train-t2i", "--config", str(path)).settings.model.unet_channels == (8, 16)
    path.write_text("[model]\nunet_channels = 8\n")
    with pytest.raises(SystemExit):
        parse("train-t2i", "--config", str(path))


# --- configs/: the shipped runs --------------------------------------------------------------------------------------

def _json(path: str) -> dict:
    return json.loads((ASSETS / path).read_text())


def _t2i_runs() -> list[dict]:
    """The settings of the generator's earlier runs, in order, as its train_log.json records them."""
    runs = []
    for entry in _json("t2i-shapes/train_log.json")["log"]:
        if entry.get("run") and entry["run"] not in runs:
            runs.append(entry["run"])
    return runs


def _reward_settings() -> dict:
    recorded = dict(_json("reward-shapes/metrics.json")["settings"])
    for resolved in ("generator", "encoders", "images", "seconds"):  # what the run found, not what it was given
        recorded.pop(resolved)
    return recorded


def _clip_settings() -> dict:
    log = _json("clip-shapes/train_log.json")
    return {"n": log["pairs"], "steps": log["steps"], "batch_size": log["batch_size"]}


RECORDED = {
    "rahf-shapes": lambda: _json("rahf-shapes/train_log.json")["config"],
    "t2i-shapes-base": lambda: _t2i_runs()[0],
    "t2i-shapes-stage2": lambda: _t2i_runs()[1],
    "t2i-shapes": lambda: _json("t2i-shapes/train_log.json")["config"],
    "clip-shapes": _clip_settings,
    "reward-shapes": _reward_settings,
    **{name: (lambda name=name: _json(f"adapters/{name}/adapter.json")["config"])
       for name in ("lee-shapes", "lee-shapes-beta0", "draft-shapes", "draft-shapes-beta0")},
}
# Where a run wrote and read: the shipped runs' own paths; the configs write under cache/ and chain there.
LOCATIONS = {"out", "state_dir", "init_from"}


def config_command(path: Path) -> list[str]:
    """The command in a config file's first line: `# rhf COMMAND --config configs/NAME.toml …`."""
    first = path.read_text(encoding="utf-8").splitlines()[0]
    m = re.fullmatch(r"# rhf (\S+) --config (\S+)(.*)", first)
    assert m and m.group(2) == f"configs/{path.name}", f"{path.name}: first line {first!r}"
    return [m.group(1), "--config", str(path), *m.group(3).split()]


def test_every_shipped_checkpoint_has_a_config():
    assert set(RECORDED) <= {p.stem for p in CONFIGS}
    assert {p.name for p in (ASSETS / "adapters").iterdir()} <= {p.stem for p in CONFIGS}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_parses_and_writes_under_cache(path):
    args = parse(*config_command(path))
    out = args.settings.out or f"cache/adapters/{args.settings.name}"
    assert out.startswith("cache/"), f"{path.name} would write into {out}"


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_config_rebuilds_the_recorded_settings(name):
    parsed = flat(asdict(parse(*config_command(ROOT / "configs" / f"{name}.toml")).settings))
    recorded = flat(RECORDED[name]())
    assert len(recorded) >= 3
    differ = {k: (parsed.get(k, "<no such setting>"), v) for k, v in recorded.items()
              if k not in LOCATIONS and parsed.get(k, "<no such setting>") != v}
    assert not differ, f"configs/{name}.toml (parsed, recorded): {differ}"


def test_the_generator_configs_chain_and_keep_the_shipped_sizes():
    stages = [parse(*config_command(ROOT / "configs" / f"{n}.toml")).settings
              for n in ("t2i-shapes-base", "t2i-shapes-stage2", "t2i-shapes")]
    assert stages[1].init_from == stages[0].out and stages[2].init_from == stages[1].out
    shipped = _json("t2i-shapes/train_log.json")["config"]["model"]
    unet = json.loads((ASSETS / "t2i-shapes" / "unet" / "config.json").read_text())
    assert list(unet["block_out_channels"]) == shipped["unet_channels"]
    assert all(asdict(s.model) == asdict(stages[2].model) for s in stages)


# --- the generator itself, on random settings classes ---------------------------------------------------------------

SCALARS = {int: st.integers(-2**40, 2**40), float: st.floats(allow_nan=False, allow_infinity=False, width=64),
           bool: st.booleans(),
           str: st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=12)}


@st.composite
def settings_classes(draw):
    """A random settings dataclass of the types the generator supports, its fields either flat or in a
    nested dataclass (named `model`: no flag prefix; or `inner`: --inner-…), and two sets of values
    keyed by TOML key."""
    n = draw(st.integers(1, 6))
    fields, values, others = [], {}, {}
    for i in range(n):
        kind = draw(st.sampled_from([int, float, bool, str, "tuple", "optional"]))
        name = f"f{i}_{draw(st.sampled_from(['a', 'b_c']))}"
        if kind == "tuple":
            hint, strategy = tuple[int, ...], st.lists(SCALARS[int], max_size=4).map(tuple)
        elif kind == "optional":
            hint, strategy = str | None, st.none() | SCALARS[str].filter(bool)  # '' is how None is typed
        else:
            hint, strategy = kind, SCALARS[kind]
        fields.append((name, hint, dataclasses.field(default=draw(strategy))))
        values[name], others[name] = draw(strategy), draw(strategy)
    cls = dataclasses.make_dataclass("Drawn", fields)
    nest = draw(st.sampled_from([None, "model", "inner"]))
    if nest:
        cls = dataclasses.make_dataclass("Outer", [("top", int, dataclasses.field(default=0)),
                                                   (nest, cls, dataclasses.field(default_factory=cls))])
        values = {"top": draw(SCALARS[int]), **{f"{nest}.{k}": v for k, v in values.items()}}
        others = {"top": draw(SCALARS[int]), **{f"{nest}.{k}": v for k, v in others.items()}}
    return cls, values, others


def argv_of(cls, values: dict) -> list[str]:
    """Flags setting `values` (`--flag=text`, so that a text starting with '-' is not read as a flag)."""
    argv = []
    for f in settings_fields(cls):
        if f.key not in values:
            continue
        value = values[f.key]
        if f.kind is bool:
            argv.append(f.flag if value else "--no-" + f.flag[2:])
        else:
            argv.append(f"{f.flag}={'' if value is None else shown(value) if f.sequence else value}")
    return argv


def toml_of(values: dict) -> str:
    """A TOML file of {TOML key: value}: top-level keys, then one table per nested dataclass."""
    tables: dict[str, list[str]] = {}
    for key, value in values.items():
        table, _, name = key.rpartition(".")
        if isinstance(value, tuple):
            text = f"[{', '.join(map(str, value))}]"
        elif isinstance(value, bool):
            text = str(value).lower()
        elif value is None:
            continue  # TOML has no null: the default stays
        else:
            text = json.dumps(value, ensure_ascii=False)
        tables.setdefault(table, []).append(f"{name} = {text}")
    top = tables.pop("", [])
    return "\n".join(top + [line for t, lines in tables.items() for line in [f"[{t}]", *lines]]) + "\n"


def command_line(cls) -> CommandLine:
    ap = CommandLine(prog="t")
    ap.command("run", "a drawn command", Settings(cls))
    return ap


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(settings_classes())
def test_generated_flags_round_trip_any_values(drawn):
    cls, values, _ = drawn
    ap = command_line(cls)
    assert ap.parse_args(["run"]).settings == cls()  # defaults untouched
    assert flat(asdict(ap.parse_args(["run", *argv_of(cls, values)]).settings)) == values
    flags = [f.flag for f in settings_fields(cls)]
    assert ("--inner-" in " ".join(flags)) == any(k.startswith("inner.") for k in values)


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(settings_classes(), st.data())
def test_flags_override_the_config_file_field_by_field(tmp_path_factory, drawn, data):
    cls, in_file, in_flags = drawn
    path = tmp_path_factory.mktemp("cfg") / "drawn.toml"
    path.write_text(toml_of(in_file), encoding="utf-8")
    defaults = flat(asdict(cls()))
    from_file = flat(asdict(command_line(cls).parse_args(["run", "--config", str(path)]).settings))
    assert from_file == {k: defaults[k] if v is None else v for k, v in in_file.items()}
    given_flags = data.draw(st.sets(st.sampled_from(sorted(in_file))), label="flags given")
    argv = argv_of(cls, {k: in_flags[k] for k in given_flags})
    got = flat(asdict(command_line(cls).parse_args(["run", "--config", str(path), *argv]).settings))
    assert got == {k: in_flags[k] if k in given_flags else from_file[k] for k in in_file}


# --- the shell, the reference page, a real run ---------------------------------------------------------------------

def test_top_level_help_does_not_import_torch():
    # The settings classes sit in modules that import torch (seconds); `rhf --help` must not pay that.
    code = "import sys; from rhf_core.__main__ import build_parser; build_parser().format_help(); " \
           "build_parser().commands['sample-grid'].format_help(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_cli_reference_page_is_up_to_date():
    page = ROOT / "docs" / "reference" / "cli.md"
    assert page.read_text(encoding="utf-8") == markdown_reference(build_parser()), \
        "regenerate: python -m rhf_core.cli_args --markdown > docs/reference/cli.md"


def test_a_command_runs_with_its_settings(tmp_path, capsys):
    out = tmp_path / "judge.json"
    assert main(["eval-judge", "--n", "3", "--seed", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["renders"]["records"] == 3 and result["degraded"]["degraded"] is True
    assert result["renders"]["seed"] == 1


def test_a_command_a_module_registers_is_wired_in():
    # convert-port's flags live in rhf_core/rahf/port_cli.py and are added when the command is first used
    args = parse("convert-port", "model.pt", "--vit", "cache/vit", "--t5", "cache/t5")
    assert args.func.__name__ == "run_convert_port" and (args.checkpoint, args.vit) == ("model.pt", "cache/vit")
    assert args.out.startswith("cache/")
