"""The pre-registered guidance study (`rhf study-guidance`): its fixed prompt sets, its scale rule, its
claims, and that a stopped run resumes from the arms it finished. Run on the embedded ShapesWorld
generator and RAHF at a few steps and samples (the real study's numbers are docs/experiments/guidance.md)."""

import json

import numpy as np
import pytest

from rhf_core.reward.guidance_study import (GuidanceStudyConfig, format_study, pick_scale, run_guidance_study,
                                            study_prompts)
from rhf_core.reward.model import RewardError
from rhf_core.shapes.grammar import parse_prompt
from rhf_core.t2i import load_generator
from rhf_core.t2i.build import TinyT2IConfig, build_pipeline

TINY = dict(tune_prompts=1, tune_n=2, n_prompts=2, n=2, steps=2, scales="1,3", batch_size=8)


def arm(rates):
    """An arm whose per-prompt rate of both measures is `rates` (two samples a prompt)."""
    rows = [[r, r] for r in rates]
    return {"aligned": rows, "implausible": rows, "seconds_per_image": 1.0}


def test_prompt_sets_are_fixed_disjoint_grammar_prompts():
    sets = study_prompts(GuidanceStudyConfig())
    assert [len(sets[k]) for k in ("tune", "seen", "unseen")] == [8, 40, 40]
    assert not set(sets["tune"]) & set(sets["seen"]) and not set(sets["seen"]) & set(sets["unseen"])
    assert not set(sets["tune"]) & set(sets["unseen"])
    assert all(parse_prompt(p) is not None for v in sets.values() for p in v)  # the judge reads every one
    assert study_prompts(GuidanceStudyConfig()) == sets  # decided by the config alone
    with pytest.raises(RewardError, match="40 seen and 60 unseen"):
        study_prompts(GuidanceStudyConfig(n_prompts=41))


def test_scale_rule_follows_the_measure_direction_and_prefers_the_smaller_on_ties():
    base = arm([0.5, 0.5])
    tuned = {1.0: arm([0.25, 0.5]), 2.0: arm([0.0, 0.5]), 4.0: arm([0.75, 1.0])}
    assert pick_scale(tuned, base, "implausible", -1)[0] == 2.0  # lower is better: -0.25 beats -0.125
    assert pick_scale(tuned, base, "aligned", +1)[0] == 4.0  # higher is better
    scale, changes = pick_scale({4.0: arm([0.5, 0.75]), 2.0: arm([0.75, 0.5])}, base, "aligned", +1)
    assert scale == 2.0 and changes == {"4.0": 0.125, "2.0": 0.125}


def test_refuses_what_it_cannot_measure(tmp_path):
    with pytest.raises(RewardError, match="no judge measure is registered for \\['lee'\\]"):
        run_guidance_study(GuidanceStudyConfig(rewards="lee", json=""), progress=lambda m: None)
    with pytest.raises(RewardError, match="scales must be numbers"):
        run_guidance_study(GuidanceStudyConfig(scales="1,x", json=""), progress=lambda m: None)
    path = tmp_path / "pipe"
    build_pipeline(TinyT2IConfig(image_size=32, vae_channels=(8, 16), latent_channels=4, unet_channels=(16, 32),
                                 attention_head_dim=4, text_dim=16, text_layers=1, text_heads=2, norm_groups=8,
                                 vae_norm_groups=4), seed=0).save_pretrained(path)
    with pytest.raises(RewardError, match="not a ShapesWorld generator"):
        run_guidance_study(GuidanceStudyConfig(json=""), generator=load_generator(path, device="cpu"))


def test_small_study_writes_claims_and_resumes_from_finished_arms(tmp_path, monkeypatch):
    monkeypatch.setenv("RHF_CACHE_DIR", str(tmp_path / "cache"))
    gen = load_generator()
    cfg = GuidanceStudyConfig(**TINY, json=str(tmp_path / "study.json"))
    out = run_guidance_study(cfg, generator=gen, progress=lambda m: None)
    assert json.loads((tmp_path / "study.json").read_text())["claims"] == out["claims"]
    assert set(out["arms"]) == {"unguided", *(f"{r} @ {out['tuning'][r]['picked_scale']:g}"
                                              for r in ("rahf-plausibility", "rahf-alignment"))}
    for reward, tuned in out["tuning"].items():
        assert tuned["picked_scale"] in (1.0, 3.0) and set(tuned["mean_change_by_scale"]) == {"1.0", "3.0"}
    for name, splits in out["arms"].items():
        assert set(splits) == {"seen", "unseen"}
        for r in splits.values():
            assert 0 <= r["implausible_share"] <= 1 and 0 <= r["alignment"] <= 1 and r["seconds_per_image"] > 0
            if name != "unguided":
                gain = r["change"]["implausible"]
                assert gain["prompts"] == 2 and gain["ci95"][0] <= gain["difference"] <= gain["ci95"][1]
    assert len(out["claims"]) == 4 and all(isinstance(c["holds"], bool) for c in out["claims"].values())
    table = format_study(out)
    assert "| unguided | seen |" in table and "rahf-plausibility lowers judge implausible (unseen)" in table

    # Stopped and restarted: every finished arm is read back, nothing is sampled again.
    def no_sampling(*a, **k):
        raise AssertionError("sampled again")
    monkeypatch.setattr(gen, "generate", no_sampling)
    again = run_guidance_study(cfg, generator=gen, progress=lambda m: None)
    assert again["arms"] == out["arms"] and again["claims"] == out["claims"]


def test_guided_arm_differs_from_unguided_on_paired_seeds(tmp_path, monkeypatch):
    """The guided arm starts from the unguided arm's noise: at scale 0 it is the unguided arm exactly."""
    monkeypatch.setenv("RHF_CACHE_DIR", str(tmp_path / "cache"))
    gen = load_generator()
    prompts = study_prompts(GuidanceStudyConfig(n_prompts=1))["seen"]
    plain = gen.generate(prompts, n=2, seed=3, steps=3)
    zero = gen.generate(prompts, n=2, seed=3, steps=3, reward_guidance="rahf-plausibility", reward_scale=0.0)
    strong = gen.generate(prompts, n=2, seed=3, steps=3, reward_guidance="rahf-plausibility", reward_scale=50.0)
    a, b, c = (np.asarray(x[0][0], dtype=float) for x in (plain, zero, strong))
    assert np.abs(a - b).max() <= 1 and np.abs(a - c).mean() > 1
