"""Rich Human Feedback Studio: the library behind the app (never imports streamlit).

The public entry points, importable from here (loaded on first use, so `import rhf_core` stays light):

    from rhf_core import open_dataset, load_rahf, load_port, load_generator, get_reward
    from rhf_core import rejection_sample, finetune, FinetuneConfig, train_rahf
    from rhf_core.repair import repair     # (`rhf_core.repair` and `rhf_core.judge` are modules)
"""

from importlib import import_module

from rhf_core.errors import (
    DatasetFormatError,
    DatasetNotFoundError,
    DatasetSpecError,
    ImageLoadError,
    RecordNotFoundError,
    RHFError,
)

# name → module that defines it (imported lazily: torch and diffusers are heavy).
ENTRY_POINTS = {
    "open_dataset": "rhf_core.data",
    "export": "rhf_core.data",
    "load_rahf": "rhf_core.rahf",
    "load_port": "rhf_core.rahf",
    "convert_port": "rhf_core.rahf",
    "train_rahf": "rhf_core.rahf.train",
    "evaluate_rahf": "rhf_core.rahf.evaluate",
    "load_generator": "rhf_core.t2i",
    "get_reward": "rhf_core.reward",
    "rejection_sample": "rhf_core.reward",
    "finetune": "rhf_core.align",
    "FinetuneConfig": "rhf_core.align",
}

__all__ = ["RHFError", "DatasetSpecError", "DatasetNotFoundError", "DatasetFormatError", "RecordNotFoundError",
           "ImageLoadError", *ENTRY_POINTS]


def __getattr__(name: str):
    if name in ENTRY_POINTS:
        return getattr(import_module(ENTRY_POINTS[name]), name)
    raise AttributeError(f"module 'rhf_core' has no attribute {name!r}")
