"""Training RAHF on any dataset spec (`python -m rhf_core train-rahf`).

Runs unchanged under `accelerate launch` on several GPUs or nodes; single-process on a CPU here.
Losses (after RichHF sec. 4.3): per-pixel loss for heatmaps with non-zero target pixels weighted
up so sparse maps do not collapse to all-zero (binary cross-entropy against the soft heat rather
than the paper's MSE, whose gradient vanishes through a saturated sigmoid); MSE for scores; binary
cross-entropy per prompt word against its misalignment strength. Augmentation: random horizontal flips and mild random crops,
applied identically to the image and its heatmaps (words and scores are unchanged by either).
Resumable: `checkpoint/` holds the latest weights and the optimiser state.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rhf_core.errors import DatasetFormatError
from rhf_core.cache import atomic_write_text, cache_dir
from rhf_core.data import open_dataset
from rhf_core.dataset import HEATMAP_NAMES, SCORE_NAMES, Dataset
from rhf_core.heatmaps import resize_heatmap
from rhf_core.rahf.config import RAHFConfig
from rhf_core.rahf.predictor import RAHF, new_rahf


@dataclass
class TrainConfig:
    # Dataset spec to train on, and the splits used for training and for choosing the best epoch.
    data: str = "shapes:n=12000,seed=0"
    train_split: str = "train"
    val_split: str = "dev"
    # Output folder: the best checkpoint (config.json + model.safetensors) and train_log.json.
    out: str = "cache/rahf-run"
    # Where the resumable state (latest weights + optimiser) lives; "" = cache/rahf-train/<out name>.
    state_dir: str = ""
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    # Extra weight of non-zero heatmap pixels in the MSE (0 = plain MSE).
    # (30 without the CC term below, so sparse maps do not collapse; with it, 1 keeps levels calibrated.)
    heatmap_pos_weight: float = 1.0
    # Weight of (1 − CC) between predicted and label map, over collected non-empty maps: the
    # saliency-style loss that targets the shape of the map (CC, NSS) rather than each pixel's level.
    # The embedded checkpoint: implausibility CC 0.248 → 0.396 with it (and pos weight 1 instead of 30).
    heatmap_cc_loss: float = 1.0
    # Loss weights of the three heads.
    heatmap_loss: float = 1.0
    score_loss: float = 2.0
    word_loss: float = 0.5
    augment: bool = True
    seed: int = 0
    # Cap on training records (0 = all), for quick runs and tests.
    max_records: int = 0
    model: RAHFConfig = field(default_factory=RAHFConfig)


@dataclass
class Arrays:
    """A dataset split as tensors a training loop can index."""

    images: np.ndarray  # (N, S, S, 3) uint8
    heatmaps: np.ndarray  # (N, 2, S, S) float16
    heat_mask: np.ndarray  # (N, 2) bool: heatmap collected
    scores: np.ndarray  # (N, 4) float32
    score_mask: np.ndarray  # (N, 4) bool
    words: list[list[str]]
    word_targets: list[list[float]]

    def __len__(self):
        return len(self.images)


def dataset_arrays(ds: Dataset, size: int, progress: Callable | None = None) -> Arrays:
    """Decode every record of `ds` (images resized to `size`); records without an image are dropped."""
    from PIL import Image

    imgs, heats, hmask, scores, smask, words, wt = [], [], [], [], [], [], []
    for i in range(len(ds)):
        rec = ds[i]
        img = rec.image
        if img is None:
            continue
        imgs.append(np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.uint8))
        h = np.zeros((len(HEATMAP_NAMES), size, size), np.float16)
        m = np.zeros(len(HEATMAP_NAMES), bool)
        for k, name in enumerate(HEATMAP_NAMES):
            if name in rec.heatmaps:
                h[k] = resize_heatmap(rec.heatmaps[name], (size, size))
                m[k] = True
        heats.append(h)
        hmask.append(m)
        scores.append([rec.scores.get(s, 0.0) for s in SCORE_NAMES])
        smask.append([s in rec.scores for s in SCORE_NAMES])
        words.append([t for t, _ in rec.words])
        wt.append([float(s) for _, s in rec.words])
        if progress is not None and (i % 500 == 0 or i == len(ds) - 1):
            progress(i + 1, len(ds))
    if not imgs:
        raise DatasetFormatError(f"{ds.spec}: no record with an image to train on")
    return Arrays(np.stack(imgs), np.stack(heats), np.array(hmask), np.array(scores, np.float32),
                  np.array(smask), words, wt)


def augment_batch(pixels: torch.Tensor, heatmaps: torch.Tensor, gen: torch.Generator):
    """Random horizontal flip and a mild random crop (85–100% of the side), per sample."""
    b, _, s, _ = pixels.shape
    out_p, out_h = pixels.clone(), heatmaps.clone()
    for i in range(b):
        p, h = out_p[i], out_h[i]
        if torch.rand(1, generator=gen).item() < 0.5:
            p, h = p.flip(-1), h.flip(-1)
        if torch.rand(1, generator=gen).item() < 0.5:
            side = int(s * (0.85 + 0.15 * torch.rand(1, generator=gen).item()))
            y0 = int(torch.randint(0, s - side + 1, (1,), generator=gen))
            x0 = int(torch.randint(0, s - side + 1, (1,), generator=gen))
            p = F.interpolate(p[None, :, y0:y0 + side, x0:x0 + side], size=(s, s), mode="bilinear", align_corners=False)[0]
            h = F.interpolate(h[None, :, y0:y0 + side, x0:x0 + side], size=(s, s), mode="bilinear", align_corners=False)[0]
        out_p[i], out_h[i] = p, h
    return out_p, out_h


def cc_loss(logits: torch.Tensor, target: torch.Tensor, collected: torch.Tensor) -> torch.Tensor:
    """Mean 1 − Pearson correlation between sigmoid(logits) and the target, (B, K, S, S) each, over the
    maps that were collected (`collected`, (B, K)) and flag something; 0 when there are none."""
    p = torch.sigmoid(logits).flatten(2)
    t = target.flatten(2)
    pc, tc = p - p.mean(-1, keepdim=True), t - t.mean(-1, keepdim=True)
    cc = (pc * tc).sum(-1) / torch.sqrt((pc ** 2).sum(-1) * (tc ** 2).sum(-1) + 1e-8)
    m = collected * (t.amax(-1) > 0.01).float()
    return ((1 - cc) * m).sum() / m.sum().clamp(min=1)


def rahf_loss(out: dict, batch: dict, cfg: TrainConfig) -> tuple[torch.Tensor, dict]:
    """Weighted heatmap MSE + score MSE + word BCE, each over the labels that exist."""
    # Heatmaps: per-sample weighted binary cross-entropy against the soft heat, over collected maps.
    # (The paper's MSE on sigmoid outputs stalls here: once the head predicts background
    # everywhere, the sigmoid saturates and the sparse positives no longer pull it back.)
    target_h = batch["heatmaps"]
    w = 1.0 + cfg.heatmap_pos_weight * (target_h > 0.01).float()
    bce_h = F.binary_cross_entropy_with_logits(out["heatmaps"], target_h, reduction="none")
    per_map = (w * bce_h).flatten(2).sum(-1) / w.flatten(2).sum(-1)  # (B, 2)
    hm = batch["heat_mask"].float()
    heat = (per_map * hm).sum() / hm.sum().clamp(min=1)
    if cfg.heatmap_cc_loss > 0:
        heat = heat + cfg.heatmap_cc_loss * cc_loss(out["heatmaps"], target_h, hm)
    # Scores.
    sm = batch["score_mask"].float()
    score = (((torch.sigmoid(out["scores"]) - batch["scores"]) ** 2) * sm).sum() / sm.sum().clamp(min=1)
    # Words: logits (B, L') against strengths padded to (B, L).
    logits = out["words"]
    tgt, wmask = batch["word_targets"], batch["word_mask"]
    length = min(logits.shape[1], tgt.shape[1])
    bce = F.binary_cross_entropy_with_logits(logits[:, :length], tgt[:, :length], reduction="none")
    m = wmask[:, :length].float()
    word = (bce * m).sum() / m.sum().clamp(min=1)
    total = cfg.heatmap_loss * heat + cfg.score_loss * score + cfg.word_loss * word
    return total, {"heatmap": heat.item(), "score": score.item(), "word": word.item()}


def make_batch(arr: Arrays, idx: np.ndarray, max_words: int) -> dict:
    words = [arr.words[i][:max_words] for i in idx]
    length = max(1, max(len(w) for w in words))
    targets = torch.zeros(len(idx), length)
    mask = torch.zeros(len(idx), length, dtype=torch.bool)
    for j, i in enumerate(idx):
        t = arr.word_targets[i][:max_words]
        targets[j, : len(t)] = torch.tensor(t)
        mask[j, : len(t)] = True
    return {
        "pixels": torch.from_numpy(arr.images[idx]).permute(0, 3, 1, 2).float() / 255.0,
        "heatmaps": torch.from_numpy(arr.heatmaps[idx].astype(np.float32)),
        "heat_mask": torch.from_numpy(arr.heat_mask[idx]),
        "scores": torch.from_numpy(arr.scores[idx]),
        "score_mask": torch.from_numpy(arr.score_mask[idx]),
        "words": words,
        "word_targets": targets,
        "word_mask": mask,
    }


def _to(batch: dict, device) -> dict:
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


@torch.no_grad()
def validation_loss(rahf: RAHF, arr: Arrays, cfg: TrainConfig, device) -> float:
    rahf.model.eval()
    total, n = 0.0, 0
    for start in range(0, len(arr), cfg.batch_size):
        idx = np.arange(start, min(start + cfg.batch_size, len(arr)))
        batch = _to(make_batch(arr, idx, cfg.model.max_words), device)
        loss, _ = rahf_loss(rahf.model(batch["pixels"], batch["words"]), batch, cfg)
        total += float(loss) * len(idx)
        n += len(idx)
    return total / max(n, 1)


def train_rahf(cfg: TrainConfig, resume: bool = True, progress: Callable[[int, int], None] | None = None,
               should_stop: Callable[[], bool] | None = None) -> RAHF:
    """Train, keeping the best epoch by validation loss; returns the best model."""
    from accelerate import Accelerator

    accelerator = Accelerator()
    out = Path(cfg.out)
    ckpt = Path(cfg.state_dir) if cfg.state_dir else cache_dir("rahf-train") / out.resolve().name
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)

    # 1. Data
    ds = open_dataset(cfg.data)
    train_ds = ds.split(cfg.train_split)
    if cfg.max_records:
        train_ds = train_ds.subset(np.arange(min(cfg.max_records, len(train_ds))))
    val_ds = ds.split(cfg.val_split)
    if len(val_ds) == 0:  # no dev split: hold out 10% of training records
        if len(train_ds) < 2:
            raise DatasetFormatError(f"{ds.spec}: {len(train_ds)} record(s) in split {cfg.train_split!r} and no "
                                     f"{cfg.val_split!r} split; training needs at least 2 (one is held out)")
        k = max(1, len(train_ds) // 10)
        val_ds, train_ds = train_ds.subset(np.arange(k)), train_ds.subset(np.arange(k, len(train_ds)))
    if cfg.max_records:
        val_ds = val_ds.subset(np.arange(min(max(cfg.max_records // 5, 8), len(val_ds))))
    size = cfg.model.image_size
    train = dataset_arrays(train_ds, size)
    val = dataset_arrays(val_ds, size)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    accelerator.print(f"RAHF training: {len(train)} train / {len(val)} val records, {steps_per_epoch} steps per "
                      f"epoch × {cfg.epochs} epochs, batch {cfg.batch_size} × {accelerator.num_processes} processes, "
                      f"variant {cfg.model.variant}, device {accelerator.device}")

    # 2. Model, optimiser, schedule (cosine with a short warm-up)
    rahf = new_rahf(cfg.model, device=str(accelerator.device), seed=cfg.seed)
    opt = torch.optim.AdamW(rahf.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total_steps = steps_per_epoch * cfg.epochs
    warmup = min(200, total_steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(warmup, 1)) * 0.5 * (1 + math.cos(math.pi * min(s / max(total_steps, 1), 1.0))))
    model, opt = accelerator.prepare(rahf.model, opt)
    start_epoch, best, log = 0, float("inf"), []
    if resume and (ckpt / "trainer_state.pt").is_file():
        from safetensors.torch import load_file

        state = torch.load(ckpt / "trainer_state.pt", weights_only=True)
        accelerator.unwrap_model(model).load_state_dict(load_file(str(ckpt / "model.safetensors")))
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start_epoch, best, log = int(state["epoch"]), float(state["best"]), json.loads(state["log"])
        accelerator.print(f"resumed from {ckpt} at epoch {start_epoch}")

    # 3. Train
    gen = torch.Generator().manual_seed(cfg.seed + start_epoch)
    rng = np.random.default_rng(cfg.seed + start_epoch)
    shard = np.arange(accelerator.process_index, len(train), accelerator.num_processes)
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        order = rng.permutation(shard)
        bar = tqdm(range(0, len(order), cfg.batch_size), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   disable=not accelerator.is_local_main_process, leave=False)
        t0, parts = time.time(), []
        for start in bar:
            batch = make_batch(train, order[start:start + cfg.batch_size], cfg.model.max_words)
            if cfg.augment:
                batch["pixels"], batch["heatmaps"] = augment_batch(batch["pixels"], batch["heatmaps"], gen)
            batch = _to(batch, accelerator.device)
            loss, part = rahf_loss(model(batch["pixels"], batch["words"]), batch, cfg)
            opt.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            parts.append(part)
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if should_stop is not None and should_stop():
                break
        rahf.model = accelerator.unwrap_model(model)
        val_loss = validation_loss(rahf, val, cfg, accelerator.device)
        entry = {"epoch": epoch + 1, "val_loss": val_loss, "seconds": round(time.time() - t0, 1),
                 **{f"train_{k}": float(np.mean([p[k] for p in parts])) for k in parts[0]}}
        log.append(entry)
        accelerator.print(json.dumps(entry))
        if accelerator.is_main_process:
            if val_loss < best:
                best = val_loss
                rahf.save(out)
            rahf.save(ckpt)
            torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "epoch": epoch + 1,
                        "best": best, "log": json.dumps(log)}, ckpt / "trainer_state.pt")
            atomic_write_text(out / "train_log.json", json.dumps({"config": _jsonable(cfg), "epochs": log}, indent=2))
        if progress is not None:
            progress(epoch + 1, cfg.epochs)
        if should_stop is not None and should_stop():
            break
    accelerator.wait_for_everyone()
    if not (out / "model.safetensors").is_file():
        return rahf
    if accelerator.is_main_process and len(log) == cfg.epochs:  # finished: calibrate the heatmaps on dev
        from rhf_core.rahf.calibrate import calibrate_checkpoint

        scales = calibrate_checkpoint(out, val_ds)
        accelerator.print(f"heatmap calibration on {len(val_ds)} dev records: {scales}")
    accelerator.wait_for_everyone()
    return RAHF.load(out)


def _jsonable(cfg: TrainConfig) -> dict:
    return asdict(cfg)
