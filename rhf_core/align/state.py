"""A fine-tune's resumable state: `cache/finetune-state/<name>/state.safetensors`, one file holding the
LoRA weights, the optimizer, the step, the log and the settings it was trained with, replaced atomically
every `save_every` steps (and after a slow step, and on any interruption). A run resumes it only with
the same settings (`run_settings`); other settings are refused, naming them (FinetuneSettingsError)."""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from safetensors import SafetensorError

from rhf_core.align.config import FinetuneConfig
from rhf_core.cache import atomic_write_bytes, cache_dir
from rhf_core.reward.model import RewardError
from rhf_core.training import digest, load_state, read_state_meta, state_bytes

STATE_FILE = "state.safetensors"
STATE_FORMAT = "rhf-finetune-state/1"
# Config fields that do not change the trained weights: what the run is called, where its adapter goes and
# how often its state is saved. Every other field does, `steps` included: the cosine learning-rate schedule
# spans `steps`, so the first 300 steps of a 600-step run are not those of a 300-step run, and a resumed
# state with other `steps` would be neither (start over with --no-resume to train longer).
NOT_SETTINGS = ("name", "out", "save_every")
SAVE_SECONDS = 45.0  # a save also comes after a step that ends this long after the last one
# Settings shown by name only in a mismatch message: paths, and digests of what the run reads.
_UNSHOWN = ("generator", "prompts", "pretrain_folder", "generator_weights", "reward_function", "prompt_list",
            "pretrain_files")
_META_KEYS = {"fingerprint", "settings", "log", "optimizer", "parts", "draft_rewards"}
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")


class FinetuneSettingsError(RewardError):
    """The saved state of a fine-tune was trained with other settings than this run's; `differences`
    names them ("lr: 0.0003 → 0.001", "generator weights", …)."""

    def __init__(self, message: str, differences: list[str]):
        super().__init__(message)
        self.differences = differences


def _files_id(folder, patterns: tuple[str, ...]) -> list:
    """(relative path, size, mtime) of the matching files under `folder`: changes when they are rewritten,
    and not when the folder is addressed by another path. No folder ("" or None): nothing (Path("") is the
    working directory, whose every file a reward without weights would otherwise digest)."""
    if not folder:
        return []
    root = Path(folder)
    files = sorted({f for pat in patterns for f in root.rglob(pat) if f.is_file()}) if root.is_dir() else []
    return [[str(f.relative_to(root)), f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def run_settings(cfg: FinetuneConfig, generator, reward, prompts: list[str]) -> dict:
    """Everything that changes the trained weights: the config fields (but NOT_SETTINGS), with floats as
    floats (beta=1 and beta=1.0 are one setting), and digests of what the paths and the reward name point
    at — the generator's weights, the reward's weights or function, the prompts read, the pre-training
    files — since a page passes its own generator and reward objects."""
    fields = FinetuneConfig.__dataclass_fields__
    out = {k: (float(v) if fields[k].type == "float" else v) for k, v in asdict(cfg).items() if k not in NOT_SETTINGS}
    root = getattr(generator, "root", None)
    out["generator_weights"] = digest(_files_id(root, ("*.safetensors", "*.bin")) if root and Path(root).is_dir()
                                      else str(getattr(generator, "name", "")))
    fn = reward if callable(reward) and hasattr(reward, "__qualname__") else type(reward)
    out["reward_function"] = digest([getattr(fn, "__module__", ""), getattr(fn, "__qualname__", ""),
                                     _files_id(getattr(reward, "path", None) or "", ("*.safetensors",))])
    out["prompt_list"] = digest(prompts)
    out["pretrain_files"] = digest(_files_id(cfg.pretrain_folder, ("*",))) if cfg.pretrain_folder else ""
    return out


def state_folder(name: str) -> Path:
    """Where fine-tune `name` keeps its resumable state (not created here)."""
    return cache_dir("finetune-state") / name


def read_meta(path: Path) -> dict:
    """The JSON metadata of a state file, without loading its tensors; a damaged file, or one that is not
    ours, is refused (never resumed)."""
    try:
        meta = read_state_meta(path, STATE_FORMAT)
        if not isinstance(meta.get("step"), int) or not _META_KEYS <= set(meta):
            raise ValueError("its step or settings are missing")
    except (SafetensorError, OSError, ValueError) as e:
        raise RewardError(f"the saved state of fine-tune {path.parent.name!r} cannot be read ({e}): "
                          "start over with --no-resume (discards it)") from None
    return meta


def load_finetune_state(path: Path) -> tuple[dict, dict, dict]:
    """(LoRA weights, optimizer state dict, metadata) of a state file."""
    read_meta(path)  # refuses a damaged or foreign file with the message above
    groups, opt_state, meta = load_state(path, STATE_FORMAT)
    return groups.get("lora", {}), opt_state, meta


def saved_steps(name: str) -> int:
    """Finished steps the saved state of fine-tune `name` holds (0 when there is none, or none this version
    can resume): the step a run with the same settings resumes from, what a stopped run has kept."""
    path = state_folder(name) / STATE_FILE
    if not path.is_file():
        return 0
    try:
        return read_meta(path)["step"]
    except RewardError:
        return 0


def clear_state(name: str) -> None:
    """Discard the saved state of fine-tune `name` (what --no-resume does first)."""
    shutil.rmtree(state_folder(name), ignore_errors=True)


def resumable_state(name: str, settings: dict) -> Path | None:
    """The state file to resume from, None when there is none; refuses a state trained with other
    settings, naming them, or one saved without its settings."""
    folder = state_folder(name)
    path = folder / STATE_FILE
    if not path.is_file():
        if (folder / "trainer.pt").is_file() or (folder / "lora.safetensors").is_file():
            raise FinetuneSettingsError(
                f"fine-tune {name!r} has a state saved by an older version, without its settings, so whether they "
                "are this run's cannot be told: start over with --no-resume (discards it)", ["unknown"])
        return None
    meta = read_meta(path)
    if meta.get("fingerprint") == digest(settings):
        return path
    old = meta.get("settings", {})
    diffs = []
    for k in sorted(set(old) | set(settings)):
        a, b = old.get(k, "(unset)"), settings.get(k, "(unset)")
        if a != b:
            diffs.append(k.replace("_", " ") if k in _UNSHOWN else f"{k}: {a!r} → {b!r}")
    diffs = diffs or ["settings"]
    raise FinetuneSettingsError(
        f"the saved state of fine-tune {name!r} ({meta.get('step', '?')} steps) was trained with other settings — "
        f"{'; '.join(diffs)}. Run with its settings to resume it, or start over from step 0 with --no-resume "
        "(discards it).", diffs)


class RunRecord:
    """What a run has done and keeps: the finished step, the log, the steps not yet logged (`parts`:
    the objective's and the pre-training term per step) and draft's sampled rewards. All of it travels
    in the state file, so a resumed run logs and reports what an uninterrupted one would."""

    def __init__(self, cfg: FinetuneConfig, settings: dict, log_key: str, log_sign: float = 1.0,
                 resume_meta: dict | None = None):
        self.cfg, self.settings, self.log_key, self.log_sign = cfg, settings, log_key, log_sign
        meta = resume_meta or {"step": 0, "log": [], "parts": [], "draft_rewards": []}
        self.start = self.done = self.saved_at = int(meta["step"])
        self.log: list[dict] = list(meta["log"])
        self.parts: list[tuple] = [tuple(p) for p in meta["parts"]]
        self.sampled_rewards: list[float] = list(meta["draft_rewards"])
        self.saved_time = self.t0 = time.time()

    def finish_step(self, model_term: float, pretrain_term: float, sampled_rewards=()) -> None:
        self.parts.append((model_term, pretrain_term))
        self.sampled_rewards.extend(sampled_rewards)
        self.done += 1

    def log_steps(self) -> None:
        """Log the steps finished since the last log entry: the mean objective term as `log_key` (times
        `log_sign`, −1 where the term is a negated reward) and the mean pre-training term."""
        if not self.parts:
            return
        model_term = float(np.mean([p[0] for p in self.parts]))
        self.log.append({"step": self.done, self.log_key: round(self.log_sign * model_term, 5),
                         "pretrain_loss": round(float(np.mean([p[1] for p in self.parts])), 5),
                         "seconds": round(time.time() - self.t0, 1)})
        self.parts, self.t0 = [], time.time()

    def save_due(self, stopped: bool) -> tuple[bool, bool]:
        """(log and save, save only) after the step just finished: every `save_every` steps, at the end and
        on a stop; a save alone after a step that ends SAVE_SECONDS after the last save (slow steps)."""
        if self.done % self.cfg.save_every == 0 or self.done == self.cfg.steps or stopped:
            return True, False
        return False, time.time() - self.saved_time >= SAVE_SECONDS

    def save(self, lora: dict, optimizer_state: dict, write: bool = True) -> None:
        """Replace the state file by one at the finished step (weights, optimizer, log and settings
        together); `write` False on the processes other than the main one."""
        if write:
            meta = {"step": self.done, "steps": self.cfg.steps, "fingerprint": digest(self.settings),
                    "settings": self.settings, "log": self.log, "parts": self.parts,
                    "draft_rewards": self.sampled_rewards}
            path = state_folder(self.cfg.name) / STATE_FILE
            atomic_write_bytes(path, state_bytes({"lora": lora}, optimizer_state, meta, STATE_FORMAT))
        self.saved_at, self.saved_time = self.done, time.time()

    def unsaved(self) -> bool:
        return self.done > self.saved_at


def check_name(name) -> None:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise RewardError(f"fine-tune name {name!r}: up to 100 letters, digits, '-', '_' or '.' (not first), "
                          "since it names folders")
