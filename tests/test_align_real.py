"""The Lee et al. workflow off ShapesWorld, with real formats and tiny real models built here: a Stable
Diffusion 2-style (v-prediction) pipeline folder that is not a ShapesWorld generator, a tiny CLIP, a tiny
RAHF checkpoint, and rated datasets in the folder and RichHF-18K formats.

    train-reward --data  →  lee:DIR  →  finetune --reward lee:DIR / rahf-plausibility:DIR  →  eval-lee --prompts FILE
"""

import io
import json
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import load_file

from rhf_core.data import export, open_dataset
from rhf_core.rahf import new_rahf
from rhf_core.reward.encoders import build_tiny_clip
from rhf_core.reward.experiment import LeeEvalConfig, format_experiment, lee_experiment, run_lee_eval
from rhf_core.align import FinetuneConfig, finetune
from rhf_core.reward.model import RewardConfig, RewardError, RewardModel
from rhf_core.reward.rewards import REWARD_NAMES, Reward, get_reward, held_out_specs, parse_reward_spec
from rhf_core.reward.train import RewardTrainConfig, format_metrics, train_reward
from rhf_core.sources.tfrecord import write_tfrecord
from rhf_core.t2i import GeneratorError, load_generator
from rhf_core.t2i.build import build_pipeline, write_sdxl_index
from tests.builders import richhf_example
from tests.test_rahf import tiny as tiny_rahf
from tests.test_reward import TINY_CLIP
from tests.test_t2i import TINY

SD2 = replace(TINY, prediction_type="v_prediction", sd2_layout=True)
PROMPTS = ["a photo of two brown bears in the forest", "a red car parked on a street"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("real")


@pytest.fixture(scope="module")
def sd(root):
    """A tiny SD 2.x-style folder: v-prediction, linear attention projections; not ShapesWorld."""
    path = root / "tiny-sd2"
    build_pipeline(SD2, seed=1).save_pretrained(path)
    return load_generator(path)


@pytest.fixture(scope="module")
def clip_dir(root):
    path = root / "tiny-clip"
    build_tiny_clip(TINY_CLIP).save(path)
    return path


@pytest.fixture(scope="module")
def rahf_dir(root):
    path = root / "tiny-rahf"
    new_rahf(tiny_rahf(), seed=5).save(path)
    return path


@pytest.fixture(scope="module")
def rated(root):
    """A folder-format dataset of 60 ShapesWorld records (their alignment scores are simulated raters')."""
    path = root / "rated"
    export(open_dataset("shapes:n=60,seed=1"), path)
    return path


@pytest.fixture(scope="module")
def reward_dir(root, rated, clip_dir):
    cfg = RewardTrainConfig(out=str(root / "reward"), data=f"folder:{rated}", steps=200, batch_size=16, lr=3e-3,
                            model=RewardConfig(encoders=str(clip_dir), hidden=16, n_perturbed=3))
    train_reward(cfg, progress=lambda msg: None)
    return root / "reward"


@pytest.fixture(scope="module")
def prompt_file(root):
    path = root / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n\n")
    return path


def test_train_reward_learns_from_a_rated_folder(reward_dir, rated):
    m = json.loads((reward_dir / "metrics.json").read_text())
    frame = open_dataset(f"folder:{rated}").frame
    held = int((frame["split"] != "train").sum())
    assert m["settings"]["images"] == {"train": 60 - held, "heldout": held}
    assert m["settings"]["labels"] == "alignment >= 0.5" and m["settings"]["heldout_by"] == "the data's dev/test split"
    good = (frame["alignment"] >= 0.5).to_numpy()
    assert m["reward"]["heldout"]["good_share"] == pytest.approx(good[frame["split"] != "train"].mean(), abs=1e-3)
    for name in ("reward", "reward_lambda0", "clip_score"):  # the baseline measured in the same run
        for split in ("train", "heldout"):
            assert 0 <= m[name][split]["accuracy"] <= 1 and 0 <= m[name][split]["auc"] <= 1
    assert m["reward"]["train"]["auc"] >= 0.8  # it fits the labels it was trained on
    assert "heldout" in format_metrics(m) and "seen" not in format_metrics(m)
    # The folder is a reward by spec, scoring in (0, 1), differentiable.
    r = get_reward(f"lee:{reward_dir}")
    assert isinstance(r, RewardModel) and r.differentiable and r.name == "lee:reward"
    scores = r([Image.new("RGB", (32, 32), c) for c in ("red", "blue")], PROMPTS)
    assert scores.shape == (2,) and ((scores > 0) & (scores < 1)).all()


def _jpeg(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24, 24), color).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def test_train_reward_reads_richhf_format_with_pickapic(tmp_path, clip_dir):
    """RichHF-18K TFRecords + a Pick-a-Pic parquet: `misalignment_score` is the alignment score; the
    data's dev split is held out; a record whose image Pick-a-Pic lacks is skipped with a reason."""
    tf, pick = tmp_path / "tf", tmp_path / "pick"
    tf.mkdir()
    pick.mkdir()
    uids = [f"u{i:02d}" for i in range(12)]
    align = [0.9, 0.2, 0.8, 0.1, 0.7, 0.3, 1.0, 0.0, 0.75, 0.25, 0.6, 0.4]
    examples = [richhf_example(f"{u}.jpg", scores=(0.5, 0.5, a, 0.5), labels="1 1 1") for u, a in zip(uids, align)]
    examples.append(richhf_example("missing.jpg", scores=(0.5, 0.5, 0.9, 0.5), labels="1 1 1"))
    write_tfrecord(tf / "train.tfrecord", examples[:8] + examples[12:])
    write_tfrecord(tf / "dev.tfrecord", examples[8:12])
    captions = ["a red fox", "two blue boats", "a green tree", "three dogs", "a yellow cab", "an old clock"]
    pq.write_table(pa.table({
        "caption": captions, "image_0_uid": uids[0::2], "image_1_uid": uids[1::2],
        "jpg_0": pa.array([_jpeg((200, 40 * i, 40)) for i in range(6)], pa.binary()),
        "jpg_1": pa.array([_jpeg((40, 40 * i, 200)) for i in range(6)], pa.binary()),
        "best_image_uid": uids[0::2]}), pick / "train-00000.parquet")
    cfg = RewardTrainConfig(out=str(tmp_path / "rm"), data=f"richhf18k:{tf}", pickapic=str(pick), steps=20,
                            batch_size=8, model=RewardConfig(encoders=str(clip_dir), hidden=16, n_perturbed=2))
    _, m = train_reward(cfg, progress=lambda msg: None)
    assert m["settings"]["images"] == {"train": 8, "heldout": 4}
    assert m["settings"]["skipped"] == {"no image": 1}
    assert m["reward"]["heldout"]["good_share"] == 0.5 and m["clip_score"]["heldout"]["n"] == 4


def test_train_reward_refuses_data_it_cannot_learn_from(tmp_path, rated, clip_dir):
    base = RewardTrainConfig(out=str(tmp_path / "rm"), data=f"folder:{rated}", steps=2,
                             model=RewardConfig(encoders=str(clip_dir), hidden=8))
    with pytest.raises(RewardError, match="all .* training images are good at alignment ≥ 0.01"):
        train_reward(replace(base, threshold=0.01), progress=lambda msg: None)
    with pytest.raises(RewardError, match="score must be one of plausibility, alignment"):
        train_reward(replace(base, score="beauty"), progress=lambda msg: None)
    with pytest.raises(RewardError, match=r"threshold must lie in \(0, 1\]"):
        train_reward(replace(base, threshold=3.0), progress=lambda msg: None)
    assert not (tmp_path / "rm").exists()


def test_the_judge_cannot_label_a_real_generator(tmp_path, sd, clip_dir):
    cfg = RewardTrainConfig(out=str(tmp_path / "rm"), model=RewardConfig(encoders=str(clip_dir)))
    with pytest.raises(RewardError, match="not a ShapesWorld generator.*--data"):
        train_reward(cfg, generator=sd, progress=lambda msg: None)
    with pytest.raises(RewardError, match="judge reward knows only ShapesWorld.*lee:DIR"):
        get_reward("judge", generator=sd)


def _lora_b_norm(adapter) -> float:
    saved = load_file(str(adapter / "pytorch_lora_weights.safetensors"))
    b = [v for k, v in saved.items() if "lora_B" in k]
    assert b and all(torch.isfinite(v).all() for v in b)
    return float(sum(v.abs().sum() for v in b))


@pytest.fixture(scope="module")
def lee_adapter(root, sd, reward_dir, prompt_file):
    spec = f"lee:{reward_dir}"
    cfg = FinetuneConfig(name="real-lee", out=str(root / "adapter-lee"), reward=spec, prompts=str(prompt_file),
                         per_prompt=2, beta=0.0, rank=4, steps=3, batch_size=2, lr=5e-2, save_every=3,
                         sample_steps=2)
    return finetune(cfg, generator=sd, reward=get_reward(spec), resume=False)


def test_fine_tune_with_a_trained_reward_folder_moves_the_adapter(lee_adapter, reward_dir, sd):
    info = json.loads((lee_adapter / "adapter.json").read_text())
    assert info["config"]["reward"] == f"lee:{reward_dir}" and info["steps_done"] == 3 and info["complete"]
    assert info["reward_stats"]["n"] == 4 and 0 < info["reward_stats"]["mean"] < 1
    assert _lora_b_norm(lee_adapter) > 1e-3  # LoRA's B starts at 0: trained weights are not
    sd.load_lora(lee_adapter)
    try:
        assert sd.generate(PROMPTS[0], n=1, steps=2)[0][0].size == (32, 32)
    finally:
        sd.unload_lora()


def test_fine_tune_with_a_rahf_checkpoint_reward_moves_the_adapter(root, sd, rahf_dir, prompt_file):
    spec = f"rahf-plausibility:{rahf_dir}"
    reward = get_reward(spec)
    assert isinstance(reward, Reward) and reward.differentiable and reward.name == "rahf-plausibility:tiny-rahf"
    cfg = FinetuneConfig(name="real-rahf", out=str(root / "adapter-rahf"), reward=spec, prompts=str(prompt_file),
                         per_prompt=2, beta=0.0, rank=4, steps=2, batch_size=2, lr=5e-2, sample_steps=2)
    adapter = finetune(cfg, generator=sd, reward=reward, resume=False)
    assert json.loads((adapter / "adapter.json").read_text())["config"]["reward"] == spec
    assert _lora_b_norm(adapter) > 1e-3


def _keys(obj) -> set:
    """Every key anywhere in a JSON tree."""
    if isinstance(obj, dict):
        return set(obj) | set().union(*(_keys(v) for v in obj.values()))
    if isinstance(obj, list):
        return set().union(*(_keys(v) for v in obj)) if obj else set()
    return set()


def test_eval_lee_on_a_prompt_file_writes_training_and_held_out_rewards_without_a_judge(
        root, sd, lee_adapter, reward_dir, rahf_dir, prompt_file, clip_dir):
    from rhf_core.reward.encoders import load_encoders

    out = root / "results" / "eval.json"
    held = f"rahf-plausibility:{rahf_dir},rahf-alignment:{rahf_dir}"
    result = run_lee_eval(LeeEvalConfig(adapters=str(lee_adapter), prompts=str(prompt_file), n_prompts=5, n=3, k=1,
                                        held_out=held, json=str(out)), generator=sd, encoders=load_encoders(clip_dir))
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))  # what was returned was written
    s = result["settings"]
    assert s["reward"] == f"lee:{reward_dir}"  # the adapter's training reward, by default
    assert s["held_out"] == held.split(",") and s["judge"] is False and s["prompt_file"] == str(prompt_file)
    arms = result["adapters"]["adapter-lee"]["splits"]["prompts"]
    assert result["adapters"]["adapter-lee"]["trained_with"] == s["reward"]
    for arm, a in arms.items():
        assert 0 < a["mean_reward"] < 1 and set(a["held_out"]) == set(held.split(","))
        assert all(0 <= h["mean"] <= 1 for h in a["held_out"].values())
        assert len(a["per_prompt"]["reward"]) == len(PROMPTS)
    # Rejection sampling on the selection reward never lowers it; its gain carries a bootstrap interval.
    best = arms["original best-k"]
    assert best["mean_reward"] >= arms["original random"]["mean_reward"]
    assert best["reward_gain"]["against"] == "original, all n" and best["reward_gain"]["difference"] >= 0
    assert len(best["held_out"][f"rahf-alignment:{rahf_dir}"]["gain"]["ci95"]) == 2
    judge_keys = {"alignment_rate", "alignment_rate_all_n", "alignment_by_category", "judge_implausible_share",
                  "alignment_gain", "alignment", "implausible"}
    assert not judge_keys & _keys(result)  # no judge, no judge columns
    assert not any("(alignment" in c for c in result["claims"])
    assert any("held-out rahf-plausibility" in c for c in result["claims"])
    text = format_experiment(result)  # formats without a judge (it crashed on None before)
    assert "aligned" not in text and "H2 = rahf-alignment" in text


def test_eval_lee_needs_a_prompt_file_off_shapesworld(sd, lee_adapter, tmp_path):
    with pytest.raises(RewardError, match="not a ShapesWorld generator.*--prompts FILE"):
        lee_experiment([str(lee_adapter)], generator=sd, json_path=str(tmp_path / "x.json"))
    with pytest.raises(RewardError, match="holds no prompts"):
        (tmp_path / "empty.txt").write_text("\n  \n")
        lee_experiment([str(lee_adapter)], generator=sd, prompts_file=str(tmp_path / "empty.txt"))
    assert not (tmp_path / "x.json").exists()


def test_sdxl_is_refused_before_loading_naming_what_is_supported(tmp_path, monkeypatch):
    from diffusers import DiffusionPipeline

    write_sdxl_index(tmp_path / "sdxl")

    def never(*a, **kw):
        raise AssertionError("loaded the weights of a pipeline it should refuse")

    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", never)
    with pytest.raises(GeneratorError, match=r"StableDiffusionXLPipeline.*supported are Stable Diffusion 1\.x/2\.x"):
        load_generator(tmp_path / "sdxl")


def test_an_sd2_v_prediction_folder_generates_and_inpaints(sd):
    assert sd.prediction_type == "v_prediction" and not sd.is_shapes_world and sd.dtype == torch.float32
    assert sd.pipe.unet.config.use_linear_projection
    img = sd.generate(PROMPTS[1], n=1, steps=2)[0][0]
    mask = np.zeros((32, 32), bool)
    mask[8:20, 8:20] = True
    fixed = sd.inpaint(img, mask, PROMPTS[1], n=1, steps=2)[0]
    same = ~mask
    assert np.array_equal(np.asarray(fixed)[same], np.asarray(img)[same])


@pytest.mark.parametrize("spec, parsed", [
    ("lee", ("lee", "", "")), ("lee:/models/r", ("lee", "", "/models/r")),
    ("rahf-alignment", ("rahf", "alignment", "")), ("RAHF-Overall: /ck ", ("rahf", "overall", "/ck")),
    ("judge", ("judge", "", "")),
])
def test_reward_specs_parse(spec, parsed):
    assert parse_reward_spec(spec) == parsed


@pytest.mark.parametrize("spec, message", [
    ("", "empty reward"), ("clip-magic", "unknown reward 'clip-magic'"), ("rahf-beauty", "unknown reward"),
    ("judge:/x", "judge reward has no weights"),
])
def test_bad_reward_specs_are_refused_naming_the_forms(spec, message):
    with pytest.raises(RewardError, match=message):
        get_reward(spec)


def test_a_missing_reward_folder_is_a_readable_error(tmp_path):
    with pytest.raises(RewardError, match="not a reward model folder"):
        get_reward(f"lee:{tmp_path}")
    with pytest.raises(RewardError, match="no RAHF checkpoint"):
        get_reward(f"rahf-alignment:{tmp_path / 'nope'}")


@settings(max_examples=200, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=30), st.sampled_from(REWARD_NAMES).map(lambda s: s + ":" if s != "judge" else s),
                 st.builds(lambda a, b: f"{a}:{b}", st.sampled_from(REWARD_NAMES), st.text(max_size=10))))
def test_any_text_parses_to_a_known_reward_or_is_refused(text):
    try:
        kind, score, folder = parse_reward_spec(text)
    except RewardError as e:
        assert str(e)
        return
    assert kind in ("lee", "rahf", "judge") and (score == "") == (kind != "rahf")
    assert folder == text.partition(":")[2].strip() and (kind != "judge" or not folder)


def test_held_out_rewards_never_include_the_training_reward():
    assert held_out_specs("lee") == ["rahf-plausibility", "rahf-alignment"]
    assert held_out_specs("rahf-alignment") == ["rahf-plausibility"]
    assert held_out_specs("lee", "rahf-overall, lee ,rahf-overall") == ["rahf-overall"]
    with pytest.raises(RewardError, match="unknown reward"):
        held_out_specs("lee", "nonsense")


def test_the_command_line_runs_the_real_workflow(root, sd, rated, clip_dir, reward_dir, rahf_dir, prompt_file, capsys):
    """train-reward --data, finetune --reward lee:DIR and eval-lee --prompts through `python -m rhf_core`."""
    from rhf_core.__main__ import main

    assert main(["train-reward", "--data", f"folder:{rated}", "--encoders", str(clip_dir), "--hidden", "8",
                 "--steps", "5", "--out", str(root / "cli-reward")]) == 0
    assert json.loads((root / "cli-reward" / "metrics.json").read_text())["settings"]["data"].endswith(str(rated))
    assert main(["finetune", "--generator", str(sd.root), "--reward", f"lee:{root / 'cli-reward'}", "--prompts",
                 str(prompt_file), "--per-prompt", "2", "--beta", "0", "--rank", "4", "--steps", "1", "--batch-size", "2",
                 "--name", "cli-ft", "--out", str(root / "cli-adapter"), "--no-resume"]) == 0
    assert json.loads((root / "cli-adapter" / "adapter.json").read_text())["config"]["reward"] == f"lee:{root / 'cli-reward'}"
    capsys.readouterr()
    out = root / "cli-eval.json"
    assert main(["eval-lee", "--generator", str(sd.root), "--adapters", str(root / "cli-adapter"), "--prompts",
                 str(prompt_file), "--n", "2", "--k", "1", "--held-out", f"rahf-plausibility:{rahf_dir}",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    arm = result["adapters"]["cli-adapter"]["splits"]["prompts"]["fine-tuned best-k"]
    assert set(arm["held_out"]) == {f"rahf-plausibility:{rahf_dir}"} and "alignment_rate" not in arm
    assert f"H1 = rahf-plausibility:{rahf_dir}" in printed and "aligned" not in printed
