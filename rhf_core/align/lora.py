"""LoRA adapters on the UNet: add them, save them as diffusers LoRA weights beside `adapter.json`, read
that back. An adapter folder is written whole (a temporary folder renamed into place)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

from rhf_core.reward.model import RewardError
from rhf_core.training import read_json, write_json

WEIGHTS_FILE = "pytorch_lora_weights.safetensors"
INFO_FILE = "adapter.json"
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
# With --lora-convs the residual blocks' convolutions and time projections are adapted too.
LORA_CONV_TARGETS = ["conv1", "conv2", "time_emb_proj"]


def add_lora(unet, rank: int, convs: bool = False) -> list[torch.nn.Parameter]:
    """Add rank-`rank` LoRA adapters (A Gaussian, B zero: the UNet is unchanged until trained) and return
    their parameters, the only trainable ones. They are float32 whatever the UNet's dtype: a bf16/fp16 UNet
    stays frozen in its dtype while the adapter's small updates are not rounded away."""
    targets = LORA_TARGETS + (LORA_CONV_TARGETS if convs else [])
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=targets))
    params = [p for p in unet.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    return params


def adapter_weights(unet) -> dict[str, torch.Tensor]:
    """The adapter's weights under PEFT's own key names (lora_A / lora_B), which diffusers loads as they are."""
    return get_peft_model_state_dict(unet)


def set_adapter_weights(unet, weights: dict[str, torch.Tensor]) -> None:
    set_peft_model_state_dict(unet, weights)


def check_adapter_folder(path: Path) -> None:
    """The adapter folder is replaced as a whole: refuse one that holds anything but an adapter."""
    if path.exists() and (not path.is_dir() or (any(path.iterdir()) and not (path / INFO_FILE).is_file())):
        raise RewardError(f"{path} exists and is not an adapter folder (no {INFO_FILE}): it would be replaced; "
                          "pick another --out")


def save_adapter(unet, path: Path, info: dict) -> None:
    """Write the adapter folder (weights + adapter.json) as a whole: built in a temporary folder beside it,
    then renamed into place, so a reader or a crash never leaves new weights with an old adapter.json."""
    path = Path(path)
    check_adapter_folder(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # PEFT's key names: converting them to diffusers' older names covers attention layers only, and a
    # file mixing both was read as PEFT and its attention adapters silently dropped.
    state = adapter_weights(unet)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.saving-"))
    try:
        StableDiffusionPipeline.save_lora_weights(save_directory=str(tmp), unet_lora_layers=state,
                                                  safe_serialization=True)
        write_json(tmp / INFO_FILE, info)
        for f in tmp.iterdir():
            f.chmod(0o644)
            with open(f, "rb") as fh:  # on disk before the rename makes it visible
                os.fsync(fh.fileno())
        tmp.chmod(0o755)  # mkdtemp makes it private
        _replace_folder(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace_folder(new: Path, path: Path) -> None:
    """Rename `new` to `path`. A folder cannot be renamed over a non-empty one, so an existing `path` is
    first renamed aside (for an instant there is no folder, never a mixed one), then removed."""
    old = None
    if path.exists():
        old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old-"))
        os.replace(path, old)  # onto the empty placeholder
    try:
        os.replace(new, path)
    except BaseException:
        if old is not None:
            os.replace(old, path)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def load_adapter_info(path: str | Path) -> dict:
    """The adapter.json of an adapter folder `finetune` wrote (config, reward statistics, log)."""
    p = Path(path) / INFO_FILE
    if not p.is_file():
        raise RewardError(f"{path} holds no {INFO_FILE} (not an adapter written by `finetune`)")
    return read_json(p)
