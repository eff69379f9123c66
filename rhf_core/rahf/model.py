"""The RAHF network (RichHF, Liang et al. 2024, sec. 4; docs/design.md section 4).

An image encoder (ViT) and a text encoder; image tokens and prompt-word tokens are concatenated and
fused by self-attention; three heads read the fused tokens:
  (a) heatmap: image tokens → grid → transposed convolutions up to the input resolution → sigmoid;
  (b) score: mean-pooled tokens → MLP → sigmoid;
  (c) misaligned keywords: a per-word tagging head over the text tokens.
Variants: `multihead` (one pass, a head per output) and `augmented` (the paper's best: one head per
output *type*, with the task named in the prompt, e.g. "implausibility heatmap", one fusion pass
per task sharing the image encoding).
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from rhf_core.dataset import HEATMAP_NAMES, SCORE_NAMES
from rhf_core.rahf.config import TASKS, RAHFConfig

IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)


def _encoder(dim: int, layers: int, heads: int, dropout: float) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(dim, heads, dim * 4, dropout, activation="gelu", batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


# --- image encoders ---------------------------------------------------------------------------

class ScratchVision(nn.Module):
    """A small ViT: a convolutional stem (stride-2 3×3 convolutions down to the patch grid, which
    trains much faster from scratch than a single patchify layer; Xiao et al. 2021), learned
    positions, pre-norm transformer."""

    def __init__(self, cfg: RAHFConfig):
        super().__init__()
        v = cfg.vision
        self.grid = cfg.image_size // v.patch_size
        self.dim = v.dim
        stages = int(math.log2(v.patch_size))
        widths = [max(16, v.dim // 2 ** (stages - i)) for i in range(1, stages)] + [v.dim]
        layers, ch = [], 3
        for w in widths:
            layers += [nn.Conv2d(ch, w, 3, stride=2, padding=1), nn.GroupNorm(1, w), nn.GELU()]
            ch = w
        layers.append(nn.Conv2d(ch, v.dim, 1))
        self.patch = nn.Sequential(*layers)
        self.pos = nn.Parameter(torch.randn(1, self.grid * self.grid, v.dim) * 0.02)
        self.blocks = _encoder(v.dim, v.layers, v.heads, cfg.dropout)
        self.norm = nn.LayerNorm(v.dim)
        self.register_buffer("mean", torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGE_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch((pixels - self.mean) / self.std)  # (B, D, g, g)
        x = x.flatten(2).transpose(1, 2) + self.pos  # (B, g*g, D)
        return self.norm(self.blocks(x))


class HFVision(nn.Module):
    """A Hugging Face vision tower (ViT, SigLIP or CLIP vision); patch tokens out, CLS dropped."""

    def __init__(self, cfg: RAHFConfig, source: str, pretrained: bool):
        super().__init__()
        from transformers import AutoConfig, AutoModel, CLIPVisionModel, SiglipVisionModel

        hf_cfg = AutoConfig.from_pretrained(source)
        model_type = hf_cfg.model_type
        if model_type in ("clip", "siglip"):
            cls = CLIPVisionModel if model_type == "clip" else SiglipVisionModel
            hf_cfg = hf_cfg.vision_config
            self.backbone = cls.from_pretrained(source) if pretrained else cls(hf_cfg)
        else:
            self.backbone = AutoModel.from_pretrained(source) if pretrained else AutoModel.from_config(hf_cfg)
        self.hf_config = self.backbone.config
        self.input_size = int(self.hf_config.image_size)
        self.grid = self.input_size // int(self.hf_config.patch_size)
        self.dim = int(self.hf_config.hidden_size)
        mean, std = _processor_stats(source)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.shape[-1] != self.input_size:
            pixels = F.interpolate(pixels, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        out = self.backbone(pixel_values=(pixels - self.mean) / self.std).last_hidden_state
        n = self.grid * self.grid
        return out[:, -n:, :] if out.shape[1] > n else out  # drop CLS / register tokens


def _processor_stats(source: str) -> tuple[tuple, tuple]:
    try:
        from transformers import AutoImageProcessor

        proc = AutoImageProcessor.from_pretrained(source)
        return tuple(proc.image_mean), tuple(proc.image_std)
    except Exception:  # no preprocessor_config.json: the common ViT default
        return IMAGE_MEAN, IMAGE_STD


# --- text encoders ----------------------------------------------------------------------------

def word_bucket(word: str, buckets: int) -> int:
    """Stable hash of a case-folded word into 1..buckets (0 is padding)."""
    return zlib.crc32(word.lower().encode("utf-8")) % buckets + 1


class ScratchText(nn.Module):
    """Hashed word embeddings, learned positions and a small transformer: one token per word."""

    def __init__(self, cfg: RAHFConfig):
        super().__init__()
        t = cfg.text
        self.buckets = t.vocab_buckets
        self.dim = t.dim
        self.embed = nn.Embedding(t.vocab_buckets + 1, t.dim, padding_idx=0)
        self.pos = nn.Parameter(torch.randn(1, cfg.max_words + 8, t.dim) * 0.02)
        self.blocks = _encoder(t.dim, t.layers, t.heads, cfg.dropout)
        self.norm = nn.LayerNorm(t.dim)

    def forward(self, words: list[list[str]], device) -> tuple[torch.Tensor, torch.Tensor]:
        length = max(1, max(len(w) for w in words))
        ids = torch.zeros(len(words), length, dtype=torch.long)
        for i, ws in enumerate(words):
            ids[i, : len(ws)] = torch.tensor([word_bucket(w, self.buckets) for w in ws], dtype=torch.long)
        ids = ids.to(device)
        mask = ids > 0  # (B, L) True = a word
        x = self.embed(ids) + self.pos[:, :length]
        x = self.blocks(x, src_key_padding_mask=~mask)
        return self.norm(x), mask


class HFText(nn.Module):
    """A T5 encoder or a BERT-style encoder; subword states are averaged per word."""

    def __init__(self, cfg: RAHFConfig, source: str, pretrained: bool):
        super().__init__()
        from transformers import AutoConfig, AutoModel, AutoTokenizer, T5EncoderModel

        self.tokenizer = AutoTokenizer.from_pretrained(source)
        hf_cfg = AutoConfig.from_pretrained(source)
        if hf_cfg.model_type in ("t5", "mt5", "umt5"):
            self.backbone = T5EncoderModel.from_pretrained(source) if pretrained else T5EncoderModel(hf_cfg)
        elif hf_cfg.model_type in ("clip", "siglip"):
            from transformers import CLIPTextModel, SiglipTextModel

            cls = CLIPTextModel if hf_cfg.model_type == "clip" else SiglipTextModel
            self.backbone = cls.from_pretrained(source) if pretrained else cls(hf_cfg.text_config)
        else:
            self.backbone = AutoModel.from_pretrained(source) if pretrained else AutoModel.from_config(hf_cfg)
        self.hf_config = self.backbone.config
        self.dim = int(getattr(self.hf_config, "hidden_size", None) or self.hf_config.d_model)
        self.max_length = min(int(getattr(self.tokenizer, "model_max_length", 512) or 512), 512)

    def forward(self, words: list[list[str]], device) -> tuple[torch.Tensor, torch.Tensor]:
        safe = [w if w else [""] for w in words]
        enc = self.tokenizer(safe, is_split_into_words=True, padding=True, truncation=True,
                             max_length=self.max_length, return_tensors="pt")
        out = self.backbone(input_ids=enc["input_ids"].to(device),
                            attention_mask=enc["attention_mask"].to(device)).last_hidden_state  # (B, T, D)
        length = max(1, max(len(w) for w in words))
        pooled = out.new_zeros(len(words), length, out.shape[-1])
        mask = torch.zeros(len(words), length, dtype=torch.bool, device=device)
        for i in range(len(words)):
            word_ids = enc.word_ids(i)
            index = torch.tensor([w if w is not None else -1 for w in word_ids], device=device)
            for j in range(len(words[i])):
                sel = index == j
                if sel.any():
                    pooled[i, j] = out[i, sel].mean(0)
                    mask[i, j] = True
        return pooled, mask


# --- heads ------------------------------------------------------------------------------------

class HeatmapHead(nn.Module):
    """Image tokens → (g × g) grid → convolutions and 2× transposed convolutions → input size.

    With `skip`, each upsampling stage also sees the input image at its resolution through a small
    convolution (concatenated, then mixed by a 3×3 convolution): the patch grid says *what* is wrong,
    the pixels say *where* its edges are."""

    SKIP_CHANNELS = 16

    def __init__(self, dim: int, grid: int, image_size: int, outputs: int, skip: bool = False):
        super().__init__()
        self.grid, self.image_size, self.skip = grid, image_size, skip
        self.stages = max(0, round(math.log2(max(image_size // grid, 1))))
        # net = [conv, GELU, (transposed conv, GELU) × stages, conv]: one Sequential, as checkpoints store it
        layers: list[nn.Module] = [nn.Conv2d(dim, 64, 3, padding=1), nn.GELU()]
        skips, mixes = [], []
        ch, c = 64, self.SKIP_CHANNELS
        for _ in range(self.stages):
            nxt = max(16, ch // 2)
            layers += [nn.ConvTranspose2d(ch, nxt, 4, stride=2, padding=1), nn.GELU()]
            if skip:
                skips.append(nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.GELU(), nn.Conv2d(c, c, 3, padding=1),
                                           nn.GELU()))
                mixes.append(nn.Sequential(nn.Conv2d(nxt + c, nxt, 3, padding=1), nn.GELU()))
            ch = nxt
        layers.append(nn.Conv2d(ch, outputs, 3, padding=1))
        self.net = nn.Sequential(*layers)
        if skip:
            self.skips, self.mixes = nn.ModuleList(skips), nn.ModuleList(mixes)

    def forward(self, image_tokens: torch.Tensor, pixels: torch.Tensor | None = None) -> torch.Tensor:
        """`pixels` (B, 3, S, S), normalised, is needed with skip connections."""
        b, n, d = image_tokens.shape
        x = image_tokens.transpose(1, 2).reshape(b, d, self.grid, self.grid)
        if not self.skip:
            x = self.net(x)
        else:
            if pixels is None:
                raise ValueError("a heatmap head with skip connections needs the pixels")
            x = self.net[1](self.net[0](x))
            for i in range(self.stages):
                x = self.net[3 + 2 * i](self.net[2 + 2 * i](x))
                p = F.interpolate(pixels, size=x.shape[-2:], mode="area")
                x = self.mixes[i](torch.cat([x, self.skips[i](p)], dim=1))
            x = self.net[-1](x)
        # x: (B, outputs, ~image_size, ~image_size)
        if x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return x  # logits


def heatmap_features(heat_logits: torch.Tensor) -> torch.Tensor:
    """(B, K, S, S) heatmap logits → (B, 3K): mean, max and top-1% mean of each predicted map."""
    p = torch.sigmoid(heat_logits).flatten(2)  # (B, K, S*S)
    k = max(1, p.shape[-1] // 100)
    return torch.cat([p.mean(-1), p.amax(-1), p.topk(k, dim=-1).values.mean(-1)], dim=-1)


class ScoreHead(nn.Module):
    """Mean- and max-pooled fused tokens, plus statistics of the predicted heatmaps → MLP.

    Max pooling keeps a small local defect (one melted shape among 64 patches) from being averaged
    away; the heatmap statistics let the scores lean on where the model sees problems (in the
    data, plausibility and implausibility mass correlate strongly)."""

    def __init__(self, dim: int, outputs: int, heat_features: int):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(2 * dim + heat_features), nn.Linear(2 * dim + heat_features, dim),
                                 nn.GELU(), nn.Linear(dim, outputs))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor, heat: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1).to(tokens.dtype)
        mean = (tokens * m).sum(1) / m.sum(1).clamp(min=1)
        peak = tokens.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)
        return self.net(torch.cat([mean, peak, heat], dim=-1))  # logits


# --- the model --------------------------------------------------------------------------------

class RAHFModel(nn.Module):
    def __init__(self, cfg: RAHFConfig, backbone_dir: Path | None = None, pretrained: bool = True):
        """`backbone_dir` (a checkpoint's folder) rebuilds HF backbones from their saved configs
        and tokenizer without downloading; otherwise `name_or_path` is loaded (pretrained)."""
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        if cfg.vision.kind == "scratch":
            self.vision = ScratchVision(cfg)
        else:
            src = str(backbone_dir / "vision") if backbone_dir else cfg.vision.name_or_path
            self.vision = HFVision(cfg, src, pretrained=pretrained and backbone_dir is None)
        if cfg.text.kind == "scratch":
            self.text = ScratchText(cfg)
        else:
            src = str(backbone_dir / "text") if backbone_dir else cfg.text.name_or_path
            self.text = HFText(cfg, src, pretrained=pretrained and backbone_dir is None)
        d = cfg.fusion_dim
        self.grid = self.vision.grid
        self.image_proj = nn.Linear(self.vision.dim, d)
        self.text_proj = nn.Linear(self.text.dim, d)
        self.type_embed = nn.Parameter(torch.zeros(2, d))  # 0 = image token, 1 = text token
        self.fusion = _encoder(d, cfg.fusion_layers, cfg.fusion_heads, cfg.dropout)
        self.norm = nn.LayerNorm(d)
        multi = cfg.variant == "multihead"
        self.heatmap_head = HeatmapHead(d, self.grid, cfg.image_size, len(HEATMAP_NAMES) if multi else 1,
                                        skip=cfg.heatmap_skip)
        self.score_head = ScoreHead(d, len(SCORE_NAMES) if multi else 1, 3 * len(HEATMAP_NAMES))
        self.keyword_head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 1))

    def _fuse(self, image_tokens, text_tokens, text_mask):
        img = self.image_proj(image_tokens) + self.type_embed[0]
        txt = self.text_proj(text_tokens) + self.type_embed[1]
        x = torch.cat([img, txt], dim=1)  # (B, N + L, D)
        mask = torch.cat([torch.ones(img.shape[:2], dtype=torch.bool, device=img.device), text_mask], dim=1)
        x = self.norm(self.fusion(x, src_key_padding_mask=~mask))
        return x, mask

    def _skip_pixels(self, pixels: torch.Tensor) -> torch.Tensor | None:
        if not self.cfg.heatmap_skip:
            return None
        mean, std = (torch.tensor(v, device=pixels.device).view(1, 3, 1, 1) for v in (IMAGE_MEAN, IMAGE_STD))
        return (pixels - mean) / std  # the scratch ViT's normalisation, one definition

    def forward(self, pixels: torch.Tensor, prompt_words: list[list[str]]) -> dict[str, torch.Tensor]:
        """pixels (B, 3, S, S) in [0, 1]; prompt_words: the prompt's tokens per sample.

        Returns logits: heatmaps (B, 2, S, S), scores (B, 4), words (B, L) over prompt words."""
        image_tokens = self.vision(pixels)  # (B, N, Dv)
        n = image_tokens.shape[1]
        words = [w[: self.cfg.max_words] for w in prompt_words]
        if self.cfg.variant == "multihead":
            text, text_mask = self.text(words, pixels.device)
            x, mask = self._fuse(image_tokens, text, text_mask)
            heat = self.heatmap_head(x[:, :n], self._skip_pixels(pixels))
            return {
                "heatmaps": heat,
                "scores": self.score_head(x, mask, heatmap_features(heat)),
                "words": self.keyword_head(x[:, n:]).squeeze(-1),
            }
        # Augmented prompt: one fusion pass per task, the task's words before the prompt's.
        b = pixels.shape[0]
        tasks = list(HEATMAP_NAMES) + list(SCORE_NAMES) + ["keywords"]
        task_words = [TASKS[t].split() for t in tasks]
        all_words = [tw + w for tw in task_words for w in words]  # task-major: (T * B)
        text, text_mask = self.text(all_words, pixels.device)
        img = image_tokens.repeat(len(tasks), 1, 1)
        x, mask = self._fuse(img, text, text_mask)
        x = x.view(len(tasks), b, *x.shape[1:])
        mask = mask.view(len(tasks), b, -1)
        nh, ns = len(HEATMAP_NAMES), len(SCORE_NAMES)
        skip = self._skip_pixels(pixels)
        heat = self.heatmap_head(x[:nh, :, :n].reshape(nh * b, n, -1),
                                 None if skip is None else skip.repeat(nh, 1, 1, 1))  # (nh*B, 1, S, S)
        heat = heat.view(nh, b, *heat.shape[-2:]).transpose(0, 1)  # (B, nh, S, S)
        feats = heatmap_features(heat).repeat(ns, 1)  # the task's own heatmaps, for each score task
        scores = self.score_head(x[nh:nh + ns].reshape(ns * b, *x.shape[2:]), mask[nh:nh + ns].reshape(ns * b, -1), feats)
        scores = scores.view(ns, b).transpose(0, 1)  # (B, ns)
        k = len(task_words[-1])
        length = max(1, max(len(w) for w in words))
        word_logits = self.keyword_head(x[-1, :, n + k: n + k + length]).squeeze(-1)
        return {"heatmaps": heat, "scores": scores, "words": word_logits}
