"""The authors' PyTorch port of RAHF (github.com/youweiliang/RichHF): its network, its checkpoint, a predictor.

The port is the one RAHF whose weights are public: a plain `state_dict` file (`model.pt`, about 2.4 GB,
downloaded by the user; weights CC BY-NC 4.0) for ViT-L/16-384 + T5-base. Its network, rebuilt here with
the same module names so the file loads as it is:

    vit                       ViTModel (with its unused pooler): image → (B, 1 + g², Dv) tokens, CLS first
    visual_token_projection   Linear Dv → D (T5's width)
    t5                        T5ForConditionalGeneration: the encoder fuses [image tokens; embedded prompt]
                              in one pass; the decoder writes the prompt back with `_0` after each
                              misaligned word ("a yellow_0 cat"), reading the prompt part of the encoding
    heatmap_predictor.{implausibility, misalignment}   on the g × g grid of image tokens (CLS dropped):
                              two 3×3 convs, four 2× transposed-conv stages with residual conv pairs,
                              T5-style channel norms (`scale` only, no mean), two convs, sigmoid
    score_predictor.{plausibility, alignment, aesthetics, overall}   six 3×3 conv + norm + ReLU
                              (D → D/64 channels), flatten, MLP 512 → 128 → 1, sigmoid

    from rhf_core.rahf import load_port, convert_port
    port = load_port("model.pt", vit="google/vit-large-patch16-384", t5="t5-base")   # configs + tokenizer only
    port.predict(images, prompts)                  # the same Prediction objects as load_rahf's
    convert_port("model.pt", vit=..., t5=..., out="cache/richhf-port")   # then load_rahf("cache/richhf-port")

Differences from running the port's own script, on purpose: the encoder and the decoder get an attention
mask over the prompt's padding, so a prediction does not depend on the other prompts in its batch (the
port's batched runs let padding into attention; its batch-of-one runs equal ours). Images are resized
with PIL bilinear and normalised with the ViT processor's mean and std, as its processor does.

transformers is imported inside the functions that build or run the network: load_rahf imports this
module for every checkpoint folder it opens, and importing transformers' ViT, T5 and processors takes
seconds that a ShapesWorld checkpoint should not pay.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import pickle
import re
import shutil
import tempfile
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from rhf_core.cache import atomic_write_text
from rhf_core.dataset import HEATMAP_NAMES, SCORE_NAMES
from rhf_core.errors import InvalidArgumentError
from rhf_core.heatmaps import resize_heatmap
from rhf_core.images import load_image
from rhf_core.rahf.common import (CheckpointError, Prediction, check_predict_args, heatmap_gate, images_to_tensor,
                                  pick_device)

if TYPE_CHECKING:
    from transformers import T5Config, ViTConfig

ARCHITECTURE = "richhf-port"
WEIGHTS = "model.safetensors"
SOURCE_URL = "https://github.com/youweiliang/RichHF"
DOMAIN = {"name": "richhf18k", "description": "RichHF-18K (Pick-a-Pic generations), the authors' published weights"}
LICENSE = {"weights": "CC BY-NC 4.0", "code": "PolyForm Noncommercial 1.0.0", "source": SOURCE_URL,
           "note": "non-commercial use only; credit Liang et al., Rich Human Feedback for Text-to-Image "
                   "Generation, CVPR 2024"}
# What the authors report for these weights on RichHF-18K test (their README); not measured here.
REPORTED = {"source": f"{SOURCE_URL} README", "measured_here": False,
            "plausibility": {"plcc": 0.739, "srcc": 0.726}, "implausibility_heatmap": {"cc": 0.525, "nss": 2.029,
            "auc_judd": 0.905}, "misaligned_keywords": {"precision": 56.5, "recall": 45.2, "f1": 47.5}}
MARK = "_0"  # the port's label for a misaligned word, appended to it in the decoder's output
WORD_START = "\u2581"  # sentencepiece's "▁": a piece that starts a new word


# --- configuration -----------------------------------------------------------------------------

@dataclass
class PortConfig:
    # Input resolution of the ViT (pixels, square) and its patch size; the token grid is g = image/patch.
    image_size: int = 384
    patch_size: int = 16
    # Heatmap head widths (the port's: convs 768, 384; up-sampling stages 768, 384, 384, 192; last conv 192).
    # Configurable only so that tests and benchmarks can build the same architecture small.
    heatmap_conv_widths: tuple = (768, 384)
    heatmap_up_widths: tuple = (768, 384, 384, 192)
    heatmap_last_width: int = 192
    # Hidden widths of each score head's MLP.
    score_mlp_widths: tuple = (512, 128)
    # Most tokens the decoder writes for the labelled prompt (the port's inference default).
    max_new_tokens: int = 100
    # Shown by the pages beside RAHF's configs; the port is the multi-head variant.
    variant: str = "multihead"
    # Post-hoc calibration (rhf_core.rahf.calibrate), empty: the port's own maps.
    heatmap_scale: dict = field(default_factory=dict)
    domain: dict = field(default_factory=lambda: dict(DOMAIN))
    license: dict = field(default_factory=lambda: dict(LICENSE))
    reported: dict = field(default_factory=lambda: json.loads(json.dumps(REPORTED)))
    # Where the weights came from: checkpoint file name and sha256, the backbones named at conversion.
    source: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"architecture": ARCHITECTURE, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "PortConfig":
        d = dict(d)
        if d.pop("architecture", None) != ARCHITECTURE:
            raise InvalidArgumentError(f"not a converted RichHF port config (architecture must be {ARCHITECTURE!r})")
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise InvalidArgumentError(f"unknown port config fields: {sorted(unknown)}")
        for name in ("heatmap_conv_widths", "heatmap_up_widths", "score_mlp_widths"):
            if name in d:
                d[name] = tuple(int(x) for x in d[name])
        return cls(**d)

    def save(self, directory: Path) -> None:
        atomic_write_text(Path(directory) / "config.json", json.dumps(self.to_dict(), indent=2) + "\n")


# --- the network (module names are the checkpoint's key names) ---------------------------------------

class ChannelNorm(nn.Module):
    """The port's `LayerNorm` for feature maps: T5-style RMS norm over channels (no mean, no bias).

    Computed in float32: its epsilon (1e-8) is below float16's smallest number."""

    def __init__(self, channels: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        x32 = x.float()
        out = x32 * (x32.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt() * self.scale.float()
        return out.to(x.dtype)


def _conv(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=1, padding=1)


class HeatmapPredictor(nn.Module):
    """g × g grid → 2^stages × larger map in [0, 1] (the port's `HeatmapPredictor`)."""

    def __init__(self, channels: int, cfg: PortConfig):
        super().__init__()
        c1, c2 = cfg.heatmap_conv_widths
        self.conv_layers = nn.Sequential(_conv(channels, c1), nn.ReLU(), ChannelNorm(c1),
                                         _conv(c1, c2), nn.ReLU(), ChannelNorm(c2))
        self.deconv_layers, self.conv_layers2 = nn.ModuleList(), nn.ModuleList()
        cin = c2
        for cout in cfg.heatmap_up_widths:
            self.deconv_layers.append(nn.Sequential(
                nn.ConvTranspose2d(cin, cout, kernel_size=3, stride=2, padding=1, output_padding=1),
                ChannelNorm(cout), nn.ReLU()))
            self.conv_layers2.append(nn.Sequential(_conv(cout, cout), ChannelNorm(cout), nn.ReLU(),
                                                   _conv(cout, cout), ChannelNorm(cout)))
            cin = cout
        self.last_conv1 = _conv(cin, cfg.heatmap_last_width)
        self.last_conv2 = _conv(cfg.heatmap_last_width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, D, g, g) → (B, g·2^s, g·2^s)
        x = self.conv_layers(x)
        for up, residual in zip(self.deconv_layers, self.conv_layers2):
            x = up(x)
            x = torch.relu(residual(x) + x)
        x = self.last_conv2(torch.relu(self.last_conv1(x)))
        return torch.sigmoid(x).squeeze(1)


class ScorePredictor(nn.Module):
    """g × g grid → one score in [0, 1] (the port's `ScorePredictor`)."""

    def __init__(self, channels: int, n_patches: int, cfg: PortConfig):
        super().__init__()
        widths = [channels, channels, channels // 2, channels // 4, channels // 8, channels // 16, channels // 64]
        layers: list[nn.Module] = []
        for cin, cout in zip(widths, widths[1:]):
            layers += [_conv(cin, cout), ChannelNorm(cout), nn.ReLU()]
        self.conv_layers = nn.Sequential(*layers)
        h1, h2 = cfg.score_mlp_widths
        self.linear_layers = nn.Sequential(nn.Linear(widths[-1] * n_patches, h1), nn.ReLU(), nn.Linear(h1, h2),
                                           nn.ReLU(), nn.Linear(h2, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, D, g, g) → (B,)
        return self.linear_layers(self.conv_layers(x).flatten(1)).flatten()


class RichHFPort(nn.Module):
    """The port's `RAHF` (multi_heads=True) on today's transformers classes."""

    def __init__(self, cfg: PortConfig, vit_config: ViTConfig, t5_config: T5Config,
                 image_stats: tuple = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))):
        from transformers import T5ForConditionalGeneration, ViTModel

        super().__init__()
        d = int(t5_config.d_model)
        if d % 64:
            raise CheckpointError(f"T5 width {d} is not a multiple of 64: the port's score heads divide it by 64")
        self.grid = cfg.image_size // cfg.patch_size
        self.vit = ViTModel(vit_config)  # with its pooler: the checkpoint holds it, though nothing reads it
        self.t5 = T5ForConditionalGeneration(t5_config)
        self.visual_token_projection = nn.Linear(int(vit_config.hidden_size), d)
        self.heatmap_predictor = nn.ModuleDict({h: HeatmapPredictor(d, cfg) for h in HEATMAP_NAMES})
        self.score_predictor = nn.ModuleDict({s: ScorePredictor(d, self.grid ** 2, cfg) for s in SCORE_NAMES})
        # The ViT processor's normalisation; not in the state_dict (the port normalised in its data loader)
        mean, std = image_stats
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def vision(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) pixels in [0, 1] → (B, g², Dv) ViT patch tokens, CLS dropped (as RAHFModel.vision)."""
        return self._vit_tokens(pixels)[:, 1:]

    def _vit_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        pixels = ((pixels - self.pixel_mean) / self.pixel_std).to(self.pixel_mean.dtype)
        return self.vit(pixel_values=pixels).last_hidden_state  # (B, 1+g², Dv)

    def encode(self, pixels: torch.Tensor, input_ids: torch.Tensor, text_mask: torch.Tensor):
        """One T5 encoder pass over [projected ViT tokens; embedded prompt] → (image grid, prompt states).

        `pixels` (B, 3, S, S) in [0, 1]; `input_ids`, `text_mask` (B, T) the tokenized prompts."""
        visual = self.visual_token_projection(self._vit_tokens(pixels))  # (B, 1+g², D)
        text = self.t5.get_encoder().embed_tokens(input_ids)  # (B, T, D)
        n = visual.shape[1]
        mask = torch.cat([text_mask.new_ones(text_mask.shape[0], n), text_mask], dim=1)
        hidden = self.t5.get_encoder()(inputs_embeds=torch.cat([visual, text], dim=1),
                                       attention_mask=mask).last_hidden_state  # (B, 1+g²+T, D)
        b, _, d = hidden.shape
        grid = hidden[:, 1:n].transpose(1, 2).reshape(b, d, self.grid, self.grid)  # CLS dropped, row-major
        return grid, hidden[:, n:]

    def heads(self, grid: torch.Tensor) -> tuple[dict, dict]:
        return ({h: m(grid) for h, m in self.heatmap_predictor.items()},
                {s: m(grid) for s, m in self.score_predictor.items()})


# --- the checkpoint's key names ------------------------------------------------------------------

# transformers 4.x (which saved the published file) named ViT's layers `encoder.layer.N` with
# `attention.attention.{query,key,value}`, `attention.output.dense`, `intermediate.dense`, `output.dense`;
# transformers 5 names them `layers.N` with `attention.{q,k,v,o}_proj`, `mlp.fc1`, `mlp.fc2`.
_LAYER_PARTS = [("attention.attention.query", "attention.q_proj"), ("attention.attention.key", "attention.k_proj"),
                ("attention.attention.value", "attention.v_proj"), ("attention.output.dense", "attention.o_proj"),
                ("intermediate.dense", "mlp.fc1"), ("output.dense", "mlp.fc2"),
                ("layernorm_before", "layernorm_before"), ("layernorm_after", "layernorm_after")]
OLD_TO_NEW = [(re.compile(rf"^vit\.encoder\.layer\.(\d+)\.{re.escape(old)}\."), rf"vit.layers.\1.{new}.")
              for old, new in _LAYER_PARTS]
NEW_TO_OLD = [(re.compile(rf"^vit\.layers\.(\d+)\.{re.escape(new)}\."), rf"vit.encoder.layer.\1.{old}.")
              for old, new in _LAYER_PARTS]


def renamed(key: str, rules) -> str | None:
    for pattern, repl in rules:
        if pattern.match(key):
            return pattern.sub(repl, key, count=1)
    return None


def tied_aliases(model: nn.Module) -> set[str]:
    """State-dict names that share storage with an earlier name (T5's embed_tokens / lm_head tied to
    `shared`): optional in a file, since loading the first fills them all."""
    seen, aliases = set(), set()
    for name, tensor in model.state_dict(keep_vars=True).items():  # tied names hold the same Parameter
        if id(tensor) in seen:
            aliases.add(name)
        seen.add(id(tensor))
    return aliases


def match_state_dict(state: dict, model: nn.Module, where: str) -> dict:
    """`state` under the model's own key names, whichever transformers saved it; raises CheckpointError
    listing missing and unexpected keys, or mismatched shapes, for anything else."""
    if any(k.startswith("heatmap_predictor.conv_layers.") for k in state):
        raise CheckpointError(f"{where} is the port's augmented-prompt variant (multi_heads=False); only the "
                              "multi-head variant (the published checkpoint) is supported")
    expected = model.state_dict()
    out, unexpected = {}, []
    for key, tensor in state.items():
        name = key if key in expected else renamed(key, OLD_TO_NEW) or renamed(key, NEW_TO_OLD)
        if name in expected:
            out[name] = tensor
        else:
            unexpected.append(key)
    missing = sorted(set(expected) - set(out) - tied_aliases(model))
    if missing or unexpected:
        raise CheckpointError(
            f"{where} is not the RichHF port's state_dict for these backbones (key names of transformers 4 or 5 "
            f"load): {len(missing)} missing {missing[:8]}{'…' if len(missing) > 8 else ''}, {len(unexpected)} "
            f"unexpected {sorted(unexpected)[:8]}{'…' if len(unexpected) > 8 else ''}")
    shapes = [f"{k}: file {tuple(v.shape)}, model {tuple(expected[k].shape)}"
              for k, v in out.items() if tuple(v.shape) != tuple(expected[k].shape)]
    if shapes:
        raise CheckpointError(f"{where} does not fit these backbones ({len(shapes)} shapes differ, e.g. "
                              f"{'; '.join(shapes[:4])}): pass the --vit and --t5 it was trained with")
    return out


def read_port_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The port's `.pt` file as tensors, read with torch.load(weights_only=True): nothing is unpickled
    beyond tensors and plain containers."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path} (the port's model.pt, downloaded from {SOURCE_URL})")
    try:  # memory-mapped when it can be (the zip format torch ≥ 1.6 writes): the file is 2.6 GB
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is not a PyTorch state_dict readable with weights_only=True: {first}") from None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} holds no plain state_dict (a dict of tensor names to tensors)")
    return state


# --- loading ------------------------------------------------------------------------------------

def _image_stats(vit: str) -> tuple[tuple, tuple]:
    from transformers import AutoImageProcessor

    try:
        proc = AutoImageProcessor.from_pretrained(vit)
        return tuple(float(x) for x in proc.image_mean), tuple(float(x) for x in proc.image_std)
    except (OSError, ValueError):  # no preprocessor_config.json: the google/vit-* default
        return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def _backbone_configs(vit: str, t5: str) -> tuple[ViTConfig, T5Config]:
    from transformers import T5Config, ViTConfig

    try:
        vit_config = ViTConfig.from_pretrained(vit)
        t5_config = T5Config.from_pretrained(t5)
    except OSError as e:
        raise CheckpointError(f"cannot read the backbone configs (a hub id or a local folder each; offline, "
                              f"only cached ids or folders work): {str(e).splitlines()[0]}") from None
    if vit_config.model_type != "vit" or t5_config.model_type != "t5":
        raise CheckpointError(f"the port needs a ViT and a T5, got {vit_config.model_type!r} and {t5_config.model_type!r}")
    return vit_config, t5_config


def _tokenizer(t5: str):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(t5)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot load the T5 tokenizer from {t5}: {str(e).splitlines()[0]}") from None
    pieces = tok.convert_ids_to_tokens(tok("a b", add_special_tokens=False).input_ids)
    if not any(p.startswith(WORD_START) for p in pieces):
        raise CheckpointError(f"the tokenizer at {t5} is not a sentencepiece T5 tokenizer (no '▁' word starts)")
    return tok


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """'auto': bfloat16 on a CUDA device that has it (float16 otherwise), float32 on the CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    choices = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if dtype not in choices:
        raise InvalidArgumentError(f"dtype must be 'auto' or one of {', '.join(choices)}, got {dtype!r}")
    return choices[dtype]


def head_widths(state: dict) -> dict:
    """The head widths a state_dict was built with (the published file: the PortConfig defaults)."""
    h, sc = "heatmap_predictor.implausibility.", "score_predictor.plausibility.linear_layers."
    if f"{h}conv_layers.0.weight" not in state or f"{sc}0.weight" not in state:
        return {}  # match_state_dict lists what is missing
    ups = sorted(int(m.group(1)) for k in state if (m := re.match(rf"^{re.escape(h)}deconv_layers\.(\d+)\.0\.weight$", k)))
    return {"heatmap_conv_widths": (state[f"{h}conv_layers.0.weight"].shape[0], state[f"{h}conv_layers.3.weight"].shape[0]),
            "heatmap_up_widths": tuple(state[f"{h}deconv_layers.{i}.0.weight"].shape[1] for i in ups),
            "heatmap_last_width": state[f"{h}last_conv1.weight"].shape[0],
            "score_mlp_widths": (state[f"{sc}0.weight"].shape[0], state[f"{sc}2.weight"].shape[0])}


def _build(state: dict, cfg: PortConfig, vit_config: ViTConfig, t5_config: T5Config, image_stats: tuple,
           where: str) -> RichHFPort:
    model = RichHFPort(cfg, vit_config, t5_config, image_stats)
    model.load_state_dict(match_state_dict(state, model, where), strict=False)  # tied aliases filled by `shared`
    return model.eval()


def load_port(checkpoint: str | Path, vit: str = "google/vit-large-patch16-384", t5: str = "t5-base",
              device: str | None = None, dtype: str | torch.dtype = "auto") -> "PortPredictor":
    """The port's `.pt` state_dict as a predictor. `vit` and `t5` (hub ids or local folders) give only the
    backbone configs, the image processor's statistics and the tokenizer: every weight comes from the file."""
    vit_config, t5_config = _backbone_configs(vit, t5)
    tokenizer = _tokenizer(t5)
    state = read_port_checkpoint(checkpoint)
    cfg = PortConfig(image_size=int(vit_config.image_size), patch_size=int(vit_config.patch_size), **head_widths(state),
                     source={"checkpoint": Path(checkpoint).name, "vit": str(vit), "t5": str(t5)})
    model = _build(state, cfg, vit_config, t5_config, _image_stats(vit), str(checkpoint))
    return PortPredictor(model, cfg, tokenizer, device=device, dtype=dtype)


def is_converted_port(path: str | Path) -> bool:
    """Whether `path` is a folder written by convert_port (its config.json names the architecture)."""
    config = Path(path) / "config.json"
    try:
        return json.loads(config.read_text()).get("architecture") == ARCHITECTURE
    except (OSError, ValueError, AttributeError):
        return False


def load_converted_port(path: str | Path, device: str | None = None, dtype: str | torch.dtype = "auto"):
    """A folder written by convert_port; reads only local files (no hub access)."""
    path = Path(path).expanduser()
    if not (path / WEIGHTS).is_file():
        raise CheckpointError(f"{path} is a converted port without its {WEIGHTS}")
    try:
        cfg = PortConfig.from_dict(json.loads((path / "config.json").read_text()))
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path}/config.json is not a converted port config: {e}") from None
    vit_config, t5_config = _backbone_configs(str(path / "vit"), str(path / "t5"))
    model = _build(load_file(str(path / WEIGHTS)), cfg, vit_config, t5_config, _image_stats(str(path / "vit")),
                   str(path))
    return PortPredictor(model, cfg, _tokenizer(str(path / "t5")), device=device, dtype=dtype, path=path)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def convert_port(checkpoint: str | Path, vit: str = "google/vit-large-patch16-384", t5: str = "t5-base",
                 out: str | Path = "cache/richhf-port") -> Path:
    """Write the port as a folder `load_rahf` reads offline: config.json (architecture, domain, license),
    model.safetensors (today's key names, tied copies once), vit/ and t5/ (configs, processor, tokenizer).

    The folder is assembled beside `out` and renamed into place, so a failed conversion leaves nothing."""
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InvalidArgumentError(f"{out} already exists and is not empty; choose a new folder")
    port = load_port(checkpoint, vit=vit, t5=t5, device="cpu", dtype="float32")
    port.config.source["sha256"] = _sha256(Path(checkpoint).expanduser())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        port.config.save(tmp)
        aliases = tied_aliases(port.model)
        state = {k: v.detach().contiguous() for k, v in port.model.state_dict().items() if k not in aliases}
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt", "rhf": ARCHITECTURE})
        port.model.vit.config.save_pretrained(tmp / "vit")
        _save_processor(vit, tmp / "vit")
        port.model.t5.config.save_pretrained(tmp / "t5")
        port.tokenizer.save_pretrained(tmp / "t5")
        atomic_write_text(tmp / "README.md", _folder_readme(port.config))
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _save_processor(vit: str, folder: Path) -> None:
    from transformers import AutoImageProcessor

    try:
        AutoImageProcessor.from_pretrained(vit).save_pretrained(folder)
    except (OSError, ValueError):  # none at the source: the loader falls back to ViT's mean/std 0.5
        pass


def _folder_readme(cfg: PortConfig) -> str:
    lic = cfg.license
    return (f"# RAHF, the authors' PyTorch port (converted)\n\nWeights: {lic['weights']}, from {lic['source']}; "
            f"{lic['note']}.\nConverted from `{cfg.source.get('checkpoint')}` (sha256 {cfg.source.get('sha256')}) "
            f"with ViT `{cfg.source.get('vit')}` and T5 `{cfg.source.get('t5')}`.\n"
            "Load with `rhf_core.rahf.load_rahf(<this folder>)`; see docs/guides/published-weights.md.\n")


# --- reading the decoder's labelled prompt ---------------------------------------------------------

def decoded_words(pieces: list[str], logits: torch.Tensor | None, mark_ids: torch.Tensor,
                  to_text: Callable[[list[str]], str]) -> list[tuple[str, bool, float]]:
    """The decoder's output as (word without its mark, marked `_0`?, probability of the mark).

    `pieces` are the generated sentencepiece pieces (EOS and after cut), `logits` (≥ len(pieces), V) the
    decoder's raw logits for each of them and, when it stopped by itself, for the EOS after them;
    `to_text` turns pieces into text. A word is the pieces from one "▁" piece to the next; its mark
    starts at its first later piece that begins with "_". The mark's probability is read where the
    decoder chose between marking the word and going on: p = P(best mark token) / (P(best mark token) +
    P(best other token)), so p ≥ 0.5 exactly when greedy decoding wrote a mark there. Where the output ran
    out of tokens before that choice, p is 1 for a marked word and 0 otherwise."""
    starts = [i for i, p in enumerate(pieces) if i == 0 or p.startswith(WORD_START)] + [len(pieces)]
    out = []
    for a, b in zip(starts, starts[1:]):
        text = to_text(pieces[a:b]).strip()
        marked = text.endswith(MARK) and len(text) > len(MARK)
        word = text[: -len(MARK)] if marked else text
        if not word:
            continue
        mark_at = next((i for i in range(a + 1, b) if pieces[i].startswith("_")), b)
        if logits is not None and mark_at < logits.shape[0]:
            probs = torch.softmax(logits[mark_at].float(), dim=-1)  # (V,)
            is_mark = torch.zeros_like(probs, dtype=torch.bool)
            is_mark[mark_ids] = True
            best_mark, best_other = probs[is_mark].max(), probs[~is_mark].max()
            p = float(best_mark / (best_mark + best_other))
        else:
            p = float(marked)
        out.append((word, marked, p))
    return out


def align_words(prompt_words: list[str], generated: list[tuple[str, bool, float]]):
    """Each prompt word's mark probability, read from the decoder word matched to it.

    Words are matched in order (difflib); a run of substituted words of the same length is matched
    position by position (the decoder's spelling of a word its vocabulary lacks). Prompt words the decoder
    did not write back get 0 and are returned as `unmatched`."""
    gen_words = [w for w, _, _ in generated]
    probs = [0.0] * len(prompt_words)
    matched = [False] * len(prompt_words)
    ops = difflib.SequenceMatcher(a=prompt_words, b=gen_words, autojunk=False).get_opcodes()
    for tag, i1, i2, j1, j2 in ops:
        if tag == "equal" or (tag == "replace" and i2 - i1 == j2 - j1):
            for i, j in zip(range(i1, i2), range(j1, j2)):
                probs[i], matched[i] = generated[j][2], True
    unmatched = [w for w, m in zip(prompt_words, matched) if not m]
    return probs, unmatched


# --- the predictor --------------------------------------------------------------------------------

class PortPredictor:
    """The port behind RAHF's interface: `.predict(images, prompts)` → list[Prediction]."""

    def __init__(self, model: RichHFPort, config: PortConfig, tokenizer, device=None,
                 dtype: str | torch.dtype = "auto", path: Path | None = None):
        from transformers import GenerationConfig

        self.config = config
        self.device = pick_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        self.tokenizer = tokenizer
        self.path = path
        self.metrics = {}  # nothing measured here: the authors' numbers are config.reported
        self.domain = config.domain
        vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        self.mark_ids = torch.tensor([i for i, p in enumerate(vocab) if p and p.startswith("_")], dtype=torch.long)
        if not len(self.mark_ids):
            raise CheckpointError("the T5 tokenizer has no piece starting with '_': it cannot write the port's `_0` marks")
        t5 = model.t5.config
        self.generation = GenerationConfig(max_new_tokens=config.max_new_tokens, do_sample=False, num_beams=1,
                                           decoder_start_token_id=t5.decoder_start_token_id,
                                           eos_token_id=t5.eos_token_id, pad_token_id=t5.pad_token_id,
                                           output_logits=True, return_dict_in_generate=True)
        weights = Path(path) / WEIGHTS if path is not None else None
        self.weights_key = (f"{Path(path).resolve()}@{weights.stat().st_mtime_ns}@{config.to_dict()}"
                            if weights and weights.is_file() else f"unsaved-port-{id(self)}")

    @property
    def name(self) -> str:
        return Path(self.path).name if self.path else f"richhf-port ({self.config.source.get('checkpoint', '?')})"

    def _check(self, images, prompts, batch_size):
        return check_predict_args(images, prompts, batch_size)

    @torch.no_grad()
    def predict(self, images, prompts: Sequence[str], batch_size: int = 32,
                progress: Callable[[int, int], None] | None = None) -> list[Prediction]:
        """Heatmaps (at each image's size), the four scores and misaligned words, as the port outputs them."""
        from transformers.modeling_outputs import BaseModelOutput

        # 1. Check inputs
        images, prompts, all_words = self._check(images, prompts, batch_size)
        out: list[Prediction] = []
        for start in range(0, len(images), int(batch_size)):
            # 2. Decode images; the caption is the prompt's RichHF tokens joined by spaces (the port's clean_prompt)
            batch = [_decode_image(im, start + i) for i, im in enumerate(images[start:start + batch_size])]
            words = all_words[start:start + batch_size]
            pixels = images_to_tensor(batch, self.config.image_size)  # (B, 3, S, S) in [0, 1]
            enc = self.tokenizer([" ".join(w) for w in words], return_tensors="pt", padding=True, truncation=True)
            # 3. Run the network: one encoder pass, the heads, the decoder
            grid, text_states = self.model.encode(pixels.to(self.device), enc.input_ids.to(self.device),
                                                  enc.attention_mask.to(self.device))
            heatmaps, scores = self.model.heads(grid)
            gen = self.model.t5.generate(encoder_outputs=BaseModelOutput(last_hidden_state=text_states),
                                         attention_mask=enc.attention_mask.to(self.device),
                                         generation_config=self.generation)
            logits = torch.stack(gen.logits, dim=1).float().cpu()  # (B, S, V)
            # 4. Back to each image's own size and the prompt's own words
            for i, im in enumerate(batch):
                out.append(self._prediction(i, im, words[i], heatmaps, scores, gen.sequences[i, 1:].cpu(), logits[i]))
            if progress is not None:
                progress(min(start + batch_size, len(images)), len(images))
        return out

    def _prediction(self, i, image, words, heatmaps, scores, ids, logits) -> Prediction:
        ids = ids.tolist()
        eos = self.generation.eos_token_id
        ids = ids[: ids.index(eos)] if eos in ids else ids  # the padding after EOS goes with it
        special = set(self.tokenizer.all_special_tokens)

        def to_text(pieces):  # as the port's batch_decode(skip_special_tokens=True) reads them
            return self.tokenizer.convert_tokens_to_string([p for p in pieces if p not in special])

        generated = decoded_words(self.tokenizer.convert_ids_to_tokens(ids), logits, self.mark_ids, to_text)
        probs, unmatched = align_words(words, generated)
        pred = Prediction(heatmaps={}, scores={s: float(scores[s][i]) for s in SCORE_NAMES},
                          words=list(zip(words, probs)),
                          meta={"generated_text": self.tokenizer.decode(ids, skip_special_tokens=True)})
        if unmatched:
            pred.meta["unmatched_words"] = unmatched
        for h in HEATMAP_NAMES:
            m = heatmaps[h][i].float().cpu().numpy()
            if h in self.config.heatmap_scale:  # calibrated (rhf_core.rahf.calibrate)
                m = np.clip(m * self.config.heatmap_scale[h] * heatmap_gate(h, pred.scores, pred.words), 0, 1)
            pred.heatmaps[h] = resize_heatmap(m.astype(np.float32), image.size)
        return pred


def _decode_image(im, index: int) -> Image.Image:
    """As RAHF.predict reads images: a PIL image keeps its size; files and bytes are capped as usual."""
    if isinstance(im, Image.Image):
        return load_image(im, max_side=None, name=f"image {index + 1}")
    return load_image(im, name=None if isinstance(im, (str, Path)) else f"image {index + 1}")


# --- tiny backbones (tests and benchmarks build the port's architecture small, offline) ----------------

def build_tiny_backbones(folder: str | Path, image_size: int = 64, patch_size: int = 16,
                         words: Sequence[str] = ()) -> tuple[Path, Path]:
    """Write `folder/vit` (a ViT config and processor) and `folder/t5` (a T5 config and a sentencepiece-style
    unigram tokenizer over `words`, letters and digits, with "_" and "0" for the port's marks)."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import Unigram
    from transformers import T5Config, T5TokenizerFast, ViTConfig, ViTImageProcessor

    folder = Path(folder)
    vit_dir, t5_dir = folder / "vit", folder / "t5"
    ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
              image_size=image_size, patch_size=patch_size).save_pretrained(vit_dir)
    ViTImageProcessor(size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3,
                      image_std=[0.5] * 3).save_pretrained(vit_dir)
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), (WORD_START, -4.0), ("_", -3.0)]
    vocab += [(WORD_START + w, -2.0) for w in dict.fromkeys(words)]
    vocab += [(c, -6.0) for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"]
    tok = Tokenizer(Unigram(vocab, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=WORD_START, prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement=WORD_START, prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                    extra_ids=0).save_pretrained(t5_dir)
    T5Config(vocab_size=len(vocab), d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
             relative_attention_num_buckets=8, dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0,
             eos_token_id=1).save_pretrained(t5_dir)
    return vit_dir, t5_dir
