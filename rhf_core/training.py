"""The training toolbox the project's training loops share (docs/structure.md): the warm-up + cosine
learning-rate schedule, an exponential moving average of weights, the signal-to-noise helpers of
diffusion training, the resumable-state file and small JSON helpers.

Used by rhf_core/t2i/train.py (the embedded generator) and rhf_core/align/ (reward fine-tuning); meant
for rhf_core/rahf/train.py as well. Each loop keeps its own steps; only what is the same in all of
them lives here."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save, save_file

from rhf_core.cache import atomic_write_text
from rhf_core.errors import InvalidArgumentError

SCHEDULES = ("cosine", "constant")


# --- learning rate ---------------------------------------------------------------------------------------

def warmup_cosine(step: int, total: int, warmup: int, schedule: str = "cosine") -> float:
    """The factor on the base learning rate at `step` (0-based) of `total`: a linear warm-up over `warmup`
    steps, then half a cosine to 0 at `total` ("cosine"), or flat ("constant", so that a longer run is
    the same as a resumed one)."""
    ramp = min(1.0, (step + 1) / max(warmup, 1))
    if schedule == "constant":
        return ramp
    if schedule != "cosine":
        raise InvalidArgumentError(f"unknown learning-rate schedule {schedule!r}: use "
                                   f"{' or '.join(map(repr, SCHEDULES))}")
    return ramp * 0.5 * (1 + math.cos(math.pi * min(step / max(total, 1), 1.0)))


# --- exponential moving average --------------------------------------------------------------------------

class EMA:
    """Exponential moving average of some modules' float parameters, with the usual warm-up
    (decay min(d, (1 + n) / (10 + n)) after n updates) so an average started late is not stale.
    `modules` maps a name (which names its file) to a module."""

    def __init__(self, modules: dict, decay: float, updates: int = 0):
        self.decay, self.updates = decay, updates
        self.shadow = {name: {k: v.detach().float().clone() for k, v in m.state_dict().items()}
                       for name, m in modules.items()}

    @torch.no_grad()
    def update(self, modules: dict) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for name, m in modules.items():
            for k, v in m.state_dict().items():
                s = self.shadow[name][k]
                if v.dtype.is_floating_point:
                    s.mul_(d).add_(v.detach().float(), alpha=1 - d)
                else:
                    s.copy_(v)

    def save(self, folder: Path) -> None:
        """One `ema_<name>.safetensors` per module, each replaced atomically, the update count inside."""
        for name, sd in self.shadow.items():
            tmp = folder / f"ema_{name}.safetensors.tmp"
            save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp), metadata={"updates": str(self.updates)})
            tmp.replace(folder / f"ema_{name}.safetensors")

    def load(self, folder: Path) -> bool:
        """Read what `save` wrote; False (and nothing changed) when a file is missing."""
        files = {name: folder / f"ema_{name}.safetensors" for name in self.shadow}
        if not all(f.is_file() for f in files.values()):
            return False
        for name, f in files.items():
            self.shadow[name] = load_file(str(f))
            with safe_open(str(f), "pt") as h:
                self.updates = int((h.metadata() or {}).get("updates", 0))
        return True

    def copy_to(self, modules: dict) -> None:
        for name, m in modules.items():
            m.load_state_dict({k: v.to(m.state_dict()[k].dtype) for k, v in self.shadow[name].items()})


# --- diffusion: signal-to-noise ratio --------------------------------------------------------------------

PREDICTION_TYPES = ("epsilon", "v_prediction")


def snr(scheduler) -> torch.Tensor:
    """Signal-to-noise ratio ᾱ / (1 − ᾱ) of every training timestep of a diffusers noise scheduler."""
    a = scheduler.alphas_cumprod.float()
    return a / (1 - a)


def min_snr_weight(snr_t: torch.Tensor, gamma: float, prediction_type: str = "epsilon") -> torch.Tensor:
    """Min-SNR-γ loss weight per sample (Hang et al. 2023, eq. 7 and its v-prediction form):
    min(SNR, γ) / SNR on an ε target, min(SNR, γ) / (SNR + 1) on a v target, since
    ‖v̂ − v‖² = ‖ε̂ − ε‖² · (SNR + 1) / SNR."""
    if prediction_type == "v_prediction":
        return snr_t.clamp(max=gamma) / (snr_t + 1)
    return snr_t.clamp(max=gamma) / snr_t


def x0_weight(snr_t: torch.Tensor, cap: float, prediction_type: str = "epsilon") -> torch.Tensor:
    """Per-timestep factor turning a denoising MSE into the x0-space error, capped where the SNR reaches 0
    at the end of the schedule: ‖x̂0 − x0‖² = ‖ε̂ − ε‖² / SNR = ‖v̂ − v‖² / (SNR + 1)."""
    if prediction_type == "v_prediction":
        return (1.0 / (snr_t + 1)).clamp(max=cap)
    return (1.0 / snr_t.clamp(min=1e-12)).clamp(max=cap)


# --- resumable state -------------------------------------------------------------------------------------

def state_bytes(groups: dict[str, dict[str, torch.Tensor]], optimizer_state: dict, meta: dict, fmt: str) -> bytes:
    """One safetensors file holding a run's state: tensors by group (`<group>/<key>`), the optimizer's
    tensors (`opt/<param>/<name>`) and, as JSON metadata, the rest of the optimizer state and `meta`
    (step, log, …), marked with the format `fmt`. One file, so that weights, optimizer and step can
    never disagree; safetensors, so that resuming never unpickles anything."""
    tensors = {f"{group}/{k}": v.detach().cpu().contiguous() for group, sd in groups.items() for k, v in sd.items()}
    opt_json = {"param_groups": optimizer_state["param_groups"], "state": {}}
    for idx, entry in optimizer_state["state"].items():
        opt_json["state"][str(idx)] = {}
        for k, v in entry.items():
            if torch.is_tensor(v):
                tensors[f"opt/{idx}/{k}"] = v.detach().cpu().contiguous()
            else:
                opt_json["state"][str(idx)][k] = v
    metadata = {"format": fmt, "optimizer": json.dumps(opt_json), **{k: json.dumps(v) for k, v in meta.items()}}
    return save(tensors, metadata)


def read_state_meta(path: Path, fmt: str) -> dict:
    """The JSON metadata of a state file (the optimizer's under "optimizer"), without loading its tensors.
    Raises ValueError for a file of another format, safetensors' error for a damaged one."""
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != fmt:
        raise ValueError(f"not a {fmt} file")
    return {k: json.loads(v) for k, v in meta.items() if k != "format"}


def load_state(path: Path, fmt: str) -> tuple[dict[str, dict[str, torch.Tensor]], dict, dict]:
    """(tensors by group, optimizer state dict, metadata) of a file `state_bytes` wrote."""
    meta = read_state_meta(path, fmt)
    with safe_open(str(path), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    opt_json = meta.pop("optimizer")
    state = {int(i): dict(entry) for i, entry in opt_json["state"].items()}
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        group, rest = k.split("/", 1)
        if group == "opt":
            i, name = rest.split("/", 1)
            state.setdefault(int(i), {})[name] = v
        else:
            groups.setdefault(group, {})[rest] = v
    return groups, {"state": state, "param_groups": opt_json["param_groups"]}, meta


# --- JSON ------------------------------------------------------------------------------------------------

def digest(obj) -> str:
    """A short stable hash of a JSON-able object (keys sorted; other objects by their str)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_json(path: str | Path, obj) -> None:
    """Indented JSON with a final newline, written atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def read_json(path: str | Path):
    return json.loads(Path(path).read_text())
