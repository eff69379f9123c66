"""The settings of a reward fine-tune (`python -m rhf_core finetune`), one commented field each."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rhf_core.cache import cache_dir

OBJECTIVES = ("rwr", "dpo", "draft")

# Named recipes (`rhf finetune --preset NAME`, `FinetuneConfig.preset(NAME)`); flags override them.
PRESETS: dict[str, dict] = {
    # The RichHF paper's use of predicted plausibility (Liang et al. 2024, §5.2): generate, keep the samples
    # the RAHF model finds plausible, fine-tune on them (LoRA here) with the pre-training term. The
    # threshold 0.7 was set on the embedded generator's samples of 16 training prompts (train[100:116],
    # 128 samples at guidance 7.5) before any fine-tune: it keeps 47% of them, of which 8% are implausible by
    # the judge against 71% of the rejected ones (41% overall).
    "richhf-plausibility": {"name": "richhf-plausibility", "reward": "rahf-plausibility", "objective": "rwr",
                            "reward_threshold": 0.7, "beta": 1.0},
}


@dataclass
class FinetuneConfig:
    # What the run is called: names its resumable state (cache/finetune-state/<name>) and default adapter folder.
    name: str = "lee-shapes"
    out: str = ""  # default: cache/adapters/<name>
    generator: str = ""  # a diffusers pipeline folder or hub id; "" = the embedded ShapesWorld generator
    reward: str = "lee"  # a reward spec (rhf_core/reward/rewards.py), when no reward object is passed in
    # "train" = the reward's ShapesWorld training prompts (ShapesWorld generators only), or a text file,
    # one prompt a line.
    prompts: str = "train"
    n_prompts: int = 300
    per_prompt: int = 8
    beta: float = 1.0
    pretrain_folder: str = ""  # image–caption pairs for a real model (ShapesWorld renders are used otherwise)
    n_pretrain: int = 4000
    rank: int = 8
    steps: int = 600
    batch_size: int = 32
    lr: float = 3e-4
    # Share of each batch trained with the empty prompt, as the base model was: classifier-free guidance
    # amplifies any untrained drift of the unconditional branch.
    uncond_prob: float = 0.1
    # > 0: min-SNR-γ weighting of the denoising loss per timestep; the embedded generator was trained
    # with γ = 5. 0 = the plain ε-MSE (or v-MSE) of Stable Diffusion.
    snr_gamma: float = 5.0
    # Classifier-free guidance of the samples in D_model (the comparison samples at 7.5). Fitting guided
    # samples with the plain conditional loss and then guiding again at inference guides twice
    # (over-saturated, implausible images); the guided objective below avoids that.
    sample_guidance: float = 7.5
    # Fit the sampler that made D_model rather than the conditional branch: the reward-weighted loss
    # is taken on the classifier-free-guided prediction ε_u + w (ε_c − ε_u) at w = sample_guidance, so
    # guided samples are fitted as what they are and sampling at that guidance afterwards guides once.
    guided_objective: bool = True
    # > 0: Lee et al.'s filtered variant: weight 1 for samples whose reward reaches this, 0 otherwise.
    reward_threshold: float = 0.0
    # > 0: the reward-weighted term draws its timesteps from the noisiest (1 − this) share of the
    # schedule only, where layout, count and colour are decided; 0 = all timesteps, as Lee et al.
    reward_t_min: float = 0.0
    # Adapt the residual blocks' convolutions and time projections as well as the attention projections.
    lora_convs: bool = False
    # > 0: the reward-weighted term is an x0-space error (ε-MSE / SNR, the weight capped at this) instead
    # of min-SNR ε-MSE. Count, colour and layout are decided at low SNR, where the ε-error of a wrong
    # layout is tiny and the low-noise texture error swamps it; in x0 space it is what the loss measures.
    reward_x0_cap: float = 0.0
    # "rwr": Lee et al.'s reward-weighted likelihood. "dpo": Diffusion-DPO (Wallace et al. 2023) on
    # pairs of samples of one prompt whose rewards differ by at least `pair_margin`: the adapter is
    # pushed to denoise the better sample of each pair better, and the worse one worse, than the
    # original model does. Reward-weighted likelihood only fits the good samples, which the model
    # already fits; the pairs also say what the bad ones got wrong.
    objective: str = "rwr"
    dpo_beta: float = 2000.0
    pair_margin: float = 0.5
    # "draft": reward backpropagation (DRaFT, Clark et al. 2023; AlignProp): each step samples the batch's
    # prompts with the adapted model at `sample_guidance`, decodes, scores with a differentiable reward
    # (lee) and ascends r through the sampler. The gradient reaches the first, noisiest denoising steps,
    # where count and layout are decided, which no denoising loss on fixed samples does. `draft_k` > 0
    # backpropagates through the last k sampler steps only (DRaFT-K); 0 = all of them.
    draft_k: int = 0
    sample_steps: int = 25
    seed: int = 0
    # Steps between saves of the resumable state: at most what a kill -9 loses. A step of the default
    # objective (rwr, batch 32, β term on) takes about 3 s on a 2-core CPU (2.1–4.2 CPU-s measured), so 10
    # steps lose 30–40 s; a save costs milliseconds. Slower steps (draft: minutes each on a CPU) are also
    # saved once SAVE_SECONDS (rhf_core/align/state.py) have passed since the last save.
    save_every: int = 10

    @classmethod
    def preset(cls, name: str, **overrides) -> "FinetuneConfig":
        """The named recipe's settings (PRESETS), with `overrides` on top."""
        if name not in PRESETS:
            raise ValueError(f"no fine-tuning preset {name!r}: the presets are {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else cache_dir("adapters") / self.name
