"""Where the shipped checkpoints live: the one place their paths are built (each folder has its
metrics.json; configs/*.toml retrain them, docs/experiments/ says how they were measured)."""

from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
RAHF_CHECKPOINT = ASSETS / "rahf-shapes"  # the embedded RAHF (ShapesWorld only)
GENERATOR = ASSETS / "t2i-shapes"  # the embedded text-to-image pipeline
CLIP_ENCODERS = ASSETS / "clip-shapes"  # the small CLIP the reward's encoders come from
REWARD_MODEL = ASSETS / "reward-shapes"  # Lee et al.'s reward trained on ShapesWorld judge labels
ADAPTERS = ASSETS / "adapters"  # LoRA adapters of the embedded generator
