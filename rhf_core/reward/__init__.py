"""Lee et al. 2023: a learned reward, rejection sampling and reward-weighted fine-tuning."""

from rhf_core.reward.model import RewardError, RewardModel, load_reward_model
from rhf_core.perturb import perturbed_prompts
from rhf_core.reward.rewards import REWARD_NAMES, get_reward
from rhf_core.reward.sampling import rejection_sample, top_k

__all__ = ["RewardError", "RewardModel", "load_reward_model", "perturbed_prompts", "REWARD_NAMES", "get_reward",
           "rejection_sample", "top_k"]
