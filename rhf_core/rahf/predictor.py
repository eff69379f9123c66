"""Loading, saving and running a RAHF checkpoint: the public two-call API.

    from rhf_core.rahf import load_rahf
    model = load_rahf()                       # the embedded checkpoint in rhf_core/assets/rahf-shapes
    preds = model.predict(images, prompts)    # PIL images, paths or bytes (all through load_image)
    preds[0].heatmaps["implausibility"]       # float32 H×W in [0, 1] at that image's own size
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from rhf_core.dataset import HEATMAP_NAMES, SCORE_NAMES
from rhf_core.errors import InvalidArgumentError
from rhf_core.heatmaps import resize_heatmap
from rhf_core.images import load_image
from rhf_core.rahf.port import is_converted_port, load_converted_port
from rhf_core.rahf.common import (CheckpointError, Prediction, check_predict_args, heatmap_gate, images_to_tensor,
                                  pick_device)
from rhf_core.rahf.config import RAHFConfig
from rhf_core.rahf.model import RAHFModel
from rhf_core.shipped import RAHF_CHECKPOINT

DEFAULT_CHECKPOINT = RAHF_CHECKPOINT
WEIGHTS = "model.safetensors"
def _image(im, index: int) -> Image.Image:
    """Every image goes through load_image (16-bit, alpha, palette, EXIF, lazily opened files): a PIL
    image keeps its size, so the heatmaps come back at the caller's size; files are capped as usual."""
    if isinstance(im, Image.Image):
        return load_image(im, max_side=None, name=f"image {index + 1}")
    return load_image(im, name=None if isinstance(im, (str, Path)) else f"image {index + 1}")


class RAHF:
    """A RAHF network with its config, ready to predict."""

    def __init__(self, model: RAHFModel, config: RAHFConfig, device: str | None = None, path: Path | None = None):
        self.config = config
        self.device = pick_device(device)
        self.model = model.to(self.device).eval()
        self.path = path
        self.metrics = {}
        # Identifies the model as loaded (path, weights' modification time, config incl. calibration), for caches.
        weights = Path(path) / WEIGHTS if path is not None else None
        self.weights_key = (f"{Path(path).resolve()}@{weights.stat().st_mtime_ns}@{config.to_dict()}"
                            if weights and weights.is_file() else f"unsaved-{id(self)}")
        if path is not None and (Path(path) / "metrics.json").is_file():
            self.metrics = json.loads((Path(path) / "metrics.json").read_text())

    @property
    def name(self) -> str:
        return Path(self.path).name if self.path else "untrained RAHF"

    # --- persistence --------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """config.json + model.safetensors (+ HF backbone configs and tokenizer when used)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self.config.save(out)
        save_weights(self.model, out / WEIGHTS)
        if self.config.vision.kind == "hf":
            self.model.vision.hf_config.save_pretrained(out / "vision")
            _save_processor(self.config.vision.name_or_path, out / "vision")
        if self.config.text.kind == "hf":
            self.model.text.hf_config.save_pretrained(out / "text")
            self.model.text.tokenizer.save_pretrained(out / "text")
        return out

    @classmethod
    def load(cls, directory: str | Path, device: str | None = None) -> "RAHF":
        path = Path(directory).expanduser()
        if not (path / "config.json").is_file() or not (path / WEIGHTS).is_file():
            raise CheckpointError(f"{path} is not a RAHF checkpoint (needs config.json and {WEIGHTS})")
        try:
            config = RAHFConfig.load(path)
        except (ValueError, TypeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}/config.json is not a RAHF config: {e}") from None
        model = RAHFModel(config, backbone_dir=path, pretrained=False)
        load_weights(model, path / WEIGHTS)
        return cls(model, config, device=device, path=path)

    # --- inference ----------------------------------------------------------------------------
    @torch.no_grad()
    def predict(
        self,
        images,
        prompts: Sequence[str],
        batch_size: int = 32,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[Prediction]:
        """Predict heatmaps, scores and misaligned words for each (image, prompt) pair.

        Images: PIL images, paths or bytes, each decoded by `load_image`. Raises InvalidArgumentError
        (an RHFError) for bad arguments before any work, ImageLoadError for an unreadable image."""
        # 1. Check inputs
        images, prompts, all_words = check_predict_args(images, prompts, batch_size)
        batch_size = int(batch_size)
        out: list[Prediction] = []
        for start in range(0, len(images), batch_size):
            # 2. Decode images; the prompts' RichHF tokens were split above
            batch = [_image(im, start + i) for i, im in enumerate(images[start:start + batch_size])]
            words = all_words[start:start + batch_size]
            # 3. Run the network
            pixels = images_to_tensor(batch, self.config.image_size).to(self.device)
            logits = self.model(pixels, words)
            heat = torch.sigmoid(logits["heatmaps"]).float().cpu().numpy()
            scores = torch.sigmoid(logits["scores"]).float().cpu().numpy()
            word_p = torch.sigmoid(logits["words"]).float().cpu().numpy()
            # 4. Back to each image's own size and the prompt's own tokens
            for i, im in enumerate(batch):
                n = min(len(words[i]), self.config.max_words, word_p.shape[1])
                probs = [float(word_p[i, j]) if j < n else 0.0 for j in range(len(words[i]))]
                pred = Prediction(heatmaps={}, scores={s: float(scores[i, k]) for k, s in enumerate(SCORE_NAMES)},
                                  words=list(zip(words[i], probs)))
                for k, h in enumerate(HEATMAP_NAMES):
                    m = heat[i, k]
                    if h in self.config.heatmap_scale:  # calibrated (rhf_core.rahf.calibrate)
                        m = np.clip(m * self.config.heatmap_scale[h] * heatmap_gate(h, pred.scores, pred.words), 0, 1)
                    pred.heatmaps[h] = resize_heatmap(m.astype(np.float32), im.size)
                out.append(pred)
            if progress is not None:
                progress(min(start + batch_size, len(images)), len(images))
        return out

    def score_pixels(self, pixels: torch.Tensor, prompts: Sequence[str], score: str = "plausibility") -> torch.Tensor:
        """The predicted `score` (sigmoid, in [0, 1]) of B×3×H×W images with values in [0, 1], differentiable
        in the pixels (what reward-guided sampling and reward backpropagation ascend). Preprocessing is
        predict's, in torch: resized to config.image_size (bilinear, antialiased as PIL's resize is), no
        heatmap calibration (it touches no score). The model stays in eval mode; its parameters are not
        frozen here, so take torch.autograd.grad with respect to the pixels (as guided sampling does)."""
        if score not in SCORE_NAMES:
            raise InvalidArgumentError(f"unknown RAHF score {score!r}; one of {', '.join(SCORE_NAMES)}")
        if not isinstance(pixels, torch.Tensor) or pixels.ndim != 4 or pixels.shape[1] != 3:
            raise InvalidArgumentError(f"pixels must be a B×3×H×W tensor, got {getattr(pixels, 'shape', type(pixels))}")
        _, _, words = check_predict_args(list(pixels), prompts, 1)
        size = self.config.image_size
        x = pixels.to(self.device, torch.float32)
        if tuple(x.shape[-2:]) != (size, size):
            x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                                                antialias=True)
        return torch.sigmoid(self.model(x, words)["scores"][:, SCORE_NAMES.index(score)])


def tied_names(model: torch.nn.Module) -> dict[str, str]:
    """Each state-dict name that is another name's tensor (tied weights: T5's `shared` and
    `encoder.embed_tokens`), mapped to the first name holding it."""
    first, tied = {}, {}
    for name, t in model.state_dict(keep_vars=True).items():
        key = (t.data_ptr(), t.dtype, tuple(t.shape), tuple(t.stride())) if t.numel() else None
        if key is not None and key in first:
            tied[name] = first[key]
        elif key is not None:
            first[key] = name
    return tied


def save_weights(model: torch.nn.Module, path: Path) -> None:
    """The state dict as safetensors, written atomically; a tied weight is stored once (safetensors
    refuses tensors that share memory) and re-tied by `load_weights`, which builds the same model."""
    tied = tied_names(model)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k not in tied}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(state, str(tmp), metadata={"format": "pt", "rhf": "rahf", "tied": json.dumps(tied)})
    tmp.chmod(0o644)
    tmp.replace(path)


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load `save_weights`' file into `model`; any name missing or left over is a CheckpointError.
    A tied name may be absent: it is the same tensor as the name it is tied to, which is loaded."""
    state = load_file(str(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = tied_names(model)
    missing = [k for k in missing if not (k in tied and tied[k] in state)]
    if missing or unexpected:
        raise CheckpointError(
            f"{path.parent}: weights do not match the config — missing {sorted(missing)[:8]}"
            f"{'…' if len(missing) > 8 else ''}, unexpected {sorted(unexpected)[:8]}"
            f"{'…' if len(unexpected) > 8 else ''}"
        )


def _save_processor(source: str, out: Path) -> None:
    try:
        from transformers import AutoImageProcessor

        AutoImageProcessor.from_pretrained(source).save_pretrained(out)
    except Exception:  # no processor config at the source: the model's defaults apply
        pass


def load_rahf(path: str | Path | None = None, device: str | None = None) -> RAHF:
    """The embedded ShapesWorld checkpoint, or a checkpoint folder (config.json + safetensors)."""
    target = Path(path) if path else DEFAULT_CHECKPOINT
    if not target.exists():
        raise CheckpointError(f"no RAHF checkpoint at {target}")
    if is_converted_port(target):  # the authors' published weights, converted by convert-port
        return load_converted_port(target, device=device)
    return RAHF.load(target, device=device)


def new_rahf(config: RAHFConfig, device: str | None = None, seed: int = 0) -> RAHF:
    """A freshly initialised RAHF (HF backbones load their pretrained weights)."""
    torch.manual_seed(seed)
    return RAHF(RAHFModel(config), config, device=device)
