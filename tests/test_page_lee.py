"""AppTest for the rejection sampling vs fine-tuning page, on the shipped generator, adapter and reward."""

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "app.py")
SHIPPED = Path(APP).parent / "rhf_core" / "assets" / "adapters"


def open_page() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=300)
    at.query_params["ds"] = "shapes:n=60,seed=4"
    at.run()
    at.switch_page("app_pages/lee.py").run()
    assert not at.exception, at.exception
    return at


def compare_two_prompts(at: AppTest) -> AppTest:
    """Free text, two prompts, n = 4, k = 2, the judge reward; press Compare."""
    at.radio(key="lee_set").set_value("Free text").run()
    at.text_area(key="lee_text").input("a red circle\ntwo blue squares on the sand").run()
    at.slider(key="lee_n").set_value(4).run()
    at.slider(key="lee_k").set_value(2).run()
    at.selectbox(key="lee_reward").set_value("judge").run()
    return at.button(key="lee_run").click().run()


def test_compare_four_arms_on_free_text_prompts():
    at = open_page()
    options = at.selectbox(key="lee_adapter").options
    assert {"draft-shapes (shipped)", "lee-shapes (shipped)"} <= set(options)
    assert at.selectbox(key="lee_adapter").value == "draft-shapes (shipped)"  # the one that raises alignment
    assert any(c.value.startswith("Adapter `draft-shapes`: reward backpropagation (DRaFT; lee reward), β = 1.0")
               for c in at.caption)
    compare_two_prompts(at)
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert list(table.index) == ["original random", "original best-k", "fine-tuned random", "fine-tuned best-k"]
    assert (table.loc["original best-k", "reward judge"] >= table.loc["original random", "reward judge"])
    assert table.loc["original random", "tie"] == 1.0
    # The held-out rewards sit beside the training reward, and the judge's columns are there (ShapesWorld).
    assert {"held-out rahf-plausibility", "held-out rahf-alignment", "judge alignment"} <= set(table.columns)
    assert ((table["held-out rahf-alignment"] >= 0) & (table["held-out rahf-alignment"] <= 1)).all()
    assert len(at.get("plotly_chart")) == 3
    captions = [c for img in at.image for c in img.captions]
    assert sum("reward" in c for c in captions) == 4 * 2
    assert any("judge ✓" in c or "judge ✗" in c for c in captions)
    # k is only a pick among the n samples: changing it re-uses the run.
    at.slider(key="lee_k").set_value(3).run()
    assert sum("reward" in c for img in at.image for c in img.captions) == 4 * 3
    # The same settings in a new session come from the disk cache.
    again = compare_two_prompts(open_page())
    assert any("From the cache" in c.value for c in again.caption)
    again.selectbox(key="lee_adapter").set_value("lee-shapes (shipped)").run()
    assert any(c.value.startswith("Adapter `lee-shapes`: reward-weighted likelihood (Lee et al.), β = 1.0")
               for c in again.caption)


def test_reward_guided_arm_with_its_scale_and_no_stale_result():
    at = open_page()
    at.checkbox(key="lee_guide_on").check().run()
    at.slider(key="lee_guide_scale").set_value(4.0).run()
    compare_two_prompts(at)
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    guided = "guided by rahf-plausibility @ 4"
    assert list(table.index)[-1] == guided and len(table) == 5
    assert 0 <= table.loc[guided, "judge implausible share"] <= 1
    gains = at.dataframe[1].value
    assert (gains.loc[guided, "against"] == "original, all n").all()
    assert sum("reward" in c for img in at.image for c in img.captions) == 5 * 2
    # Another scale is another arm: the shown result goes until Compare is pressed again.
    at.slider(key="lee_guide_scale").set_value(1.0).run()
    assert not at.dataframe and any("Press **Compare**" in i.value for i in at.info)
    at.checkbox(key="lee_guide_on").uncheck().run()
    at.button(key="lee_run").click().run()
    assert list(at.dataframe[0].value.index) == ["original random", "original best-k", "fine-tuned random",
                                                 "fine-tuned best-k"]


def test_bad_inputs_show_messages():
    at = open_page()
    at.slider(key="lee_n").set_value(4).run()
    at.slider(key="lee_k").set_value(6).run()
    assert at.error and "best 6 of 4" in at.error[0].value
    at.slider(key="lee_k").set_value(2).run()
    at.radio(key="lee_set").set_value("Free text").run()
    at.text_area(key="lee_text").input("   \n  ").run()
    assert not at.exception
    assert any("prompt set is empty" in w.value for w in at.warning)


def test_training_prompt_set_lists_the_adapters_own_prompts():
    from rhf_core.align import FinetuneConfig, fine_tune_prompts, load_adapter_info
    from rhf_core.reward.train import default_prompt_split

    at = open_page()
    at.radio(key="lee_set").set_value("The adapter's training prompts").run()
    assert not at.exception, at.exception
    adapter = Path(APP).parent / "rhf_core" / "assets" / "adapters" / "lee-shapes"
    cfg = load_adapter_info(adapter)["config"]
    trained = fine_tune_prompts(FinetuneConfig(prompts=cfg["prompts"], n_prompts=cfg["n_prompts"]))
    assert len(trained) == 200
    shown = [c.value for c in at.caption if c.value.startswith("8 prompts: ")][0]
    listed = shown.removeprefix("8 prompts: ").removesuffix(" …").split(" · ")
    assert listed and set(listed) <= set(trained)
    assert not set(listed) & set(default_prompt_split()["seen"])  # not the held-out ones


def test_an_unfinished_adapter_says_so(tmp_path, monkeypatch):
    import json
    import shutil

    shipped = Path(APP).parent / "rhf_core" / "assets" / "adapters" / "lee-shapes"
    partial = tmp_path / "adapters" / "half-done"
    shutil.copytree(shipped, partial)
    info = json.loads((partial / "adapter.json").read_text())
    info.update(steps_done=40, complete=False)
    info["config"]["objective"] = "dpo"
    (partial / "adapter.json").write_text(json.dumps(info))
    monkeypatch.setenv("RHF_CACHE_DIR", str(tmp_path))
    at = open_page()
    assert not at.warning or all("unfinished" not in w.value for w in at.warning)  # the shipped one is complete
    at.selectbox(key="lee_adapter").set_value("half-done (saved)").run()
    assert not at.exception, at.exception
    assert any(f"unfinished: 40 of {info['config']['steps']} steps" in w.value for w in at.warning)
    assert any(c.value.startswith("Adapter `half-done`: Diffusion-DPO on reward pairs, β =") for c in at.caption)
    assert at.radio(key="lee_ft_objective").value == "rwr"  # Lee et al. unless asked otherwise


def test_a_new_comparison_gets_its_own_prompt_box_and_stale_results_never_show():
    """Was: after switching to other prompts, the browser kept the old box's label while the script read
    its index in the new list (another prompt's images under a prompt's name)."""
    at = compare_two_prompts(open_page())
    old = [s for s in at.selectbox if s.key and s.key.startswith("lee_prompt")]
    assert len(old) == 1 and old[0].options == ["a red circle", "two blue squares on the sand"]
    old[0].set_value(1).run()
    assert any(c.value == "The kept images of each arm for “two blue squares on the sand”." for c in at.caption)
    # Other prompts (one repeated, kept once): the old result must not show under them.
    at.text_area(key="lee_text").input("a blue star\nthree squares\na blue star").run()
    assert not at.dataframe and not [s for s in at.selectbox if s.key and s.key.startswith("lee_prompt")]
    assert any(c.value == "2 prompts: a blue star · three squares" for c in at.caption)
    at.button(key="lee_run").click().run()
    assert not at.exception, at.exception
    new = [s for s in at.selectbox if s.key and s.key.startswith("lee_prompt")]
    assert len(new) == 1 and new[0].key != old[0].key and new[0].options == ["a blue star", "three squares"]
    assert new[0].value == 0  # a fresh box, not the old one's position
    assert any(c.value == "The kept images of each arm for “a blue star”." for c in at.caption)


def test_comparison_reports_progress_while_scoring(tmp_path, monkeypatch):
    """Was: "Scoring… 0%" for the whole of scoring (the judge, image by image, is most of it)."""
    from rhf_core.rahf import load_rahf
    from rhf_core.reward.compare import run_comparison
    from rhf_core.reward.rewards import judge_reward
    from rhf_core.t2i import load_generator

    monkeypatch.setenv("RHF_CACHE_DIR", str(tmp_path))
    calls = []
    run_comparison(load_generator(None), str(SHIPPED / "lee-shapes"), ["a red circle", "a blue star"], n=3, k=1,
                   reward_name="judge", reward=judge_reward, predictor=load_rahf(), steps=2,
                   progress=lambda stage, f: calls.append((stage, f)))
    for model in ("original", "fine-tuned"):
        scoring = [f for stage, f in calls if stage == f"scoring ({model})"]
        assert scoring == sorted(scoring) and scoring[0] == 0.0 and scoring[-1] == 1.0
        assert len([f for f in scoring if 0 < f < 1]) >= 6, scoring  # one step per judged image at least


def fake_finetune(cfg, generator=None, reward=None, progress=None, **kw):
    """Stands in for a real fine-tune (minutes): writes a finished adapter where finetune would."""
    import shutil

    progress("fine-tuning", 1.0)
    shutil.copytree(SHIPPED / "lee-shapes", cfg.out_dir)
    return cfg.out_dir


def test_fine_tune_lists_and_selects_the_new_adapter_and_drops_the_stop_button(tmp_path, monkeypatch):
    """Was: the new adapter was missing from the list until a rerun, and the Stop button stayed."""
    import rhf_core.align as ft

    monkeypatch.setenv("RHF_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(ft, "finetune", fake_finetune)
    at = open_page()
    assert "fresh-one (saved)" not in at.selectbox(key="lee_adapter").options
    at.text_input(key="lee_ft_name").input("fresh-one").run()
    at.button(key="lee_ft_run").click().run()
    assert not at.exception, at.exception
    assert "fresh-one (saved)" in at.selectbox(key="lee_adapter").options
    assert at.selectbox(key="lee_adapter").value == "fresh-one (saved)"
    assert any(c.value.startswith("Adapter `fresh-one`") for c in at.caption)
    assert any("Saved the adapter to" in s.value and "fresh-one" in s.value for s in at.success)
    assert not [b for b in at.button if b.key == "lee_ft_stop"]


@pytest.mark.parametrize("kept, says", [(0, "no step was kept"), (37, "its saved state holds 37 of 300 steps")])
def test_a_stopped_fine_tune_says_what_its_saved_state_holds(monkeypatch, kept, says):
    """Was "every finished step is kept" whatever was kept. A run this session started and that did not
    finish (Stop reran the page) is read back from the state folder (`saved_steps`)."""
    import rhf_core.align as ft

    monkeypatch.setattr(ft, "saved_steps", lambda name: kept if name == "half-way" else -1)
    at = open_page()
    at.session_state["lee_ft_running"] = ("half-way", 300)  # what pressing Fine-tune left before Stop
    at.run()
    assert not at.exception, at.exception
    assert any(says in i.value for i in at.info), [i.value for i in at.info]
    assert not any("every finished step" in i.value for i in at.info)


def test_a_real_generator_with_rewards_by_spec_and_no_judge(tmp_path, monkeypatch):
    """A tiny SD 2-style folder in the sidebar: only its own adapters, no grammar prompt sets, no judge; a
    trained reward folder (lee:DIR) selects, a RAHF checkpoint folder is the held-out reward."""
    from dataclasses import replace

    from rhf_core.rahf import new_rahf
    from rhf_core.reward.encoders import build_tiny_clip
    from rhf_core.align import FinetuneConfig, finetune
    from rhf_core.reward.model import RewardConfig, RewardHead, RewardModel
    from rhf_core.reward.rewards import get_reward
    from rhf_core.t2i import load_generator
    from rhf_core.t2i.build import build_pipeline
    from tests.test_rahf import tiny as tiny_rahf
    from tests.test_reward import TINY_CLIP
    from tests.test_t2i import TINY

    monkeypatch.setenv("RHF_CACHE_DIR", str(tmp_path / "cache"))
    build_pipeline(replace(TINY, prediction_type="v_prediction", sd2_layout=True), seed=1).save_pretrained(tmp_path / "sd")
    clip = build_tiny_clip(TINY_CLIP)
    clip.save(tmp_path / "clip")
    RewardModel(clip, RewardHead(clip.dim, 16), RewardConfig(encoders=str(tmp_path / "clip"), hidden=16)).save(tmp_path / "rm")
    new_rahf(tiny_rahf(), seed=5).save(tmp_path / "rahf")
    (tmp_path / "p.txt").write_text("a red car on a street\n")
    spec = f"lee:{tmp_path / 'rm'}"
    finetune(FinetuneConfig(name="real-one", reward=spec, prompts=str(tmp_path / "p.txt"), per_prompt=2, beta=0.0,
                            rank=4, steps=2, batch_size=2, sample_steps=2),
             generator=load_generator(tmp_path / "sd"), reward=get_reward(spec), resume=False)

    at = AppTest.from_file(APP, default_timeout=300)
    at.query_params["ds"] = "shapes:n=60,seed=4"
    at.query_params["gen"] = str(tmp_path / "sd")
    at.run()
    at.switch_page("app_pages/lee.py").run()
    assert not at.exception, at.exception
    assert at.radio(key="lee_set").options == ["The adapter's training prompts", "Free text", "Prompt file"]
    assert at.selectbox(key="lee_adapter").options == ["real-one (saved)"]  # no adapter made for the embedded model
    assert "judge" not in at.selectbox(key="lee_reward").options
    assert at.selectbox(key="lee_reward").value == "adapter"  # the adapter's own reward by default
    at.radio(key="lee_set").set_value("Free text").run()
    at.text_area(key="lee_text").input("a red car on a street\na cat on a sofa").run()
    at.slider(key="lee_n").set_value(2).run()
    at.slider(key="lee_k").set_value(1).run()
    at.text_input(key="lee_held").input(f"rahf-plausibility:{tmp_path / 'rahf'}, judge").run()
    assert any("judge reward knows only ShapesWorld" in e.value for e in at.error)  # refused, with a message
    at.text_input(key="lee_held").input(f"rahf-plausibility:{tmp_path / 'rahf'}").run()
    at.button(key="lee_run").click().run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert list(table.columns[:2]) == ["reward lee:rm", "held-out rahf-plausibility:rahf"]
    assert not {"judge alignment", "judge implausible share", "model alignment (all n)"} & set(table.columns)
    assert table.loc["original best-k", "reward lee:rm"] >= table.loc["original random", "reward lee:rm"]
    gains = at.dataframe[1].value
    assert set(gains["measure"]) == {"reward lee:rm", "held-out rahf-plausibility:rahf"}
    assert not any("judge" in c for img in at.image for c in img.captions)
