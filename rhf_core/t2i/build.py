"""Build a Stable-Diffusion-style pipeline from small configs, entirely offline.

Every component is diffusers'/transformers' own class (UNet2DConditionModel, AutoencoderKL,
CLIPTextModel, a word-level fast tokenizer, a standard scheduler), so the embedded generator and any
real Stable Diffusion checkpoint go through one code path. Used to train the embedded generator and,
at toy sizes, by the tests."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from rhf_core.shapes.grammar import BACKGROUNDS, COLORS, COUNT_WORDS, PLURALS, SHAPES

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "<|startoftext|>", "<|endoftext|>")


def grammar_vocabulary() -> list[str]:
    """Every word a ShapesWorld prompt can use, plus common glue words; anything else is [UNK]."""
    words = set(COUNT_WORDS.values()) | {"a", "an", "the", "of", "with", "and", "on", "in"}
    words |= set(COLORS) | set(SHAPES) | set(PLURALS.values())
    for bg in BACKGROUNDS.values():
        words |= set(bg["phrase"].split())
    return sorted(words)


def build_tokenizer(words: list[str] | None = None, max_length: int = 16):
    """A word-level tokenizer (lower-cased, punctuation split off) built from a word list, no download."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for w in words or grammar_vocabulary():
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    bos, eos = "<|startoftext|>", "<|endoftext|>"
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, vocab[bos]), (eos, vocab[eos])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, unk_token="[UNK]",
                                   pad_token="[PAD]", model_max_length=max_length)


@dataclass
class TinyT2IConfig:
    """Sizes of the embedded generator. Latents are image_size / 2**(len(vae_channels) - 1) a side."""

    image_size: int = 64
    vae_channels: tuple = (32, 64, 64)
    latent_channels: int = 4
    unet_channels: tuple = (64, 128, 128)
    unet_layers: int = 1
    attention_head_dim: int = 8
    text_dim: int = 64
    text_layers: int = 2
    text_heads: int = 4
    max_length: int = 16
    # GroupNorm groups: keep several channels per group. One channel per group is instance norm,
    # which removes each image's per-channel mean: the VAE then cannot keep colours.
    norm_groups: int = 8
    vae_norm_groups: int = 4
    # What the UNet predicts: "epsilon" (SD 1.x, SD 2 base) or "v_prediction" (SD 2.x 768-px models).
    prediction_type: str = "epsilon"
    # SD 2.x's UNet layout: linear in/out projections around the attention blocks, attention upcast to
    # float32 (what SD 2.1 ships with).
    sd2_layout: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def latent_size(self) -> int:
        return self.image_size // 2 ** (len(self.vae_channels) - 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def build_components(cfg: TinyT2IConfig, seed: int = 0) -> dict:
    """Randomly initialised components (deterministic for `seed`)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = build_tokenizer(max_length=cfg.max_length)
    n_vae = len(cfg.vae_channels)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=cfg.latent_channels,
        down_block_types=("DownEncoderBlock2D",) * n_vae, up_block_types=("UpDecoderBlock2D",) * n_vae,
        block_out_channels=tuple(cfg.vae_channels), layers_per_block=1, norm_num_groups=cfg.vae_norm_groups,
        sample_size=cfg.image_size,
    )
    n_unet = len(cfg.unet_channels)
    unet = UNet2DConditionModel(
        sample_size=cfg.latent_size, in_channels=cfg.latent_channels, out_channels=cfg.latent_channels,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n_unet - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n_unet - 1) + ("UpBlock2D",),
        block_out_channels=tuple(cfg.unet_channels), layers_per_block=cfg.unet_layers,
        cross_attention_dim=cfg.text_dim, attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=cfg.norm_groups, use_linear_projection=cfg.sd2_layout, upcast_attention=cfg.sd2_layout,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.text_dim, intermediate_size=cfg.text_dim * 4,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
        max_position_embeddings=cfg.max_length, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    ))
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, prediction_type=cfg.prediction_type)
    return {"vae": vae, "unet": unet, "text_encoder": text_encoder, "tokenizer": tokenizer, "scheduler": scheduler}


def build_pipeline(cfg: TinyT2IConfig | None = None, seed: int = 0):
    """A StableDiffusionPipeline of random tiny components (no safety checker: synthetic shapes)."""
    from diffusers import StableDiffusionPipeline

    comps = build_components(cfg or TinyT2IConfig(), seed)
    return StableDiffusionPipeline(**comps, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


# What an SDXL checkpoint's model_index.json says (stabilityai/stable-diffusion-xl-base-1.0): enough for
# the refusal, which reads it before loading anything.
SDXL_INDEX = {
    "_class_name": "StableDiffusionXLPipeline", "_diffusers_version": "0.19.0.dev0",
    "force_zeros_for_empty_prompt": True, "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"], "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
}


def write_sdxl_index(path) -> None:
    """A folder that announces itself as an SDXL pipeline (no weights): what the generator must refuse."""
    import json
    from pathlib import Path

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "model_index.json").write_text(json.dumps(SDXL_INDEX, indent=2) + "\n")
