"""Aligning a text-to-image model with a reward: LoRA fine-tuning by reward-weighted likelihood (Lee et
al. 2023), Diffusion-DPO or reward backpropagation (DRaFT). Start reading at `loop.finetune`.

config      FinetuneConfig, the settings
data        the prompts, the model's own samples (D_model), pre-training pairs (D_pre), text embeddings
objectives  one class per objective over one denoising helper
lora        adding, saving and reading LoRA adapters
state       the resumable state and the settings it was trained with
loop        finetune()"""

from rhf_core.align.config import OBJECTIVES, FinetuneConfig
from rhf_core.align.data import (CONSTANT_REWARD_RTOL, ConstantRewardError, ModelSamples, encode_latents,
                                 fine_tune_prompts, is_shapes_generator, model_samples, pretrain_latents,
                                 pretrain_pairs)
from rhf_core.align.lora import (LORA_CONV_TARGETS, LORA_TARGETS, WEIGHTS_FILE, add_lora, load_adapter_info,
                                 save_adapter)
from rhf_core.align.loop import finetune, learning_rate
from rhf_core.align.objectives import (Denoiser, DiffusionDPO, DRaFT, RewardWeightedRegression, dpo_loss,
                                       preference_pairs)
from rhf_core.align.state import (STATE_FILE, FinetuneSettingsError, clear_state,
                                  load_finetune_state, run_settings, saved_steps, state_folder)
from rhf_core.training import x0_weight

__all__ = ["OBJECTIVES", "FinetuneConfig", "CONSTANT_REWARD_RTOL", "ConstantRewardError", "ModelSamples",
           "encode_latents", "fine_tune_prompts", "is_shapes_generator", "model_samples", "pretrain_latents", "pretrain_pairs",
           "LORA_CONV_TARGETS", "LORA_TARGETS", "WEIGHTS_FILE", "add_lora", "load_adapter_info", "save_adapter",
           "finetune", "learning_rate", "Denoiser", "DiffusionDPO", "DRaFT", "RewardWeightedRegression", "dpo_loss",
           "preference_pairs", "STATE_FILE", "FinetuneSettingsError", "clear_state",
           "load_finetune_state", "run_settings", "saved_steps", "state_folder", "x0_weight"]
