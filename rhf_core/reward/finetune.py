"""Reward fine-tuning moved to rhf_core/align/ (start at rhf_core/align/loop.py); these are its public
names, kept here for the modules that import them from this path."""

from rhf_core.align import (LORA_CONV_TARGETS, LORA_TARGETS, OBJECTIVES, STATE_FILE, ConstantRewardError,
                            FinetuneConfig, FinetuneSettingsError, add_lora, clear_state, dpo_loss, encode_latents,
                            fine_tune_prompts, finetune, is_shapes_generator, load_adapter_info,
                            load_finetune_state, preference_pairs, pretrain_pairs, run_settings, save_adapter,
                            saved_steps, state_folder, x0_weight)

__all__ = ["LORA_CONV_TARGETS", "LORA_TARGETS", "OBJECTIVES", "STATE_FILE", "ConstantRewardError", "FinetuneConfig",
           "FinetuneSettingsError", "add_lora", "clear_state", "dpo_loss", "encode_latents", "fine_tune_prompts",
           "finetune", "is_shapes_generator", "load_adapter_info", "load_finetune_state", "preference_pairs",
           "pretrain_pairs", "run_settings", "save_adapter", "saved_steps", "state_folder", "x0_weight"]
