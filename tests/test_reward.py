"""Lee et al.: perturbations, the reward loss on tiny encoders, rejection sampling, a LoRA fine-tune of
a tiny random pipeline, and the four-arm comparison."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rhf_core.reward import RewardError, get_reward, perturbed_prompts, rejection_sample, top_k
from rhf_core.reward.encoders import TinyCLIPConfig, build_tiny_clip, load_encoders
from rhf_core.reward.model import RewardConfig, RewardHead, RewardModel, load_reward_model
from rhf_core.reward.train import best_threshold, classification_metrics, train_head
from rhf_core.shapes.grammar import parse_prompt
from rhf_core.t2i import load_generator
from rhf_core.t2i.build import build_pipeline
from tests.test_t2i import TINY

TINY_CLIP = TinyCLIPConfig(image_size=32, patch_size=8, dim=32, vision_layers=1, text_layers=1, heads=2, projection_dim=16)


def brightness(images, prompts):
    """A simple real reward: mean brightness of the image."""
    return np.array([np.asarray(im, dtype=np.float32).mean() / 255 for im in images], np.float32)


@pytest.fixture(scope="module")
def gen(tmp_path_factory):
    path = tmp_path_factory.mktemp("gen") / "tiny-gen"
    build_pipeline(TINY, seed=2).save_pretrained(path)
    return load_generator(path)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "tiny-clip"
    build_tiny_clip(TINY_CLIP).save(path)
    return load_encoders(path)


def test_grammar_perturbations_change_exactly_one_attribute():
    prompt = "two red circles on the grass"
    spec = parse_prompt(prompt)
    out = perturbed_prompts(prompt, 8, rng=3)
    assert len(out) == len(set(out)) == 8 and prompt not in out
    for q in out:
        other = parse_prompt(q)
        assert other is not None
        diffs = [a for a in ("shape", "count", "color", "background") if getattr(other, a) != getattr(spec, a)]
        assert len(diffs) == 1, (q, diffs)
    # A shape-only prompt can only change its shape: three alternatives exist.
    assert sorted(perturbed_prompts("a star", 10, rng=0)) == ["a circle", "a square", "a triangle"]


def test_free_form_perturbations_swap_numbers_colours_and_nouns():
    out = perturbed_prompts("Two brown bears in the forest.", 6, rng=1)
    assert len(out) == 6
    for q in out:
        assert q != "Two brown bears in the forest." and q.endswith(" in the forest.")
        assert sum(a != b for a, b in zip(q.split(), "Two brown bears in the forest.".split())) == 1
    assert perturbed_prompts("an abstract painting", 3) == []


def test_encoders_embed_normalised_and_round_trip(clip, tmp_path):
    imgs = [Image.new("RGB", (40, 30), c) for c in ("red", "blue")]
    e = clip.embed_images(imgs)
    t = clip.embed_texts(["a red circle", "two blue squares", "a red circle"])
    assert e.shape == (2, 16) and t.shape == (3, 16)
    assert np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5) and np.allclose(t[0], t[2])
    assert not np.allclose(t[0], t[1])


def test_reward_head_learns_labels_and_prompt_classification():
    """Synthetic embeddings: an image is good for text j when it matches text j's embedding."""
    rng = np.random.default_rng(0)
    d, m = 16, 24
    table = rng.normal(size=(m, d)).astype(np.float32)
    table /= np.linalg.norm(table, axis=1, keepdims=True)
    n = 1500
    true = rng.integers(m, size=n)
    img = table[true] + 0.1 * rng.normal(size=(n, d)).astype(np.float32)
    good = rng.random(n) < 0.5
    shown = np.where(good, true, (true + rng.integers(1, m, size=n)) % m)  # bad: paired with another text
    negatives = np.stack([(shown + s) % m for s in range(1, 5)], axis=1)
    negatives[::7, 2:] = -1  # fewer perturbations for some prompts: padded
    labels = good.astype(np.float32)
    tr, te = slice(0, 1200), slice(1200, None)
    cfg = RewardConfig(hidden=64, lam=0.5, temperature=0.1)
    head = train_head(img[tr], shown[tr], labels[tr], table, negatives[tr], cfg, steps=300, batch_size=128, lr=3e-3, seed=0)
    with torch.no_grad():
        s = head(torch.from_numpy(img[te]), torch.from_numpy(table[shown[te]])).numpy()
    assert ((s >= 0.5) == good[te]).mean() > 0.9
    assert 0 < s.min() and s.max() < 1  # sigmoid output
    m_ = classification_metrics(s, labels[te], 0.5)
    assert m_["auc"] > 0.95 and m_["n"] == 300
    assert best_threshold(np.array([0.1, 0.4, 0.6, 0.9]), np.array([0, 0, 1, 1.0])) == 0.6


def test_within_prompt_auc_sees_through_a_score_that_tracks_prompt_difficulty():
    # Prompt "easy": mostly good, low scores; prompt "hard": mostly bad, high scores. Within each prompt the
    # score ranks good above bad, but pooled it ranks them the wrong way round.
    scores = np.array([0.1, 0.2, 0.3, 0.05, 0.8, 0.9, 0.95, 0.7])
    labels = np.array([1, 1, 1, 0, 0, 0, 1, 0], dtype=np.float32)
    prompts = ["easy"] * 4 + ["hard"] * 4
    m_ = classification_metrics(scores, labels, 0.5, prompts)
    assert m_["auc"] < 0.5 and m_["within_prompt_auc"] == 1.0 and m_["prompts_with_both"] == 2
    only_good = classification_metrics(scores[:3], labels[:3], 0.5, prompts[:3])
    assert np.isnan(only_good["within_prompt_auc"]) and only_good["prompts_with_both"] == 0


def test_reward_model_save_load_scores_identically(clip, tmp_path):
    head = RewardHead(clip.dim, 32)
    model = RewardModel(clip, head, RewardConfig(encoders=str(clip.name), hidden=32))
    model.save(tmp_path / "rm", metrics={"x": 1})
    again = load_reward_model(tmp_path / "rm", encoders=clip)
    imgs = [Image.new("RGB", (32, 32), (i * 40, 0, 0)) for i in range(3)]
    prompts = ["a red circle", "two stars", "a red circle"]
    assert np.allclose(model(imgs, prompts), again(imgs, prompts))
    assert json.loads((tmp_path / "rm" / "metrics.json").read_text()) == {"x": 1}
    with pytest.raises(RewardError, match="3 images but 2 prompts"):
        model(imgs, prompts[:2])
    with pytest.raises(RewardError, match="not a reward model folder"):
        load_reward_model(tmp_path)


def test_rewards_by_name():
    with pytest.raises(RewardError, match="unknown reward 'clip-magic'"):
        get_reward("clip-magic")
    judge = get_reward("judge")
    assert judge.spec == judge.name == "judge" and not judge.differentiable
    from rhf_core.shapes.dataset import generate_sample

    s = generate_sample(0, seed=3)
    r = judge([s.image()], [s.prompt])
    assert r.shape == (1,) and r[0] in (-0.5, 0.0, 0.5, 1.0)
    with pytest.raises(RewardError, match="only reads ShapesWorld prompts"):
        judge([s.image()], ["a photo of a cat"])


def test_rejection_sampling_keeps_the_top_k(gen):
    out = rejection_sample(gen, ["a red circle", "two stars"], n=5, k=2, reward=brightness, steps=2)
    assert len(out) == 2
    for s in out:
        assert len(s.images) == 5 and s.rewards.shape == (5,) and len(s.best) == 2
        assert np.allclose(s.rewards, brightness(s.images, [s.prompt] * 5))
        assert s.best_rewards[0] == s.rewards.max() and s.best_rewards[0] >= s.best_rewards[1]
        assert set(s.best) == set(np.argsort(-s.rewards)[:2])
    assert list(top_k(np.array([0.2, 0.9, 0.9, 0.1]), 3)) == [1, 2, 0]


@pytest.mark.parametrize("kwargs, message", [
    ({"prompts": [], "k": 1}, "prompt set is empty"),
    ({"prompts": ["a star"], "n": 4, "k": 5}, "best 5 of 4"),
    ({"prompts": ["a star"], "n": 4, "k": 0}, "best 0 of 4"),
])
def test_rejection_sampling_bad_inputs(gen, kwargs, message):
    with pytest.raises(RewardError, match=message):
        rejection_sample(gen, reward=brightness, steps=2, **kwargs)


@pytest.fixture(scope="module")
def adapter(gen, tmp_path_factory):
    from rhf_core.align import FinetuneConfig, finetune

    root = tmp_path_factory.mktemp("ft")
    (root / "prompts.txt").write_text("a red circle\ntwo blue squares\n")
    pre = root / "pre"
    pre.mkdir()
    for i in range(4):
        Image.new("RGB", (32, 32), (60 * i, 80, 120)).save(pre / f"p{i}.png")
        (pre / f"p{i}.txt").write_text("a square")
    cfg = FinetuneConfig(name="tiny", out=str(root / "adapter"), prompts=str(root / "prompts.txt"), per_prompt=3,
                         beta=0.5, pretrain_folder=str(pre), rank=4, steps=4, batch_size=4, lr=5e-2, save_every=2,
                         uncond_prob=0.5, snr_gamma=5.0)  # half of each batch with the empty prompt; min-SNR weights
    stages = []
    path = finetune(cfg, generator=gen, reward=brightness, resume=False, progress=lambda s, f: stages.append(s))
    assert {"generating", "scoring", "fine-tuning"} <= set(stages)
    return path


def test_lora_fine_tune_changes_outputs_and_round_trips(gen, adapter, tmp_path):
    info = json.loads((adapter / "adapter.json").read_text())
    assert info["beta_used"] == 0.5 and info["steps_done"] == 4 and info["complete"]
    assert info["config"]["uncond_prob"] == 0.5 and info["config"]["snr_gamma"] == 5.0
    assert info["reward_stats"]["n"] == 6 and [e["step"] for e in info["log"]] == [2, 4]
    assert (adapter / "pytorch_lora_weights.safetensors").is_file()
    unet = gen.pipe.unet
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = torch.randn(1, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        eps = unet(x, 500, cond).sample
    base = np.asarray(gen.generate("a red circle", n=1, seed=0, steps=3)[0][0], dtype=np.int16)
    gen.load_lora(adapter)
    with torch.no_grad():
        eps_tuned = unet(x, 500, cond).sample
    tuned = np.asarray(gen.generate("a red circle", n=1, seed=0, steps=3)[0][0], dtype=np.int16)
    gen.unload_lora()
    assert (eps_tuned - eps).norm() > 0.01 * eps.norm()  # the adapter changes the UNet's prediction
    assert np.abs(tuned - base).mean() > 0.1  # and so the images
    again = np.asarray(gen.generate("a red circle", n=1, seed=0, steps=3)[0][0], dtype=np.int16)
    assert np.array_equal(again, base)  # unloading restores the original model
    fresh = load_generator(gen.pipe.config._name_or_path).load_lora(adapter)  # a new process would do this
    assert np.abs(np.asarray(fresh.generate("a red circle", n=1, seed=0, steps=3)[0][0], dtype=np.int16) - tuned).max() <= 1


def test_comparison_arms_cache_and_bad_inputs(gen, adapter, clip):
    from rhf_core.rahf import load_rahf
    from rhf_core.reward.compare import ARMS, run_comparison, summarize

    rahf = load_rahf()
    prompts = ["a red circle", "two blue squares on the sand", "a cat on a sofa"]
    c = run_comparison(gen, str(adapter), prompts, n=4, k=2, reward_name="brightness", reward=brightness,
                       predictor=rahf, encoders=clip, steps=2, use_judge=True)  # judge the tiny model's images
    assert c.settings["cached"] is False and c.images["original"].shape == (3, 4, 32, 32, 3)
    s = summarize(c)
    assert list(s) == list(ARMS)
    assert s["original best-k"]["mean_reward"] >= s["original random"]["mean_reward"]
    assert s["fine-tuned best-k"]["mean_reward"] >= s["fine-tuned random"]["mean_reward"]
    assert s["original random"]["win"] == 0 and s["original random"]["tie"] == 1
    assert set(s["original random"]["alignment_by_category"]) == {"color", "combination"}  # the cat is not judged
    assert np.isnan(c.aligned["original"][2]).all()
    # The model-level rate pools all n samples of the judged prompts.
    assert s["original random"]["alignment_rate_all_n"] == pytest.approx(float(np.nanmean(c.aligned["original"])), abs=1e-4)
    assert "alignment_rate_all_n" not in s["original best-k"]
    assert 0 <= s["fine-tuned random"]["diversity"] <= 2
    # The held-out rewards (the embedded RAHF's plausibility and alignment) score every kept image.
    plaus = np.array([p.scores["plausibility"] for p in rahf.predict(
        [Image.fromarray(im) for im in c.images["original"][:, :2].reshape(-1, 32, 32, 3)], [p for p in prompts for _ in range(2)])])
    assert set(s["original random"]["held_out"]) == {"rahf-plausibility", "rahf-alignment"}
    assert s["original random"]["held_out"]["rahf-plausibility"]["mean"] == pytest.approx(plaus.mean(), abs=1e-3)
    assert s["fine-tuned random"]["reward_gain"]["against"] == "original, all n"
    # Gains are paired per judged prompt: the unreadable prompt is left out, the difference is exact.
    gain = s["fine-tuned random"]["alignment_gain"]
    want = float(np.mean(c.aligned["fine-tuned"][:2].mean(1) - c.aligned["original"][:2].mean(1)))
    assert gain["prompts"] == 2 and gain["against"] == "original, all n"
    assert gain["difference"] == pytest.approx(want, abs=1e-4) and gain["ci95"][0] <= want + 1e-4 <= gain["ci95"][1] + 2e-4
    assert s["original random"]["per_prompt"]["alignment"][2] is None and len(s["original random"]["per_prompt"]["diversity"]) == 3
    again = run_comparison(gen, str(adapter), prompts, n=4, k=3, reward_name="brightness", reward=brightness,
                           predictor=rahf, encoders=clip, steps=2, use_judge=True)
    assert again.settings["cached"] is True and np.array_equal(again.rewards["fine-tuned"], c.rewards["fine-tuned"])
    # A new scoring model re-scores the same images from the generation cache, never re-generates.
    def no_generation(*a, **kw):
        raise AssertionError("generated again")

    real_generate, gen.generate = gen.generate, no_generation
    try:
        dark = run_comparison(gen, str(adapter), prompts, n=4, k=2, reward_name="darkness",
                              reward=lambda ims, ps: 1 - brightness(ims, ps), predictor=rahf, encoders=clip, steps=2,
                              use_judge=True)
    finally:
        gen.generate = real_generate
    assert dark.settings["cached"] is False
    for model in ("original", "fine-tuned"):
        assert np.array_equal(dark.images[model], c.images[model])
        np.testing.assert_allclose(dark.rewards[model], 1 - c.rewards[model], atol=1e-6)
    with pytest.raises(RewardError, match="prompt set is empty"):
        run_comparison(gen, str(adapter), ["  "], reward=brightness)
    with pytest.raises(RewardError, match="best 5 of 4"):
        run_comparison(gen, str(adapter), prompts, n=4, k=5, reward=brightness)
    with pytest.raises(RewardError, match="no fine-tuned adapter"):
        run_comparison(gen, "/nonexistent", prompts, reward=brightness)


def test_comparison_guided_arm_is_paired_named_and_cached(gen, adapter, clip):
    """The reward-guided arm: the original model's seeds steered by a reward, measured like the others."""
    from rhf_core.errors import RHFError
    from rhf_core.rahf import load_rahf
    from rhf_core.reward.compare import ARMS, run_comparison, summarize
    from rhf_core.reward.rewards import RAHFReward

    rahf = load_rahf()
    guide = RAHFReward("rahf-plausibility", rahf, "plausibility")
    prompts = ["a red circle", "two blue squares on the sand"]
    kw = dict(n=3, k=2, reward_name="brightness", reward=brightness, predictor=rahf, encoders=clip, steps=2,
              use_judge=True)
    plain = run_comparison(gen, str(adapter), prompts, **kw)
    c = run_comparison(gen, str(adapter), prompts, **kw, guide="rahf-plausibility", guide_reward=guide, guide_scale=50)
    assert plain.guided_arm is None and plain.arms == ARMS
    assert c.guided_arm == "guided by rahf-plausibility @ 50" and c.arms == (*ARMS, c.guided_arm)
    assert np.array_equal(c.images["original"], plain.images["original"])  # the other arms are untouched
    assert c.images["guided"].shape == c.images["original"].shape
    assert np.abs(c.images["guided"].astype(int) - c.images["original"]).mean() > 1  # steered
    s = summarize(c)
    g = s[c.guided_arm]
    assert list(s) == list(c.arms) and g["reward_gain"]["against"] == "original, all n"
    want = float(np.mean(c.rewards["guided"].mean(1) - c.rewards["original"].mean(1)))  # all n vs all n, paired
    assert g["reward_gain"]["difference"] == pytest.approx(want, abs=1e-4)
    assert g["alignment_rate_all_n"] == pytest.approx(float(np.nanmean(c.aligned["guided"])), abs=1e-4)
    assert set(g["held_out"]) == {"rahf-plausibility", "rahf-alignment"}
    again = run_comparison(gen, str(adapter), prompts, **kw, guide="rahf-plausibility", guide_reward=guide,
                           guide_scale=50)
    assert again.settings["cached"] is True and again.guided_arm == c.guided_arm
    assert np.array_equal(again.images["guided"], c.images["guided"])
    with pytest.raises(RHFError, match="has none: use a differentiable reward"):
        run_comparison(gen, str(adapter), prompts, **kw, guide="brightness", guide_reward=brightness, guide_scale=1)


def test_filtered_fine_tune_refuses_a_threshold_no_sample_reaches(gen, tmp_path):
    from rhf_core.align import FinetuneConfig, finetune

    (tmp_path / "prompts.txt").write_text("a red circle\n")
    cfg = FinetuneConfig(name="filtered", out=str(tmp_path / "adapter"), prompts=str(tmp_path / "prompts.txt"),
                         per_prompt=2, beta=0.0, rank=4, steps=2, batch_size=2, reward_threshold=2.0)
    with pytest.raises(RewardError, match="no sample reaches the reward threshold 2.0"):
        finetune(cfg, generator=gen, reward=brightness, resume=False)  # brightness lies in [0, 1]
    assert not (tmp_path / "adapter").exists()
    # A threshold every sample reaches keeps them all, and adapter.json says what the filter kept.
    from rhf_core.align import load_adapter_info

    info = load_adapter_info(finetune(replace(cfg, reward_threshold=1e-6), generator=gen, reward=brightness,
                                      resume=False))
    stats = info["reward_stats"]
    assert (stats["threshold"], stats["kept"], stats["kept_share"], stats["n"]) == (1e-6, 2, 1.0, 2)


def test_reward_t_min_outside_the_schedule_is_refused(gen, tmp_path):
    from rhf_core.align import FinetuneConfig, finetune

    cfg = FinetuneConfig(name="tmin", out=str(tmp_path / "adapter"), reward_t_min=1.0, steps=2)
    with pytest.raises(RewardError, match=r"reward_t_min must lie in \[0, 1\)"):
        finetune(cfg, generator=gen, reward=brightness, resume=False)
    assert not (tmp_path / "adapter").exists()


def test_lora_on_convolutions_is_saved_and_loaded(gen, tmp_path):
    from safetensors.torch import load_file

    from rhf_core.align import FinetuneConfig, finetune

    (tmp_path / "prompts.txt").write_text("a red circle\n")
    cfg = FinetuneConfig(name="convs", out=str(tmp_path / "convs"), prompts=str(tmp_path / "prompts.txt"), per_prompt=2,
                         beta=0.0, rank=4, steps=2, batch_size=2, lr=5e-2, lora_convs=True)
    path = finetune(cfg, generator=gen, reward=brightness, resume=False)
    saved = load_file(str(path / "pytorch_lora_weights.safetensors"))
    keys = list(saved)
    assert any(".resnets.0.conv1.lora_A" in k for k in keys) and any("time_emb_proj.lora_B" in k for k in keys)
    assert any(".to_q.lora_A" in k for k in keys)
    gen.load_lora(path)
    try:
        conv = gen.pipe.unet.down_blocks[0].resnets[0].conv1
        assert "reward" in getattr(conv, "lora_A", {})  # diffusers applied the convolution's adapter
        # Every adapted layer comes back with its trained weights, attention as well as convolutions.
        for name, module in gen.pipe.unet.named_modules():
            key = f"unet.{name}.lora_B.weight"
            if key in saved:
                assert torch.equal(module.lora_B["reward"].weight.detach().cpu(), saved[key]), name
        assert sum(k.endswith("lora_B.weight") for k in keys) == sum(
            hasattr(m, "lora_B") and "reward" in m.lora_B for _, m in gen.pipe.unet.named_modules())
    finally:
        gen.unload_lora()


def _two_step_adapter(gen, tmp_path, name, **kw) -> dict:
    """The LoRA weights of a 2-step fine-tune on one prompt (config overrides in kw)."""
    from safetensors.torch import load_file

    from rhf_core.align import FinetuneConfig, finetune

    (tmp_path / "prompts.txt").write_text("a red circle\n")
    cfg = FinetuneConfig(name=name, out=str(tmp_path / name), prompts=str(tmp_path / "prompts.txt"), per_prompt=2,
                         beta=0.0, rank=4, steps=2, batch_size=2, lr=5e-2, uncond_prob=0.0, **kw)
    return load_file(str(finetune(cfg, generator=gen, reward=brightness, resume=False) / "pytorch_lora_weights.safetensors"))


def test_guided_objective_fits_the_guided_prediction(gen, tmp_path):
    """At guidance 1 the guided objective is the plain conditional loss; at guidance 3 it trains other weights."""
    plain = _two_step_adapter(gen, tmp_path, "plain", sample_guidance=3.0, guided_objective=False)
    same = _two_step_adapter(gen, tmp_path, "guided1", sample_guidance=3.0, guided_objective=False)
    guided = _two_step_adapter(gen, tmp_path, "guided3", sample_guidance=3.0, guided_objective=True)
    assert all(torch.equal(plain[k], same[k]) for k in plain)  # deterministic given the config
    diff = sum(float((guided[k] - plain[k]).abs().sum()) for k in plain)
    assert diff > 1e-3 and all(torch.isfinite(v).all() for v in guided.values())
    info = json.loads((tmp_path / "guided3" / "adapter.json").read_text())
    assert info["config"]["guided_objective"] is True and info["config"]["sample_guidance"] == 3.0


def test_x0_space_reward_term_weights_and_trains(gen, tmp_path):
    """--reward-x0-cap: weights 1/SNR (x0-space error), capped at the noisy end; it trains other weights."""
    from rhf_core.align import x0_weight

    w = x0_weight(torch.tensor([100.0, 1.0, 0.25, 1e-4, 0.0]), 20.0)
    assert torch.allclose(w, torch.tensor([0.01, 1.0, 4.0, 20.0, 20.0]))
    eps, x0 = _two_step_adapter(gen, tmp_path, "eps"), _two_step_adapter(gen, tmp_path, "x0", reward_x0_cap=20.0)
    assert all(torch.isfinite(v).all() for v in x0.values())
    assert sum(float((x0[k] - eps[k]).abs().sum()) for k in eps) > 1e-3
    assert json.loads((tmp_path / "x0" / "adapter.json").read_text())["config"]["reward_x0_cap"] == 20.0


def test_paired_bootstrap_interval_separates_a_gain_from_noise():
    from rhf_core.reward.compare import paired_bootstrap

    rng = np.random.default_rng(0)
    noise = rng.normal(0.0, 0.2, 24)
    tie, gain = paired_bootstrap(noise), paired_bootstrap(noise + 0.3)
    assert tie["ci95"][0] < 0 < tie["ci95"][1]  # no systematic difference: the interval straddles 0
    assert gain["ci95"][0] > 0.15 and gain["difference"] == pytest.approx(float(np.mean(noise)) + 0.3, abs=1e-4)
    assert gain["ci95"][1] - gain["ci95"][0] == pytest.approx(2 * 1.96 * 0.2 / np.sqrt(24), rel=0.35)
    assert paired_bootstrap([np.nan, np.nan]) is None and paired_bootstrap([0.1, np.nan])["prompts"] == 1


def test_claims_need_an_interval_clear_of_zero():
    from rhf_core.reward.experiment import claims

    def arms(orig_all_n, fine_all_n, best_k, div, imp):
        from rhf_core.reward.compare import paired_bootstrap

        return {"original best-k": {"alignment_gain": paired_bootstrap(np.subtract(best_k, orig_all_n))},
                "original random": {"per_prompt": {"implausible_all_n": list(base)}},
                "fine-tuned random": {"alignment_gain": paired_bootstrap(np.subtract(fine_all_n, orig_all_n)),
                                      "per_prompt": {"diversity": div, "implausible_all_n": imp}}}

    rng = np.random.default_rng(1)
    base = rng.uniform(0.2, 0.5, 24)
    wobble = base + rng.normal(0, 0.1, 24)  # a model that differs by noise only
    result = {"adapters": {
        "b1": {"beta": 1.0, "splits": {"seen": arms(base, wobble, base + 0.2, list(base), list(base - 0.1))}},
        "b0": {"beta": 0.0, "splits": {"seen": arms(base, base + 0.15, base + 0.2, list(wobble), list(base))}}}}
    c = claims(result)
    assert c["seen: rejection sampling beats random (alignment)"]["holds"]
    assert not c["seen: b1 fine-tuned beats original (alignment, all n samples)"]["holds"]  # noise is no win
    assert c["seen: b0 fine-tuned beats original (alignment, all n samples)"]["holds"]
    assert c["seen: b0 fine-tuned beats original (alignment, all n samples)"]["difference"] == pytest.approx(0.15, abs=1e-3)
    assert not c["seen: β>0 keeps more diversity than β=0"]["holds"]
    assert c["seen: β>0 keeps more fidelity than β=0 (lower judge implausible share, all n)"]["holds"]
    # Against the original's implausible share (base): b1's is 0.1 lower on every prompt, b0's unchanged.
    fewer = "seen: {} fine-tuned is judged implausible less often than original (all n samples)"
    assert c[fewer.format("b1")]["holds"] and c[fewer.format("b1")]["difference"] == pytest.approx(-0.1, abs=1e-6)
    assert not c[fewer.format("b0")]["holds"] and c[fewer.format("b0")]["difference"] == pytest.approx(0.0, abs=1e-6)


def test_fine_tune_stops_keeps_every_finished_step_and_resumes(gen, tmp_path):
    from rhf_core.align import FinetuneConfig, finetune, load_adapter_info

    (tmp_path / "prompts.txt").write_text("a red circle\n")
    cfg = FinetuneConfig(name="stop-resume", out=str(tmp_path / "adapter"), prompts=str(tmp_path / "prompts.txt"),
                         per_prompt=2, beta=0.0, rank=4, steps=6, batch_size=2, save_every=100)
    # The page's stop button: should_stop turns true after step 2; the adapter is saved as incomplete.
    calls = []
    path = finetune(cfg, generator=gen, reward=brightness, resume=False, should_stop=lambda: len(calls.append(1) or calls) >= 2)
    info = load_adapter_info(path)
    assert info["steps_done"] == 2 and info["complete"] is False
    # An interruption mid-run (Ctrl-C, or Streamlit stopping a script) keeps the steps finished before it,
    # though no periodic save (every 100 steps) came.
    def interrupt(stage, fraction):
        if stage == "fine-tuning" and fraction >= 4 / 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(cfg, generator=gen, reward=brightness, resume=True, progress=interrupt)
    info = load_adapter_info(path)
    assert info["steps_done"] == 2  # the saved adapter is untouched by the interrupted run
    path = finetune(cfg, generator=gen, reward=brightness, resume=True)
    info = load_adapter_info(path)
    assert info["complete"] is True and info["steps_done"] == 6
    assert [e["step"] for e in info["log"]] == [2, 4, 6]  # resumed at 2, then at 4, never from 0


def test_pre_training_renders_for_any_shapesworld_generator(gen, tmp_path):
    """The β term's renders come for every pipeline train-t2i wrote (its train_log.json), not only for
    one whose name says "shapes"; any other pipeline has none (the β term is then off, with a warning)."""
    from rhf_core.align import FinetuneConfig, is_shapes_generator, pretrain_pairs

    folder = Path(str(gen.pipe.config._name_or_path))
    assert "shapes" not in gen.name and not is_shapes_generator(gen)
    with pytest.warns(UserWarning, match="the β term is off"):
        assert pretrain_pairs(FinetuneConfig(n_pretrain=4), gen) is None
    (folder / "train_log.json").write_text("[]")
    try:
        assert is_shapes_generator(gen)
        images, prompts = pretrain_pairs(FinetuneConfig(n_pretrain=4), gen)
        assert len(images) == 4 and images[0].size == (gen.image_size, gen.image_size)
        assert all(parse_prompt(p) is not None for p in prompts)
    finally:
        (folder / "train_log.json").unlink()


def test_encoded_pre_training_data_is_cached_and_follows_its_files(gen, tmp_path, monkeypatch):
    """D_pre is rendered/read and VAE-encoded once: a resume or a second run reads the same tensors back;
    a changed caption or image makes it anew; no folder and no ShapesWorld: None, as pretrain_pairs."""
    import rhf_core.align.data as data
    from rhf_core.align import FinetuneConfig, encode_latents, pretrain_latents, pretrain_pairs

    monkeypatch.setenv("RHF_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "pairs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
        (folder / f"p{i}.txt").write_text(f"caption {i}")
    cfg = FinetuneConfig(pretrain_folder=str(folder), n_pretrain=3)
    mean, std, captions = pretrain_latents(cfg, gen)
    want_mean, want_std = encode_latents(gen, pretrain_pairs(cfg, gen)[0])
    assert captions == ["caption 0", "caption 1", "caption 2"]
    assert torch.equal(mean, want_mean) and torch.equal(std, want_std)
    with monkeypatch.context() as m:
        m.setattr(data, "encode_latents", lambda *a, **k: (_ for _ in ()).throw(AssertionError("encoded again")))
        again = pretrain_latents(cfg, gen)
    assert torch.equal(again[0], mean) and again[2] == captions
    (folder / "p1.txt").write_text("a new caption")
    assert pretrain_latents(cfg, gen)[2] == ["caption 0", "a new caption", "caption 2"]
    with pytest.warns(UserWarning, match="the β term is off"):
        assert pretrain_latents(FinetuneConfig(n_pretrain=4), gen) is None


def test_preference_pairs_and_the_dpo_loss():
    from rhf_core.align import dpo_loss, preference_pairs

    prompts = ["a", "a", "a", "b", "b"]
    rewards = np.array([1.0, 0.0, 0.6, 0.2, 0.3], np.float32)
    pairs = preference_pairs(prompts, rewards, 0.5)
    assert sorted(map(tuple, pairs.tolist())) == [(0, 1), (2, 1)]  # "b" differs by 0.1 only: no pair
    assert preference_pairs(prompts, np.zeros(5), 0.5).shape == (0, 2)
    same = torch.tensor([0.3, 0.1])
    np.testing.assert_allclose(dpo_loss(same, same, same, same, 2000.0).numpy(), np.log(2), rtol=1e-6)
    better = dpo_loss(torch.tensor([0.29]), torch.tensor([0.31]), torch.tensor([0.3]), torch.tensor([0.3]), 2000.0)
    worse = dpo_loss(torch.tensor([0.31]), torch.tensor([0.29]), torch.tensor([0.3]), torch.tensor([0.3]), 2000.0)
    assert better.item() < np.log(2) < worse.item()
    np.testing.assert_allclose(better.item(), -np.log(1 / (1 + np.exp(-20.0))), rtol=1e-4)  # β/2 · 0.02 = 20


def test_dpo_fine_tune_learns_the_preference_and_refuses_bad_settings(gen, tmp_path):
    """A few Diffusion-DPO steps on a tiny pipeline lower the pair loss below the reference's log 2."""
    from rhf_core.align import FinetuneConfig, finetune

    (tmp_path / "prompts.txt").write_text("a red circle\n")
    base = dict(prompts=str(tmp_path / "prompts.txt"), per_prompt=4, beta=0.0, rank=4, batch_size=4, uncond_prob=0.0,
                objective="dpo", pair_margin=1e-3, dpo_beta=500.0)
    cfg = FinetuneConfig(name="dpo", out=str(tmp_path / "dpo"), steps=30, lr=2e-2, save_every=10, **base)
    path = finetune(cfg, generator=gen, reward=brightness, resume=False)
    info = json.loads((path / "adapter.json").read_text())
    losses = [e["dpo_loss"] for e in info["log"]]
    assert info["pairs"] >= 1 and len(losses) == 3 and all(np.isfinite(losses))
    assert losses[-1] < losses[0] and losses[-1] < np.log(2) - 0.05
    with pytest.raises(RewardError, match="unknown objective 'ppo'"):
        finetune(FinetuneConfig(name="x", out=str(tmp_path / "x"), **{**base, "objective": "ppo"}), generator=gen,
                 reward=brightness, resume=False)
    with pytest.raises(RewardError, match="no two samples of one prompt differ in reward by 0.5"):
        finetune(FinetuneConfig(name="y", out=str(tmp_path / "y"), **{**base, "pair_margin": 0.5}), generator=gen,
                 reward=lambda ims, ps: np.ones(len(ims), np.float32), resume=False)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_reward_scores_pixel_tensors_as_it_scores_images_and_passes_gradients(clip):
    """score_pixels (what reward backpropagation ascends) equals the PIL path, at the encoder's size and
    resized to it, and its gradient reaches the pixels."""
    torch.manual_seed(0)
    model = RewardModel(clip, RewardHead(clip.dim, 32), RewardConfig(hidden=32))
    rng = np.random.default_rng(0)
    prompts = ["a red circle", "two stars", "a red circle"]
    for side in (32, 48):  # the tiny CLIP's crop size, and one the reward has to resize
        arr = rng.integers(0, 256, (3, side, side, 3), dtype=np.uint8)
        pixels = torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(255).requires_grad_(True)
        r = model.score_pixels(pixels, prompts)
        expected = model([Image.fromarray(a) for a in arr], prompts)
        np.testing.assert_allclose(r.detach().numpy(), expected, atol=1e-5 if side == 32 else 0.05)
        r.sum().backward()
        assert pixels.grad is not None and pixels.grad.abs().sum() > 0
    with pytest.raises(RewardError, match="2 images but 3 prompts"):
        model.score_pixels(pixels[:2], prompts)


class DifferentiableBrightness:
    """The brightness reward with the pixel-tensor path that reward backpropagation needs."""

    __call__ = staticmethod(brightness)

    @staticmethod
    def score_pixels(pixels, prompts):
        return pixels.mean(dim=(1, 2, 3))


def test_reward_backprop_fine_tune_raises_the_reward_and_refuses_what_it_cannot_use(gen, tmp_path):
    """A few DRaFT steps on a tiny pipeline raise the reward of fresh samples (same seeds) over the
    original; a reward without gradients and a draft_k beyond the sampler are refused."""
    from rhf_core.align import FinetuneConfig, finetune

    reward = DifferentiableBrightness()
    (tmp_path / "prompts.txt").write_text("a red circle\ntwo blue squares\n")
    base = dict(prompts=str(tmp_path / "prompts.txt"), beta=0.0, rank=4, batch_size=4, objective="draft",
                sample_steps=4, sample_guidance=2.0)
    cfg = FinetuneConfig(name="draft", out=str(tmp_path / "draft"), steps=20, lr=0.1, save_every=10, **base)
    path = finetune(cfg, generator=gen, reward=reward, resume=False)
    info = json.loads((path / "adapter.json").read_text())
    sampled = [e["sampled_reward"] for e in info["log"]]
    assert len(sampled) == 2 and sampled[1] > sampled[0]
    assert info["reward_stats"]["n"] == 20 * 4 and info["config"]["objective"] == "draft"

    prompts = ["a red circle", "two blue squares"]

    def rewards() -> np.ndarray:  # fresh seeds, the same for both models
        imgs = gen.generate(prompts, n=8, seed=5, steps=4, guidance=2.0)
        return brightness([im for row in imgs for im in row], prompts * 8)

    before = rewards()
    gen.load_lora(path)
    try:
        after = rewards()
    finally:
        gen.unload_lora()
    assert np.mean(after > before) >= 0.9 and after.mean() > before.mean() + 0.002, (before, after)
    with pytest.raises(RewardError, match="needs a differentiable one"):
        finetune(FinetuneConfig(name="x", out=str(tmp_path / "x"), **base), generator=gen, reward=brightness, resume=False)
    with pytest.raises(RewardError, match=r"draft_k must lie in \[0, 4\]"):
        finetune(FinetuneConfig(name="y", out=str(tmp_path / "y"), draft_k=5, **base), generator=gen, reward=reward,
                 resume=False)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_shipped_adapters_are_complete_measured_and_load():
    """Every shipped adapter has its config, a metrics.json from eval-lee that measures it, and loads into
    the embedded generator, changing its samples."""
    from rhf_core.align import load_adapter_info

    root = Path(__file__).resolve().parents[1] / "rhf_core" / "assets" / "adapters"
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    assert {"draft-shapes", "lee-shapes"} <= {p.name for p in folders}
    g = load_generator()
    base = np.asarray(g.generate(["two red circles on the grass"], n=1, seed=0, steps=8)[0][0], np.float32)
    for folder in folders:
        info = load_adapter_info(folder)
        assert info["complete"] and info["steps_done"] == info["config"]["steps"]
        metrics = json.loads((folder / "metrics.json").read_text())
        assert folder.name in metrics["adapters"], folder
        assert any(k.endswith(f"{folder.name} fine-tuned beats original (alignment, all n samples)")
                   for k in metrics["claims"])
        g.load_lora(folder)
        try:
            tuned = np.asarray(g.generate(["two red circles on the grass"], n=1, seed=0, steps=8)[0][0], np.float32)
        finally:
            g.unload_lora()
        assert np.abs(tuned - base).mean() > 0.5, folder
