"""AppTest for the rejection sampling vs fine-tuning page, on the shipped generator, adapter and reward."""

from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "app.py")


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
    assert (table.loc["original best-k", "mean reward"] >= table.loc["original random", "mean reward"])
    assert table.loc["original random", "tie"] == 1.0
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
    from rhf_core.reward.finetune import FinetuneConfig, fine_tune_prompts, load_adapter_info
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
