"""RAHF, the rich automatic human feedback predictor (RichHF, Liang et al. 2024)."""

from rhf_core.rahf.config import RAHFConfig, TextConfig, VisionConfig
from rhf_core.rahf.predictor import RAHF, CheckpointError, Prediction, load_rahf, new_rahf
from rhf_core.rahf.port import convert_port, load_port

__all__ = ["RAHF", "RAHFConfig", "VisionConfig", "TextConfig", "Prediction", "CheckpointError", "load_rahf", "new_rahf",
           "load_port", "convert_port"]

