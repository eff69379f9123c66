"""Training RAHF on any dataset spec (`python -m rhf_core train-rahf`).

Runs unchanged under `accelerate launch` on several GPUs or nodes; single-process on a CPU here.
Losses (after RichHF sec. 4.3): per-pixel loss for heatmaps with non-zero target pixels weighted
up so sparse maps do not collapse to all-zero (binary cross-entropy against the soft heat rather
than the paper's MSE, whose gradient vanishes through a saturated sigmoid); MSE for scores; binary
cross-entropy per prompt word against its misalignment strength. Augmentation: random horizontal flips and mild random crops,
applied identically to the image and its heatmaps (words and scores are unchanged by either).
Resumable: `checkpoint/` holds the latest weights and the optimiser state.

Memory is bounded by the batch, not the dataset: a split whose decoded arrays exceed `preload_mb` is
decoded once into an on-disk cache at the model's resolution (`DecodedSplit`, in the state folder)
and read back row by row with `os.pread` (no memory map, whose touched pages would count towards the
process's memory). Smaller splits are held in memory as before. Both give the same batches in the same
order, bit for bit. Several processes (`accelerate launch`) each train on an equal-length shard; the
schedule counts one process's steps; only the main process writes checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rhf_core.errors import DatasetFormatError, InvalidArgumentError
from rhf_core.cache import atomic_write_text, cache_dir
from rhf_core.data import open_dataset
from rhf_core.dataset import HEATMAP_NAMES, SCORE_NAMES, Dataset
from rhf_core.heatmaps import resize_heatmap
from rhf_core.rahf.calibrate import calibrate_checkpoint
from rhf_core.rahf.config import RAHFConfig
from rhf_core.rahf.predictor import RAHF, WEIGHTS, load_weights, new_rahf
from rhf_core.training import warmup_cosine


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
    # Learning rate of the vision / text backbone as a multiple of `lr`; 0 freezes it. (The RichHF
    # authors fine-tune every layer and report that freezing the ViT hurt the heatmaps.)
    vision_lr_scale: float = 1.0
    text_lr_scale: float = 1.0
    # Autocast of the forward pass: "no", "bf16" or "fp16" (fp16 needs CUDA); "" = what `accelerate
    # launch --mixed_precision` says (default "no").
    mixed_precision: str = ""
    # Recompute the Hugging Face backbones' activations in the backward pass: less GPU memory, slower steps.
    gradient_checkpointing: bool = False
    # A split whose decoded arrays (image + heatmaps at image_size) exceed this many MB is decoded once
    # into an on-disk cache and read back batch by batch; smaller ones are held in memory.
    preload_mb: int = 1024
    # Folder of that on-disk cache ("" = decoded/ in the state folder); about 1 MB per record at 384 px.
    decoded_dir: str = ""
    model: RAHFConfig = field(default_factory=RAHFConfig)

    def validate(self) -> None:
        """Refuse settings that cannot apply (rather than ignoring them)."""
        if self.mixed_precision not in ("", "no", "bf16", "fp16"):
            raise InvalidArgumentError(f"mixed_precision must be no, bf16 or fp16, got {self.mixed_precision!r}")
        for name in ("vision_lr_scale", "text_lr_scale"):
            if not getattr(self, name) >= 0:
                raise InvalidArgumentError(f"{name} must be 0 (frozen) or more, got {getattr(self, name)!r}")
        if self.gradient_checkpointing and "hf" not in (self.model.vision.kind, self.model.text.kind):
            raise InvalidArgumentError("gradient_checkpointing applies to Hugging Face backbones; this model has "
                                       "only scratch ones (give a vision or text name_or_path)")
        if self.batch_size < 1 or self.epochs < 1:
            raise InvalidArgumentError(f"batch_size and epochs must be at least 1, got {self.batch_size}, {self.epochs}")
        self.model.validate()


class RowFile:
    """A (N, *row_shape) array on disk, read by rows: `rows[idx]` for an int array `idx` reads just those
    rows with `os.pread`, so only the batch is in memory (the OS page cache does the caching)."""

    def __init__(self, path: Path, n: int, row_shape: tuple, dtype):
        self.path, self.row_shape, self.dtype = Path(path), tuple(row_shape), np.dtype(dtype)
        self.shape = (n, *self.row_shape)
        self.row_bytes = int(np.prod(self.row_shape)) * self.dtype.itemsize
        self._fd: int | None = None
        self._pid = -1

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, idx) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        if self._fd is None or self._pid != os.getpid():  # a DataLoader worker or a fork opens its own
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        bad = idx[(idx < 0) | (idx >= self.shape[0])]
        if len(bad):
            raise IndexError(f"row {bad[0]} out of range for {self.shape[0]} rows")
        out = np.empty((len(idx), *self.row_shape), self.dtype)
        view = out.reshape(-1).view(np.uint8).reshape(len(idx), self.row_bytes)  # the same memory, as bytes
        for j, i in enumerate(idx):
            data = os.pread(self._fd, self.row_bytes, int(i) * self.row_bytes)
            view[j] = np.frombuffer(data, np.uint8)
        return out

    def __getstate__(self):
        return {**self.__dict__, "_fd": None, "_pid": -1}

    def __del__(self):
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)


@dataclass
class Arrays:
    """A dataset split as arrays a training loop can index (in memory, or `RowFile`s on disk)."""

    images: np.ndarray | RowFile  # (N, S, S, 3) uint8
    heatmaps: np.ndarray | RowFile  # (N, 2, S, S) float16
    heat_mask: np.ndarray  # (N, 2) bool: heatmap collected
    scores: np.ndarray  # (N, 4) float32
    score_mask: np.ndarray  # (N, 4) bool
    words: list[list[str]]
    word_targets: list[list[float]]

    def __len__(self):
        return len(self.images)


def record_rows(rec, size: int) -> dict | None:
    """One record decoded at `size`: image (S, S, 3) uint8, heatmaps (2, S, S) float16 and its labels;
    None without an image. The one decoding both the in-memory and the on-disk paths use."""
    from PIL import Image

    img = rec.image
    if img is None:
        return None
    h = np.zeros((len(HEATMAP_NAMES), size, size), np.float16)
    m = np.zeros(len(HEATMAP_NAMES), bool)
    for k, name in enumerate(HEATMAP_NAMES):
        if name in rec.heatmaps:
            h[k] = resize_heatmap(rec.heatmaps[name], (size, size))
            m[k] = True
    return {"image": np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.uint8),
            "heatmaps": h, "heat_mask": m, "scores": [rec.scores.get(s, 0.0) for s in SCORE_NAMES],
            "score_mask": [s in rec.scores for s in SCORE_NAMES], "words": [t for t, _ in rec.words],
            "word_targets": [float(s) for _, s in rec.words]}


def _labels(rows: list[dict]) -> dict:
    return {"heat_mask": np.array([r["heat_mask"] for r in rows]).reshape(len(rows), len(HEATMAP_NAMES)),
            "scores": np.array([r["scores"] for r in rows], np.float32).reshape(len(rows), len(SCORE_NAMES)),
            "score_mask": np.array([r["score_mask"] for r in rows], bool).reshape(len(rows), len(SCORE_NAMES)),
            "words": [r["words"] for r in rows], "word_targets": [r["word_targets"] for r in rows]}


def dataset_arrays(ds: Dataset, size: int, progress: Callable | None = None) -> Arrays:
    """Decode every record of `ds` into memory (images resized to `size`); records without an image are dropped."""
    imgs, heats, rows = [], [], []
    for i in range(len(ds)):
        row = record_rows(ds[i], size)
        if row is not None:
            imgs.append(row.pop("image"))
            heats.append(row.pop("heatmaps"))
            rows.append(row)
        if progress is not None and (i % 500 == 0 or i == len(ds) - 1):
            progress(i + 1, len(ds))
    if not imgs:
        raise DatasetFormatError(f"{ds.spec}: no record with an image to train on")
    return Arrays(np.stack(imgs), np.stack(heats), **_labels(rows))


def decoded_mb(n_records: int, size: int) -> float:
    """Memory of `n_records` decoded at `size`: a uint8 RGB image and two float16 heatmaps each."""
    return n_records * size * size * (3 + 2 * len(HEATMAP_NAMES)) / 2 ** 20


DECODED_VERSION = 1  # bump when record_rows changes what it writes


def decoded_arrays(ds: Dataset, size: int, folder: Path, progress: Callable | None = None) -> Arrays:
    """`dataset_arrays` through an on-disk cache in `folder`: records are decoded once, one at a time,
    and written as rows; the result reads rows back on demand. A cache whose key (version, size, the
    split's ids and frame) matches is reused, so a resumed run or a second process does not decode again.
    The frame holds the labels, not the pixels: after replacing images in place, delete the folder."""
    folder = Path(folder)
    frame_hash = hashlib.sha256(ds.frame.to_json(default_handler=str).encode()).hexdigest()[:20]
    key = {"version": DECODED_VERSION, "size": size, "records": len(ds), "frame": frame_hash}
    manifest = folder / "manifest.json"
    if not (manifest.is_file() and json.loads(manifest.read_text()).get("key") == key):
        _write_decoded(ds, size, folder, key, progress)
    info = json.loads(manifest.read_text())
    n = info["rows"]
    if n == 0:
        raise DatasetFormatError(f"{ds.spec}: no record with an image to train on")
    labels = json.loads((folder / "labels.json").read_text())
    return Arrays(RowFile(folder / "images.u8", n, (size, size, 3), np.uint8),
                  RowFile(folder / "heatmaps.f16", n, (len(HEATMAP_NAMES), size, size), np.float16),
                  np.array(labels["heat_mask"], bool).reshape(n, len(HEATMAP_NAMES)),
                  np.array(labels["scores"], np.float32).reshape(n, len(SCORE_NAMES)),
                  np.array(labels["score_mask"], bool).reshape(n, len(SCORE_NAMES)),
                  labels["words"], labels["word_targets"])


def _write_decoded(ds: Dataset, size: int, folder: Path, key: dict, progress: Callable | None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").unlink(missing_ok=True)  # no manifest = incomplete cache
    rows = []
    with open(folder / "images.u8", "wb") as fi, open(folder / "heatmaps.f16", "wb") as fh:
        for i in range(len(ds)):
            row = record_rows(ds[i], size)
            if row is not None:
                fi.write(row.pop("image").tobytes())
                fh.write(row.pop("heatmaps").tobytes())
                rows.append(row)
            if progress is not None and (i % 500 == 0 or i == len(ds) - 1):
                progress(i + 1, len(ds))
    labels = _labels(rows)
    atomic_write_text(folder / "labels.json", json.dumps({k: (v.tolist() if isinstance(v, np.ndarray) else v)
                                                          for k, v in labels.items()}))
    atomic_write_text(folder / "manifest.json", json.dumps({"key": key, "rows": len(rows)}))


def split_arrays(ds: Dataset, size: int, preload_mb: float, folder: Path) -> Arrays:
    """In memory when the decoded split fits in `preload_mb`, else the on-disk cache in `folder`."""
    if decoded_mb(len(ds), size) <= preload_mb:
        return dataset_arrays(ds, size)
    return decoded_arrays(ds, size, folder)


def shard_order(n: int, rank: int, world: int, rng: np.random.Generator) -> np.ndarray:
    """This process's records for one epoch, shuffled. Every process gets ceil(n / world) of them (the
    shorter shards repeat their first records), so all take the same number of steps, as DDP needs."""
    shard = np.arange(rank, n, world)
    per_process = math.ceil(n / world)
    if len(shard) < per_process:  # with fewer records than processes, an empty shard borrows from all
        shard = np.concatenate([shard, np.resize(shard if len(shard) else np.arange(n), per_process - len(shard))])
    return rng.permutation(shard)


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

    cfg.validate()
    accelerator = make_accelerator(cfg, Accelerator)
    out = Path(cfg.out)
    ckpt = Path(cfg.state_dir) if cfg.state_dir else cache_dir("rahf-train") / out.resolve().name
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)

    # 1. Data: the main process decodes (or finds the on-disk cache) first, the others reuse it
    train_ds, val_ds = train_val_split(cfg)
    size = cfg.model.image_size
    decoded = Path(cfg.decoded_dir) if cfg.decoded_dir else ckpt / "decoded"
    with accelerator.main_process_first():
        train = split_arrays(train_ds, size, cfg.preload_mb, decoded / f"{cfg.train_split}-{size}")
        val = split_arrays(val_ds, size, cfg.preload_mb, decoded / f"{cfg.val_split}-{size}")
    world, rank = accelerator.num_processes, accelerator.process_index
    steps_per_epoch = math.ceil(math.ceil(len(train) / world) / cfg.batch_size)
    where = "in memory" if isinstance(train.images, np.ndarray) else f"on disk in {decoded}"
    accelerator.print(f"RAHF training: {len(train)} train / {len(val)} val records ({where}), {steps_per_epoch} steps "
                      f"per epoch × {cfg.epochs} epochs, batch {cfg.batch_size} × {world} processes, "
                      f"variant {cfg.model.variant}, device {accelerator.device}, precision {accelerator.mixed_precision}")

    # 2. Model, optimiser, schedule (cosine with a short warm-up)
    rahf = new_rahf(cfg.model, device=str(accelerator.device), seed=cfg.seed)
    prepare_backbones(rahf.model, cfg)
    probe = _to(make_batch(train, np.arange(min(2, len(train))), cfg.model.max_words), accelerator.device)
    unused = freeze_unreached(rahf.model, probe)
    if unused:  # DDP needs every trained parameter in the loss (poolers, CLIP's post_layernorm, SigLIP's head)
        accelerator.print(f"not trained (no loss reaches them): {', '.join(unused[:6])}{' …' if len(unused) > 6 else ''}")
    opt = torch.optim.AdamW(parameter_groups(rahf.model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total_steps = steps_per_epoch * cfg.epochs
    warmup = min(200, total_steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, total_steps, warmup))
    model, opt = accelerator.prepare(rahf.model, opt)
    start_epoch, best, log = 0, float("inf"), []
    if resume and (ckpt / "trainer_state.pt").is_file():
        state = torch.load(ckpt / "trainer_state.pt", weights_only=True)
        load_weights(accelerator.unwrap_model(model), ckpt / WEIGHTS)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start_epoch, best, log = int(state["epoch"]), float(state["best"]), json.loads(state["log"])
        accelerator.print(f"resumed from {ckpt} at epoch {start_epoch}")

    # 3. Train
    gen = torch.Generator().manual_seed(cfg.seed + start_epoch)
    rng = np.random.default_rng(cfg.seed + start_epoch)
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        order = shard_order(len(train), rank, world, rng)
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
        if accelerator.is_main_process:  # the one writer of checkpoints
            if val_loss < best:
                best = val_loss
                rahf.save(out)
            rahf.save(ckpt)
            torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "epoch": epoch + 1,
                        "best": best, "log": json.dumps(log)}, ckpt / "trainer_state.pt")
            atomic_write_text(out / "train_log.json", json.dumps({"config": _jsonable(cfg), "epochs": log}, indent=2))
        accelerator.wait_for_everyone()
        if progress is not None:
            progress(epoch + 1, cfg.epochs)
        if should_stop is not None and should_stop():
            break
    accelerator.wait_for_everyone()
    if not (out / "model.safetensors").is_file():
        return rahf
    if accelerator.is_main_process and len(log) == cfg.epochs:  # finished: calibrate the heatmaps on dev
        # In training-sized batches: 64 images at a time held over 2 GB of activations at 384 px.
        scales = calibrate_checkpoint(out, val_ds, batch_size=cfg.batch_size)
        accelerator.print(f"heatmap calibration on {len(val_ds)} dev records: {scales}")
    accelerator.wait_for_everyone()
    return RAHF.load(out)


def make_accelerator(cfg: TrainConfig, accelerator_cls):
    """An Accelerator with the asked precision; fp16 without CUDA is refused, not silently run in fp32."""
    precision = cfg.mixed_precision or os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if precision == "fp16" and not torch.cuda.is_available():
        raise InvalidArgumentError("mixed_precision fp16 needs a CUDA GPU and none is visible; use bf16 or no")
    # Processes started by torchrun (`accelerate launch --multi_gpu`) on a machine without CUDA join as
    # CPU processes (gloo); without cpu=True each would train alone on everything and write checkpoints.
    world = int(os.environ.get("WORLD_SIZE", "1"))
    accelerator = accelerator_cls(mixed_precision=precision, cpu=world > 1 and not torch.cuda.is_available())
    if accelerator.num_processes != world:
        raise InvalidArgumentError(f"{world} processes were launched but {accelerator.num_processes} joined the run")
    return accelerator


def train_val_split(cfg: TrainConfig) -> tuple[Dataset, Dataset]:
    """The training and validation records (10% of training held out when there is no dev split)."""
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
    return train_ds, val_ds


def prepare_backbones(model: torch.nn.Module, cfg: TrainConfig) -> None:
    """Freeze a backbone whose learning-rate scale is 0; turn on gradient checkpointing in HF backbones."""
    for part, scale in ((model.vision, cfg.vision_lr_scale), (model.text, cfg.text_lr_scale)):
        if scale == 0:
            part.requires_grad_(False)
        if cfg.gradient_checkpointing and hasattr(part, "backbone"):
            # Non-reentrant checkpointing works under DDP and with frozen inputs.
            part.backbone.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})


def freeze_unreached(model: torch.nn.Module, batch: dict) -> list[str]:
    """Freeze the trainable parameters no output depends on, found by one backward pass; their names.

    Hugging Face towers carry parts the patch tokens do not use (ViT/BERT poolers, CLIP's
    post_layernorm, SigLIP's attention-pooling head): DDP stops with 'Expected to have finished
    reduction' when a trained parameter gets no gradient. The probe runs with the random state saved,
    so a seeded run gives the same weights with or without it."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        out = model(batch["pixels"], batch["words"])
        sum(v.float().sum() for v in out.values()).backward()
    names = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    model.zero_grad(set_to_none=True)
    for n, p in model.named_parameters():
        if n in names:
            p.requires_grad_(False)
    return names


def parameter_groups(model: torch.nn.Module, cfg: TrainConfig) -> list[dict]:
    """AdamW groups: the backbones at their learning-rate scales, the rest at `lr`; frozen ones left out."""
    def trainable(module):
        return [p for p in module.parameters() if p.requires_grad]

    if cfg.vision_lr_scale == 1 and cfg.text_lr_scale == 1:
        return [{"params": trainable(model)}]
    backbone = {id(p) for part in (model.vision, model.text) for p in part.parameters()}
    groups = [{"params": trainable(model.vision), "lr": cfg.lr * cfg.vision_lr_scale},
              {"params": trainable(model.text), "lr": cfg.lr * cfg.text_lr_scale},
              {"params": [p for p in trainable(model) if id(p) not in backbone]}]
    return [g for g in groups if g["params"]]


def _jsonable(cfg: TrainConfig) -> dict:
    return asdict(cfg)
