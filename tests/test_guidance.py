"""Reward-guided sampling (`Generator.generate(reward_guidance=...)`) on a tiny diffusers pipeline and a
tiny RAHF built locally, and RAHF's differentiable pixel path checked against finite differences."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from rhf_core.rahf import RAHFConfig, TextConfig, VisionConfig, new_rahf
from rhf_core.rahf.common import images_to_tensor
from rhf_core.reward.model import RewardError
from rhf_core.reward.rewards import RAHFReward, get_reward
from rhf_core.t2i import GeneratorError, load_generator
from rhf_core.t2i.build import TinyT2IConfig, build_pipeline

TINY = TinyT2IConfig(image_size=32, vae_channels=(8, 16), latent_channels=4, unet_channels=(16, 32),
                     attention_head_dim=4, text_dim=16, text_layers=1, text_heads=2, norm_groups=8,
                     vae_norm_groups=4)
PROMPTS = ["two red circles", "a blue square"]


def tiny_rahf(image_size=16, seed=0):
    cfg = RAHFConfig(image_size=image_size, vision=VisionConfig(patch_size=8, dim=32, layers=1, heads=2),
                     text=TextConfig(vocab_buckets=64, dim=32, layers=1, heads=2), fusion_dim=32,
                     fusion_layers=1, fusion_heads=2)
    return new_rahf(cfg, device="cpu", seed=seed)


@pytest.fixture(scope="module")
def gen(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-pipe")
    build_pipeline(TINY, seed=0).save_pretrained(path)
    return load_generator(path, device="cpu")


@pytest.fixture(scope="module")
def reward():
    return RAHFReward("rahf-plausibility", tiny_rahf(), "plausibility")


def sample(gen, **kw):
    return gen.generate(PROMPTS, n=2, seed=7, steps=4, guidance=2.0, with_latents=True, **kw)


def test_score_pixels_matches_predict_and_names_bad_input():
    """At the model's own size the pixel path is predict's exact preprocessing, so the scores agree."""
    rahf = tiny_rahf(image_size=32, seed=1)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in PROMPTS]
    for score in ("plausibility", "alignment", "aesthetics", "overall"):
        want = [p.scores[score] for p in rahf.predict(images, PROMPTS)]
        got = rahf.score_pixels(images_to_tensor(images, 32), PROMPTS, score).detach().numpy()
        np.testing.assert_allclose(got, want, atol=1e-5)
    with pytest.raises(Exception, match="unknown RAHF score 'beauty'"):
        rahf.score_pixels(torch.rand(2, 3, 32, 32), PROMPTS, "beauty")
    with pytest.raises(Exception, match="2 images but 1 prompts"):
        rahf.score_pixels(torch.rand(2, 3, 32, 32), PROMPTS[:1])
    with pytest.raises(Exception, match="B×3×H×W"):
        rahf.score_pixels(torch.rand(3, 32, 32), PROMPTS)


def directional_check(fn, x: torch.Tensor, eps: float, seed=0) -> tuple[float, float]:
    """(autograd, central finite difference) of fn(x).sum() along a random unit direction."""
    d = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    d = d / d.norm()
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(x).sum(), x)
    with torch.no_grad():
        fd = (fn(x + eps * d).sum() - fn(x - eps * d).sum()) / (2 * eps)
    return float((g * d).sum()), float(fd)


def test_rahf_pixel_gradient_matches_finite_differences():
    """Through the resize (24 → 16 px), the ViT and the score head: autograd agrees with finite differences."""
    rahf = tiny_rahf(seed=2)
    x = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    for seed in range(3):
        auto, fd = directional_check(lambda p: rahf.score_pixels(p, PROMPTS), x, 1e-2, seed)
        assert abs(auto) > 1e-5  # the gradient is not vanishing: there is something to compare
        assert auto == pytest.approx(fd, rel=0.05, abs=1e-5)


def test_latent_gradient_through_vae_and_rahf_matches_finite_differences(gen, reward):
    """The guidance gradient itself: latents → VAE decode → [0, 1] → RAHF score."""
    lat = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(3)) * 0.5
    for seed in range(2):
        auto, fd = directional_check(lambda z: gen.score_latents(z, PROMPTS, reward), lat, 1e-2, seed)
        assert abs(auto) > 1e-6
        assert auto == pytest.approx(fd, rel=0.05, abs=1e-6)


def test_guidance_off_scale_zero_or_outside_its_steps_is_the_unguided_sample(gen, reward):
    """The manual loop reproduces the pipeline's sampling bit for bit: no shift, the same samples."""
    plain, lat = sample(gen)
    for kw in (dict(reward_scale=0.0), dict(reward_scale=50.0, guidance_steps=(0.99, 1.0))):
        imgs, lat2 = sample(gen, reward_guidance=reward, **kw)
        assert torch.equal(lat, lat2), kw
        assert all(np.array_equal(np.asarray(a), np.asarray(b)) for ra, rb in zip(plain, imgs) for a, b in zip(ra, rb))


def test_guidance_changes_samples_raises_the_reward_and_is_deterministic(gen, reward):
    _, lat = sample(gen)
    imgs, guided = sample(gen, reward_guidance=reward, reward_scale=20.0)
    again_imgs, again = sample(gen, reward_guidance=reward, reward_scale=20.0)
    assert torch.equal(guided, again)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for ra, rb in zip(imgs, again_imgs) for a, b in zip(ra, rb))
    assert (guided - lat).abs().mean() > 1e-3
    prompts = [p for p in PROMPTS for _ in range(2)]
    with torch.no_grad():
        before = gen.score_latents(lat.flatten(0, 1), prompts, reward)
        after = gen.score_latents(guided.flatten(0, 1), prompts, reward)
    assert (after > before).all() and after.mean() > before.mean() + 1e-3, (before, after)
    # Only the late steps: a smaller change than guiding all of them.
    _, late = sample(gen, reward_guidance=reward, reward_scale=20.0, guidance_steps=(0.5, 1.0))
    assert 0 < (late - lat).abs().mean() < (guided - lat).abs().mean()
    # A tight gradient clip bounds the change.
    _, clipped = sample(gen, reward_guidance=reward, reward_scale=20.0, grad_clip=1e-4)
    assert 0 < (clipped - lat).abs().max() < 0.05 < (guided - lat).abs().max()


def test_non_differentiable_rewards_are_refused_with_a_message(gen):
    with pytest.raises(GeneratorError, match="'judge' has none: use a differentiable reward"):
        gen.generate(PROMPTS, n=1, steps=2, reward_guidance="judge")
    with pytest.raises(GeneratorError, match="has none"):
        gen.generate(PROMPTS, n=1, steps=2, reward_guidance=get_reward("judge"))
    no_pixels = RAHFReward("rahf-plausibility:/port", object(), "plausibility")  # a predictor without score_pixels
    assert not no_pixels.differentiable
    with pytest.raises(RewardError, match="no differentiable pixel path"):
        no_pixels.score_pixels(torch.rand(1, 3, 8, 8), PROMPTS[:1])
    with pytest.raises(GeneratorError, match="has none"):
        gen.generate(PROMPTS, n=1, steps=2, reward_guidance=no_pixels)
    with pytest.raises(Exception, match="unknown reward"):
        gen.generate(PROMPTS, n=1, steps=2, reward_guidance="beauty")


def test_embedded_rahf_reward_is_differentiable():
    r = get_reward("rahf-plausibility")
    assert r.differentiable
    x = torch.rand(1, 3, 40, 40, requires_grad=True)
    (g,) = torch.autograd.grad(r.score_pixels(x, ["two red circles"]).sum(), x)
    assert g.abs().sum() > 0


@settings(max_examples=25, deadline=None, derandomize=True)
@given(lo=st.one_of(st.floats(-2, 2), st.just(float("nan"))), hi=st.one_of(st.floats(-2, 2), st.just(float("nan"))),
       clip=st.one_of(st.floats(-5, -1e-3), st.just(float("nan"))))
def test_bad_guidance_options_are_refused_before_any_work(gen, reward, lo, hi, clip):
    """A bad range or clip is refused by name; the refusal comes before sampling (cheap)."""
    bad_range = not (0 <= lo < hi <= 1)
    with pytest.raises(GeneratorError, match="guidance_steps|grad_clip"):
        gen.generate(PROMPTS, n=1, steps=2, reward_guidance=reward, guidance_steps=(lo, hi),
                     grad_clip=clip if not bad_range else 0.0)
    with pytest.raises(GeneratorError, match="reward_scale must be a finite number"):
        gen.generate(PROMPTS, n=1, steps=2, reward_guidance=reward, reward_scale=float("inf"))
