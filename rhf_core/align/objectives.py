"""The fine-tuning objectives, one class each, over one shared denoising helper (`Denoiser`):

- `RewardWeightedRegression` ("rwr"): Lee et al. 2023 sec. 4.3, the reward-weighted likelihood of the
  model's own samples, r · ‖pred − target‖².
- `DiffusionDPO` ("dpo"): Diffusion-DPO (Wallace et al. 2023) on pairs of samples of one prompt.
- `DRaFT` ("draft"): Clark et al. 2023, reward backpropagation through the sampler.

Each one checks at construction that it can train on what it was given (and refuses otherwise, before
any training), and returns the model term of one step's loss from `loss`. The pre-training term
(β · denoising loss on D_pre) is `pretrain_loss`."""

from __future__ import annotations

import numpy as np
import torch
from diffusers import DDPMScheduler

from rhf_core.align.config import FinetuneConfig
from rhf_core.align.data import (ModelSamples, PretrainLatents, check_reward_varies, model_samples,
                               reward_stats)
from rhf_core.align.state import RunRecord
from rhf_core.reward.model import RewardError, RewardModel
from rhf_core.training import PREDICTION_TYPES, min_snr_weight, snr, x0_weight

# DRaFT has no D_model: its reward is checked on this many prompts × 2 samples of the original model.
DRAFT_PROBE_PROMPTS = 8


def prediction_type(scheduler) -> str:
    """What the generator's UNet predicts, refused unless the objectives can train it."""
    kind = str(scheduler.config.get("prediction_type", "epsilon"))
    if kind not in PREDICTION_TYPES:
        raise RewardError(f"this generator's UNet predicts {kind!r}; fine-tuning trains "
                          f"{' or '.join(PREDICTION_TYPES)} models (SD 1.x, SD 2.x)")
    return kind


class Denoiser:
    """What every objective runs: the adapted UNet (`unet`) and the original one (`reference`, frozen),
    the noise schedule, the empty prompt's embedding, the run's random stream `gen` and its device.
    `predict` is the one guided-prediction helper; `loss` the per-sample denoising loss."""

    def __init__(self, cfg: FinetuneConfig, unet, reference, scheduler, empty: torch.Tensor,
                 gen: torch.Generator, device):
        self.cfg, self.unet, self.reference, self.empty = cfg, unet, reference, empty
        self.gen, self.device = gen, device
        self.sampler_class, self.sampler_config = type(scheduler), scheduler.config  # DRaFT samples with it
        # Noise is added as in training (DDPM's forward process, whatever sampler the pipeline ships).
        self.noise = DDPMScheduler.from_config(scheduler.config)
        self.prediction_type = prediction_type(scheduler)
        self.snr = snr(self.noise)
        self.t_max = int(self.noise.config.num_train_timesteps)

    def predict(self, net, noisy, t, cond, guided: bool) -> torch.Tensor:
        """`net`'s prediction (float32), with `guided` the classifier-free-guided one at `sample_guidance`,
        pred_u + w (pred_c − pred_u): what the sampler that made D_model used."""
        dev, w = self.device, self.cfg.sample_guidance
        dt = next(net.parameters()).dtype  # the reference UNet keeps the generator's dtype
        if guided and w != 1.0:
            both = net(torch.cat([noisy, noisy]).to(dev, dt), torch.cat([t, t]).to(dev),
                       torch.cat([cond, self.empty.expand_as(cond)]).to(dev, dt)).sample.float()
            pred_c, pred_u = both.chunk(2)
            return pred_u + w * (pred_c - pred_u)
        return net(noisy.to(dev, dt), t.to(dev), cond.to(dev, dt)).sample.float()

    def target(self, latents, noise, t) -> torch.Tensor:
        """What the UNet should predict: the noise ε, or for a v-prediction model v = √ᾱ ε − √(1−ᾱ) x0."""
        if self.prediction_type == "v_prediction":
            return self.noise.get_velocity(latents, noise, t)
        return noise

    def error(self, net, latents, noise, t, cond, guided: bool) -> torch.Tensor:
        """Per-sample mean squared error of `net`'s prediction against the target, (B,)."""
        noisy = self.noise.add_noise(latents, noise, t)
        pred = self.predict(net, noisy, t, cond, guided)
        return ((pred - self.target(latents, noise, t).to(self.device)) ** 2).mean(dim=(1, 2, 3))

    def loss(self, latents, cond, guided: bool = False, t_lo: int = 0, x0_cap: float = 0.0) -> torch.Tensor:
        """Per-sample denoising loss of the adapted UNet at a random timestep in [t_lo, T) (B,), weighted
        per timestep: x0-space with `x0_cap`, else min-SNR-γ with `snr_gamma`, else plain."""
        cfg = self.cfg
        if cfg.uncond_prob > 0 and not guided:  # the guided prediction has its unconditional branch already
            drop = torch.rand(len(cond), generator=self.gen) < cfg.uncond_prob
            cond = torch.where(drop[:, None, None], self.empty.expand_as(cond), cond)
        noise = torch.randn(latents.shape, generator=self.gen)
        t = torch.randint(t_lo, self.t_max, (len(latents),), generator=self.gen)
        loss = self.error(self.unet, latents, noise, t, cond, guided)
        if x0_cap > 0:
            return loss * x0_weight(self.snr[t], x0_cap, self.prediction_type).to(self.device)
        if cfg.snr_gamma > 0:  # the generator's own weighting, so the objective is the one it was trained on
            loss = loss * min_snr_weight(self.snr[t], cfg.snr_gamma, self.prediction_type).to(self.device)
        return loss


class Objective:
    """One fine-tuning objective. `prompts`: those it trains on, in the order of `cond` in `loss`."""

    name = ""
    log_key = ""  # what its term is called in the log
    log_sign = 1.0  # −1 where the term is a negated reward, logged as the reward
    prompts: list[str]

    def loss(self, d: Denoiser, cond: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        raise NotImplementedError

    def batch_rewards(self) -> list[float]:
        """Rewards of samples drawn by the last `loss` (DRaFT only)."""
        return []

    def info(self) -> dict:
        """Extra fields of adapter.json."""
        return {}

    def reward_stats(self, record: RunRecord) -> dict:
        """Statistics of the rewards it trained on (D_model's), for adapter.json."""
        return reward_stats(self.samples.rewards)


class RewardWeightedRegression(Objective):
    """Lee et al.'s reward-weighted likelihood: each sample's denoising loss weighted by its reward
    (clipped at 0), or with `reward_threshold` by 1 for samples reaching it and 0 otherwise."""

    name, log_key = "rwr", "reward_weighted_loss"

    def __init__(self, cfg: FinetuneConfig, samples: ModelSamples, generator):
        check_reward_varies(samples.rewards, generator, "every sample would get the same weight: plain fine-tuning "
                            "on the model's own samples")
        if cfg.reward_threshold > 0:
            weights = (samples.rewards >= cfg.reward_threshold).astype(np.float32)
            if not weights.any():
                raise RewardError(f"no sample reaches the reward threshold {cfg.reward_threshold}: lower it")
        else:
            weights = np.clip(samples.rewards, 0.0, None)  # a likelihood weight is ≥ 0
        self.cfg, self.samples, self.prompts = cfg, samples, samples.prompts
        self.weights = torch.from_numpy(weights)

    def reward_stats(self, record: RunRecord) -> dict:
        stats = super().reward_stats(record)
        if self.cfg.reward_threshold > 0:  # the filter: how many samples it kept
            kept = int(self.weights.sum())
            stats |= {"threshold": self.cfg.reward_threshold, "kept": kept,
                      "kept_share": round(kept / max(len(self.weights), 1), 4)}
        return stats

    def loss(self, d, cond, rng):
        cfg = self.cfg
        idx = torch.from_numpy(rng.integers(len(self.weights), size=cfg.batch_size))
        per_sample = d.loss(self.samples.latents[idx], cond[idx], cfg.guided_objective,
                            int(cfg.reward_t_min * d.t_max), cfg.reward_x0_cap)
        return (self.weights[idx].to(d.device) * per_sample).mean()


def preference_pairs(prompts: list[str], rewards: np.ndarray, margin: float) -> np.ndarray:
    """(better, worse) index pairs of samples of the same prompt whose rewards differ by ≥ margin."""
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(p, []).append(i)
    pairs = [(i, j) for idx in groups.values() for i in idx for j in idx if rewards[i] - rewards[j] >= margin]
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


def dpo_loss(err_w: torch.Tensor, err_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor,
             beta: float) -> torch.Tensor:
    """Diffusion-DPO per pair: −log σ(−β/2 · [(e_w − e_w^ref) − (e_l − e_l^ref)]), e being the
    denoising error at a shared timestep and noise. 0 when the adapter denoises the better sample
    much better than the original and the worse one much worse; log 2 when it is the original."""
    return -torch.nn.functional.logsigmoid(-0.5 * beta * ((err_w - ref_w) - (err_l - ref_l)))


class DiffusionDPO(Objective):
    """Diffusion-DPO on pairs of samples of one prompt whose rewards differ by at least `pair_margin`;
    a batch is half as many pairs as `batch_size`, each pair sharing its noise and timestep."""

    name, log_key = "dpo", "dpo_loss"

    def __init__(self, cfg: FinetuneConfig, samples: ModelSamples, generator):
        check_reward_varies(samples.rewards, generator, f"no two samples of one prompt differ in reward by "
                            f"{cfg.pair_margin}: there is no preference pair")
        self.cfg, self.samples, self.prompts = cfg, samples, samples.prompts
        self.pairs = preference_pairs(samples.prompts, samples.rewards, cfg.pair_margin)
        if not len(self.pairs):
            raise RewardError(f"no two samples of one prompt differ in reward by {cfg.pair_margin}: "
                              "lower --pair-margin or draw more samples per prompt")

    def loss(self, d, cond, rng):
        cfg, lat = self.cfg, self.samples.latents
        pair_idx = torch.from_numpy(self.pairs[rng.integers(len(self.pairs), size=max(1, cfg.batch_size // 2))])
        i_w, i_l = pair_idx[:, 0], pair_idx[:, 1]
        latents = torch.cat([lat[i_w], lat[i_l]])  # (2P, C, h, w): the better samples, then the worse
        pair_cond = torch.cat([cond[i_w], cond[i_l]])
        noise = torch.randn(lat[i_w].shape, generator=d.gen).repeat(2, 1, 1, 1)
        t = torch.randint(int(cfg.reward_t_min * d.t_max), d.t_max, (len(i_w),), generator=d.gen).repeat(2)
        err = d.error(d.unet, latents, noise, t, pair_cond, cfg.guided_objective)
        with torch.no_grad():
            ref = d.error(d.reference, latents, noise, t, pair_cond, cfg.guided_objective)
        n = len(i_w)
        return dpo_loss(err[:n], err[n:], ref[:n], ref[n:], cfg.dpo_beta).mean()

    def info(self):
        return {"pairs": int(len(self.pairs))}


class DRaFT(Objective):
    """Reward backpropagation: sample the batch's prompts with the adapted model, decode, score with a
    differentiable reward and ascend it through the last `draft_k` sampler steps (all with 0)."""

    name, log_key, log_sign = "draft", "sampled_reward", -1.0

    def __init__(self, cfg: FinetuneConfig, generator, reward, prompts: list[str]):
        # The reward's spread is checked on a few samples of the original model (DRaFT has no D_model).
        probe = prompts[:DRAFT_PROBE_PROMPTS]
        images = generator.generate(probe, n=2, seed=cfg.seed, steps=cfg.sample_steps, guidance=cfg.sample_guidance)
        rewards = reward([im for row in images for im in row], [p for p in probe for _ in range(2)])
        check_reward_varies(np.asarray(rewards), generator, "its gradient is zero")
        self.cfg, self.reward, self.prompts = cfg, reward, prompts
        self.vae = generator.pipe.vae
        self._rewards: list[float] = []
        # Frozen, but the gradient must pass through them to the adapter.
        self.vae.requires_grad_(False)
        if isinstance(reward, RewardModel):
            reward.encoders.model.requires_grad_(False)
            reward.head.requires_grad_(False)
        elif getattr(reward, "predictor", None) is not None:  # a RAHF reward: its network stays as it is
            reward.predictor.model.requires_grad_(False)

    def loss(self, d, cond, rng):
        cfg = self.cfg
        idx = torch.from_numpy(rng.integers(len(self.prompts), size=cfg.batch_size))
        sampler = d.sampler_class.from_config(d.sampler_config)  # a fresh one: set_timesteps changes it
        sampler.set_timesteps(cfg.sample_steps)
        side, channels = int(d.reference.config.sample_size), int(d.reference.config.in_channels)
        lat = torch.randn((len(idx), channels, side, side), generator=d.gen).to(d.device)  # (B, C, h, w)
        lat = lat * sampler.init_noise_sigma
        steps = sampler.timesteps
        first_grad = len(steps) - (cfg.draft_k or len(steps))
        batch_cond = cond[idx]
        for i, t in enumerate(steps):
            with torch.set_grad_enabled(i >= first_grad):
                pred = d.predict(d.unet, sampler.scale_model_input(lat, t), t.expand(len(idx)), batch_cond, True)
                lat = sampler.step(pred, t, lat).prev_sample
        x = self.vae.decode(lat.to(self.vae.dtype) / self.vae.config.scaling_factor, return_dict=False)[0].float()
        rewards = self.reward.score_pixels(((x + 1) / 2).clamp(0, 1), [self.prompts[i] for i in idx.tolist()])
        self._rewards = rewards.detach().cpu().tolist()
        return -rewards.mean()

    def batch_rewards(self):
        return self._rewards

    def reward_stats(self, record):
        return reward_stats(record.sampled_rewards)  # of its samples while training, resumed runs' included


def check_reward_fits(cfg: FinetuneConfig, reward) -> None:
    """DRaFT backpropagates through the reward: refuse one without a pixel-tensor path before any work."""
    if cfg.objective == "draft" and not getattr(reward, "differentiable", hasattr(reward, "score_pixels")):
        raise RewardError(f"the draft objective backpropagates through the reward, so it needs a differentiable "
                          f"one: {cfg.reward!r} is not (use --reward lee, or rahf-<score>[:DIR] with a trained RAHF)")


def make_objective(cfg: FinetuneConfig, generator, reward, prompts: list[str], progress) -> Objective:
    """The objective `cfg.objective` names, with its data: D_model sampled and scored for rwr and dpo
    (DRaFT samples afresh at every step)."""
    if cfg.objective == "draft":
        return DRaFT(cfg, generator, reward, prompts)
    samples = model_samples(cfg, generator, reward, prompts, progress)
    return (DiffusionDPO if cfg.objective == "dpo" else RewardWeightedRegression)(cfg, samples, generator)


def pretrain_loss(d: Denoiser, pre: PretrainLatents, rng: np.random.Generator, batch_size: int) -> torch.Tensor:
    """Lee et al.'s β term: the plain denoising loss on D_pre, each latent drawn afresh from its image's
    VAE posterior, as in pre-training."""
    jdx = torch.from_numpy(rng.integers(len(pre.mean), size=batch_size))
    latents = pre.mean[jdx] + pre.std[jdx] * torch.randn(pre.mean[jdx].shape, generator=d.gen)
    return d.loss(latents, pre.cond[jdx]).mean()
