"""rhf_core/align and the shared training toolbox (rhf_core/training.py) on tiny real pipelines built here:
a constant reward is refused before training, v-prediction models train on the velocity target, LoRA
stays float32 on a bfloat16 UNet, and any SD 1.x/2.x folder with a reward object and its own prompts
fine-tunes (ShapesWorld's prompts are refused for it)."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from rhf_core.align import (ConstantRewardError, Denoiser, FinetuneConfig, add_lora, finetune, load_adapter_info,
                            saved_steps, state_folder)
from rhf_core.align.data import CONSTANT_REWARD_RTOL, check_reward_varies
from rhf_core.align.objectives import prediction_type
from rhf_core.errors import InvalidArgumentError, RHFError
from rhf_core.reward.model import RewardError
from rhf_core.t2i import load_generator
from rhf_core.t2i.build import build_pipeline
from rhf_core.training import (EMA, load_state, min_snr_weight, read_state_meta, snr, state_bytes, warmup_cosine,
                               x0_weight)
from tests.test_reward import brightness
from tests.test_t2i import TINY

WEIGHTS = "pytorch_lora_weights.safetensors"
V_PRED = replace(TINY, prediction_type="v_prediction", sd2_layout=True)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Two tiny SD folders that are not ShapesWorld generators: SD 1.x-style (ε) and SD 2.x-style (v)."""
    root = tmp_path_factory.mktemp("align")
    out = {}
    for name, cfg in (("tiny-sd1", TINY), ("tiny-sd2", V_PRED)):
        build_pipeline(cfg, seed=4).save_pretrained(root / name)
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def gen(folders):
    return load_generator(folders["tiny-sd1"])


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a red car on a street\ntwo brown bears in the forest\n")
    return path


def config(tmp_path, prompts, **kw) -> FinetuneConfig:
    base = dict(name="align", out=str(tmp_path / "adapter"), prompts=str(prompts), per_prompt=2, beta=0.0, rank=4,
                steps=3, batch_size=2, lr=5e-2, save_every=3, uncond_prob=0.0, sample_steps=2, sample_guidance=2.0)
    return FinetuneConfig(**{**base, **kw})


def lora_b(adapter) -> dict:
    return {k: v for k, v in load_file(str(adapter / WEIGHTS)).items() if "lora_B" in k}


class DifferentiableConstant:
    """A reward with a pixel path whose value never changes."""

    def __call__(self, images, prompts):
        return np.full(len(images), 0.5, np.float32)

    def score_pixels(self, pixels, prompts):
        return pixels.mean(dim=(1, 2, 3)) * 0 + 0.5


# --- a constant reward (issue #20) -------------------------------------------------------------------------

@pytest.mark.parametrize("objective, says", [
    ("rwr", "every sample would get the same weight"),
    ("dpo", "no two samples of one prompt differ in reward by 0.001: there is no preference pair"),
    ("draft", "its gradient is zero"),
])
def test_a_constant_reward_stops_the_run_before_training(gen, tmp_path, prompts, objective, says):
    reward = DifferentiableConstant()
    cfg = config(tmp_path, prompts, objective=objective, pair_margin=1e-3)
    with pytest.raises(ConstantRewardError) as err:
        finetune(cfg, generator=gen, reward=reward, resume=False)
    message = str(err.value)
    assert isinstance(err.value, RHFError) and isinstance(err.value, RewardError)
    assert message.startswith("the reward gave the same value (0.5) to all 4 samples; it cannot rank them")
    assert says in message and "pick a reward that fits this generator: a reward trained on images like" in message
    assert saved_steps("align") == 0 and not state_folder("align").exists() and not (tmp_path / "adapter").exists()


@settings(max_examples=60, derandomize=True, deadline=None)
@given(value=st.floats(-1e6, 1e6, allow_nan=False), n=st.integers(1, 40),
       wobble=st.floats(0.0, 0.5 * CONSTANT_REWARD_RTOL))
def test_rewards_within_the_tolerance_are_constant_and_a_real_spread_is_not(gen, value, n, wobble):
    """Refused: every value the same up to float rounding (a spread under 1e-6 of the mean magnitude),
    on any scale. Accepted: one sample 1e-4 of the scale apart (or 1e-6 absolute around 0)."""
    r = np.full(n, value, np.float64)
    r[0] += wobble * abs(value)
    with pytest.raises(ConstantRewardError, match=f"to all {n} samples"):
        check_reward_varies(r, gen, "x")
    if n > 1:
        r[0] = value + max(1e-4 * abs(value), 1e-6)
        check_reward_varies(r, gen, "x")  # no error


# --- v-prediction ------------------------------------------------------------------------------------------

def test_a_v_prediction_model_trains_on_the_velocity_target(folders):
    """Denoiser.loss against the same draws computed by hand: v = √ᾱ ε − √(1−ᾱ) x0 from the pipeline's own
    ᾱ table, min-SNR weight min(SNR, γ) / (SNR + 1). The ε target gives another loss on the same draws."""
    sd2 = load_generator(folders["tiny-sd2"])
    sched, unet = sd2.pipe.scheduler, sd2.pipe.unet
    assert sched.config.prediction_type == "v_prediction"
    cfg = FinetuneConfig(uncond_prob=0.0, snr_gamma=5.0)
    x0 = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    cond = torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(2))
    d = Denoiser(cfg, unet, unet, sched, torch.zeros(16, 16), torch.Generator().manual_seed(7), torch.device("cpu"))
    assert d.prediction_type == "v_prediction"
    with torch.no_grad():
        got = d.loss(x0, cond)

        g = torch.Generator().manual_seed(7)  # the same draws, in the same order: noise, then timesteps
        eps = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, 1000, (3,), generator=g)
        a = sched.alphas_cumprod[t].float().view(-1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * eps
        v = a.sqrt() * eps - (1 - a).sqrt() * x0
        pred = unet(noisy, t, cond).sample
        snr_t = (a / (1 - a)).view(-1)
        weight = snr_t.clamp(max=5.0) / (snr_t + 1)
        want = ((pred - v) ** 2).mean(dim=(1, 2, 3)) * weight
        eps_loss = ((pred - eps) ** 2).mean(dim=(1, 2, 3)) * snr_t.clamp(max=5.0) / snr_t
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(got, eps_loss, rtol=1e-3)


def test_a_prediction_type_the_objectives_cannot_train_is_refused(folders):
    sched = load_generator(folders["tiny-sd1"]).pipe.scheduler
    assert prediction_type(sched) == "epsilon"
    sample = type(sched).from_config({**sched.config, "prediction_type": "sample"})
    with pytest.raises(RewardError, match="predicts 'sample'; fine-tuning trains epsilon or v_prediction models"):
        prediction_type(sample)


# --- any generator folder, a reward object ------------------------------------------------------------------

@pytest.mark.parametrize("folder", ["tiny-sd1", "tiny-sd2"])
@pytest.mark.parametrize("objective", ["rwr", "dpo"])
def test_any_sd_folder_with_a_reward_object_moves_the_adapter(folders, tmp_path, prompts, folder, objective):
    g = load_generator(folders[folder])
    cfg = config(tmp_path, prompts, objective=objective, pair_margin=1e-4, dpo_beta=500.0, name=f"any-{folder}")
    info = load_adapter_info(finetune(cfg, generator=g, reward=brightness, resume=False))
    assert info["complete"] and info["steps_done"] == 3 and info["reward_stats"]["n"] == 4
    b = lora_b(tmp_path / "adapter")
    assert b and all(torch.isfinite(v).all() for v in b.values())
    assert sum(float(v.abs().sum()) for v in b.values()) > 1e-3  # LoRA's B starts at 0


def test_shapesworld_prompts_are_refused_for_another_generator(gen, tmp_path):
    with pytest.raises(RewardError, match="is not a ShapesWorld generator.*give the prompts to fine-tune on as a "
                                          r"text file, one prompt a line \(--prompts FILE\)"):
        finetune(FinetuneConfig(name="no-prompts", out=str(tmp_path / "a"), steps=2), generator=gen,
                 reward=brightness, resume=False)
    assert not (tmp_path / "a").exists()


# --- dtype: a bf16 UNet, float32 adapters --------------------------------------------------------------------

def test_lora_stays_float32_on_a_bfloat16_unet(folders, tmp_path, prompts):
    g = load_generator(folders["tiny-sd1"], dtype="bfloat16")
    assert g.pipe.unet.dtype == torch.bfloat16
    import copy

    unet = copy.deepcopy(g.pipe.unet)
    unet.requires_grad_(False)
    params = add_lora(unet, 4)
    assert params and all(p.dtype == torch.float32 and p.requires_grad for p in params)
    assert unet.conv_in.weight.dtype == torch.bfloat16  # the frozen UNet keeps its dtype
    out = unet(torch.randn(1, 4, 8, 8).bfloat16(), torch.tensor([10]), torch.randn(1, 16, 16).bfloat16()).sample
    out.float().pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in params)
    assert any(float(p.grad.abs().sum()) > 0 for p in params)

    info = load_adapter_info(finetune(config(tmp_path, prompts, name="bf16"), generator=g, reward=brightness,
                                      resume=False))
    saved = load_file(str(tmp_path / "adapter" / WEIGHTS))
    assert info["complete"] and all(v.dtype == torch.float32 for v in saved.values())
    assert sum(float(v.abs().sum()) for k, v in saved.items() if "lora_B" in k) > 1e-3
    # The generator's own UNet is untouched: no adapter was added to it, and it keeps its dtype.
    assert g.pipe.unet.dtype == torch.bfloat16 and not any("lora" in n for n, _ in g.pipe.unet.named_parameters())


# --- the shared toolbox ------------------------------------------------------------------------------------

@settings(max_examples=80, derandomize=True, deadline=None)
@given(total=st.integers(1, 5000), warmup=st.integers(1, 300), data=st.data())
def test_warmup_cosine_warms_up_then_decays_to_zero(total, warmup, data):
    step = data.draw(st.integers(0, total + 10))
    f = warmup_cosine(step, total, warmup)
    assert 0.0 <= f <= 1.0
    assert f <= min(1.0, (step + 1) / warmup) + 1e-12  # never above the ramp
    assert warmup_cosine(step, total, warmup, "constant") == min(1.0, (step + 1) / warmup)
    if step >= total:
        assert f == pytest.approx(0.0, abs=1e-12)
    if warmup <= step < total - 1:
        assert warmup_cosine(step + 1, total, warmup) <= f  # past the warm-up it only decreases
    with pytest.raises(InvalidArgumentError, match="use 'cosine' or 'constant'"):
        warmup_cosine(step, total, warmup, "linear")


def test_fine_tune_schedule_is_bit_identical_to_the_inline_one_it_replaced_in_adamw():
    """Before the toolbox the fine-tune wrote lr·min(1, (s+1)/50)·½(1 + cos(πs/T)) inline. The toolbox's
    expression rounds differently in the last bit of a double in some steps; AdamW takes its step size as a
    float32, where the two agree at every step of the shipped configs (configs/lee-*.toml, draft-*.toml)."""
    differ = 0
    for lr, total in ((3e-4, 600), (3e-4, 250), (5e-2, 20)):
        for s in range(total):
            old = lr * min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * s / total))
            new = lr * warmup_cosine(s, total, 50)
            differ += old != new
            step_size = 1 - 0.9 ** (s + 1)  # Adam's bias correction at step s + 1
            assert np.float32(old / step_size) == np.float32(new / step_size), (lr, total, s)
    assert differ > 0  # the doubles do differ: the check above is what keeps the weights identical


def test_snr_weights_for_epsilon_and_v_targets():
    s = torch.tensor([100.0, 5.0, 1.0, 0.25])
    torch.testing.assert_close(min_snr_weight(s, 5.0), torch.tensor([0.05, 1.0, 1.0, 1.0]))
    torch.testing.assert_close(min_snr_weight(s, 5.0, "v_prediction"), torch.tensor([5 / 101, 5 / 6, 0.5, 0.2]))
    # x0-space: ‖x̂0 − x0‖² = ‖ε̂ − ε‖²/SNR = ‖v̂ − v‖²/(SNR + 1), capped
    torch.testing.assert_close(x0_weight(s, 20.0), torch.tensor([0.01, 0.2, 1.0, 4.0]))
    torch.testing.assert_close(x0_weight(s, 0.7, "v_prediction"), torch.tensor([1 / 101, 1 / 6, 0.5, 0.7]))


def test_state_file_round_trip_resumes_adamw_exactly_and_refuses_another_format(tmp_path, folders):
    """Two steps, save, load into a fresh model and optimizer, two more: the same weights as four straight."""
    def model_and_opt():
        torch.manual_seed(0)
        m = torch.nn.Linear(4, 3)
        return m, torch.optim.AdamW(m.parameters(), lr=0.1, weight_decay=0.01)

    def train(m, opt, steps):
        for i in steps:
            x = torch.randn(8, 4, generator=torch.Generator().manual_seed(i))
            opt.zero_grad()
            m(x).pow(2).mean().backward()
            opt.step()

    straight, opt = model_and_opt()
    train(straight, opt, range(4))
    m, opt = model_and_opt()
    train(m, opt, range(2))
    path = tmp_path / "state.safetensors"
    path.write_bytes(state_bytes({"model": m.state_dict()}, opt.state_dict(), {"step": 2, "log": [{"a": 1}]}, "t/1"))
    assert read_state_meta(path, "t/1")["step"] == 2
    groups, opt_state, meta = load_state(path, "t/1")
    assert meta == {"step": 2, "log": [{"a": 1}]}
    resumed, opt2 = model_and_opt()
    resumed.load_state_dict(groups["model"])
    opt2.load_state_dict(opt_state)
    train(resumed, opt2, range(2, 4))
    assert all(torch.equal(a, b) for a, b in zip(straight.parameters(), resumed.parameters()))
    with pytest.raises(ValueError, match="not a other/1 file"):
        read_state_meta(path, "other/1")

    ema = EMA({"m": resumed}, decay=0.9)
    ema.update({"m": straight})
    ema.save(tmp_path)
    again = EMA({"m": resumed}, decay=0.9)
    assert again.load(tmp_path) and again.updates == 1
    assert all(torch.equal(again.shadow["m"][k], ema.shadow["m"][k]) for k in ema.shadow["m"])
    assert snr(load_generator(folders["tiny-sd1"]).pipe.scheduler).shape == (1000,)


def test_t2i_refuses_an_older_pickled_state(tmp_path):
    from rhf_core.t2i.train import T2ITrainConfig, train_t2i

    (tmp_path / "state" / "vae").mkdir(parents=True)
    (tmp_path / "state" / "vae" / "trainer.pt").write_bytes(b"an older version's pickle")
    cfg = T2ITrainConfig(out=str(tmp_path / "out"), n_images=4, vae_steps=1, vae_batch=2, unet_steps=1, unet_batch=2,
                         state_dir=str(tmp_path / "state"), model=TINY)
    with pytest.raises(InvalidArgumentError, match="older version.*--no-resume"):
        train_t2i(cfg, resume=True)
