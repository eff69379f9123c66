"""The generator API on a tiny random diffusers pipeline built locally (the `load_generator(path)` path),
the training CLI for a few steps, and the evaluation summary."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from rhf_core.t2i import GeneratorError, load_generator
from rhf_core.t2i.build import TinyT2IConfig, build_pipeline, build_tokenizer

TINY = TinyT2IConfig(image_size=32, vae_channels=(8, 16), latent_channels=4, unet_channels=(16, 32),
                     attention_head_dim=4, text_dim=16, text_layers=1, text_heads=2, norm_groups=8,
                     vae_norm_groups=4)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-pipe")
    build_pipeline(TINY, seed=0).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def gen(tiny_dir):
    return load_generator(tiny_dir)


def _arr(img):
    return np.asarray(img).astype(np.int16)


def test_tokenizer_is_word_level_with_unknown_words():
    tok = build_tokenizer()
    ids = tok("Two RED circles, on the grass!").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    words = tok.convert_ids_to_tokens(ids[1:-1])
    assert words == ["two", "red", "circles", "[UNK]", "on", "the", "grass", "[UNK]"]


def test_generate_shapes_and_per_prompt_lists(gen):
    assert gen.image_size == 32
    out = gen.generate(["two red circles", "a star"], n=3, seed=0, steps=3)
    assert [len(x) for x in out] == [3, 3]
    assert all(isinstance(im, Image.Image) and im.size == (32, 32) and im.mode == "RGB" for x in out for im in x)


def test_seed_determinism_and_batch_independence(gen):
    a = gen.generate(["two red circles", "a star"], n=2, seed=5, steps=3)
    b = gen.generate(["two red circles", "a star"], n=2, seed=5, steps=3)
    assert all(np.array_equal(_arr(x), _arr(y)) for xs, ys in zip(a, b) for x, y in zip(xs, ys))
    # The same (prompt, seed, j) alone in a batch: equal up to float rounding of batched kernels.
    alone = gen.generate(["a star"], n=2, seed=5, steps=3)
    assert np.abs(_arr(alone[0][1]) - _arr(a[1][1])).max() <= 2
    other = gen.generate(["a star"], n=2, seed=6, steps=3)
    assert np.abs(_arr(other[0][0]) - _arr(a[1][0])).mean() > 5
    # Samples of one prompt differ from each other.
    assert np.abs(_arr(a[0][0]) - _arr(a[0][1])).mean() > 5


def test_generate_with_latents_returns_the_same_images_and_their_latents(gen):
    plain = gen.generate(["two red circles", "a star"], n=2, seed=3, steps=3)
    images, latents = gen.generate(["two red circles", "a star"], n=2, seed=3, steps=3, with_latents=True)
    assert latents.shape == (2, 2, gen.pipe.unet.config.in_channels, 32 // gen.pipe.vae_scale_factor, 32 // gen.pipe.vae_scale_factor)
    assert all(np.abs(_arr(x) - _arr(y)).max() <= 1 for xs, ys in zip(plain, images) for x, y in zip(xs, ys))
    # The latents are the ones the images were decoded from.
    again = gen._decode(latents[1, 0:1].to(gen.device, gen.dtype))[0]
    assert np.abs(_arr(again) - _arr(images[1][0])).max() <= 1


def test_progress_reports_every_step(gen):
    seen = []
    gen.generate(["one circle"], n=3, steps=4, batch_size=2, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (12, 12)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_inpaint_keeps_every_unmasked_pixel(gen):
    image = gen.generate("a blue square", n=1, seed=1, steps=3)[0][0].resize((48, 40))  # not the model's size
    mask = np.zeros((40, 48), dtype=bool)
    mask[8:24, 10:30] = True
    out = gen.inpaint(image, Image.fromarray(mask.astype(np.uint8) * 255), "a blue square", n=2, seed=0, steps=3)
    assert len(out) == 2
    orig = _arr(image)
    for cand in out:
        assert cand.size == image.size
        c = _arr(cand)
        assert np.array_equal(c[~mask], orig[~mask])
        assert np.abs(c[mask] - orig[mask]).mean() > 3  # the masked region was repainted
    again = gen.inpaint(image, mask, "a blue square", n=2, seed=0, steps=3)
    assert np.array_equal(_arr(again[0]), _arr(out[0]))


@pytest.mark.parametrize("call, message", [
    (lambda g: g.generate([""], n=2, steps=2), "empty prompt"),
    (lambda g: g.generate("   ", n=2, steps=2), "empty prompt"),
    (lambda g: g.generate([], n=2, steps=2), "no prompts"),
    (lambda g: g.generate("a star", n=0, steps=2), "positive"),
    (lambda g: g.generate("a star", n=-3, steps=2), "positive"),
    (lambda g: g.inpaint(Image.new("RGB", (32, 32)), np.ones((16, 16), bool), "a star", steps=2), "16×16 but the image is 32×32"),
    (lambda g: g.inpaint(Image.new("RGB", (32, 32)), Image.new("RGB", (32, 32), "white"), "a star", steps=2), "single-channel"),
    (lambda g: g.inpaint(Image.new("RGB", (32, 32)), np.zeros((32, 32), bool), "a star", steps=2), "mask is empty"),
    (lambda g: g.inpaint(Image.new("RGB", (32, 32)), np.ones((32, 32), bool), "", steps=2), "empty prompt"),
])
def test_bad_requests_raise_clear_errors(gen, call, message):
    with pytest.raises(GeneratorError, match=message):
        call(gen)


def test_paths_that_are_not_pipelines(tmp_path):
    with pytest.raises(GeneratorError, match="not a diffusers pipeline folder"):
        load_generator(tmp_path)
    with pytest.raises(GeneratorError, match="no such folder"):
        load_generator(tmp_path / "missing")
    (tmp_path / "model_index.json").write_text("{not json")
    with pytest.raises(GeneratorError, match="could not load"):
        load_generator(tmp_path)


def test_train_t2i_runs_resumes_and_saves_a_loadable_pipeline(tmp_path):
    from rhf_core.t2i.train import T2ITrainConfig, train_t2i

    cfg = T2ITrainConfig(out=str(tmp_path / "out"), n_images=24, vae_steps=3, vae_batch=4, unet_steps=2,
                         unet_batch=4, save_every=1, state_dir=str(tmp_path / "state"), model=TINY)
    train_t2i(cfg, resume=False)
    log = json.loads((tmp_path / "out" / "train_log.json").read_text())["log"]
    assert [e["step"] for e in log if e["stage"] == "unet"] == [1, 2]
    cfg.unet_steps = 4
    train_t2i(cfg, resume=True)  # picks up at UNet step 2, VAE already done
    log = json.loads((tmp_path / "out" / "train_log.json").read_text())["log"]
    assert [e["step"] for e in log if e["stage"] == "unet"] == [1, 2, 3, 4]
    assert [e["step"] for e in log if e["stage"] == "vae"] == [1, 2, 3]
    g = load_generator(tmp_path / "out")
    assert g.pipe.vae.config.scaling_factor != 0.18215  # fitted to the latents
    assert g.generate("one circle", n=1, steps=2)[0][0].size == (32, 32)


def test_train_t2i_with_ema_saves_the_average_and_resumes_it(tmp_path):
    from safetensors.torch import load_file

    from rhf_core.t2i.train import T2ITrainConfig, train_t2i
    from rhf_core.training import warmup_cosine

    assert warmup_cosine(500, 1000, 100, "constant") == 1.0
    assert warmup_cosine(999, 1000, 100, "cosine") < 1e-4
    with pytest.raises(ValueError, match="schedule"):
        warmup_cosine(0, 10, 100, "linear")
    cfg = T2ITrainConfig(out=str(tmp_path / "out"), n_images=16, vae_steps=2, vae_batch=4, unet_steps=2,
                         unet_batch=4, save_every=1, state_dir=str(tmp_path / "state"), model=TINY,
                         unet_lr=1e-2, lr_schedule="constant", ema_decay=0.99, snr_gamma=5.0)
    train_t2i(cfg, resume=False)
    state = tmp_path / "state" / "unet"
    ema = load_file(str(state / "ema_unet.safetensors"))
    raw = load_file(str(state / "unet.safetensors"))
    saved = load_file(str(tmp_path / "out" / "unet" / "diffusion_pytorch_model.safetensors"))
    key = "conv_in.weight"
    assert not torch.allclose(ema[key], raw[key])  # the average lags the raw weights
    assert torch.allclose(saved[key].float(), ema[key], atol=1e-3)  # and the average is what ships (fp16)
    cfg.unet_steps = 3
    train_t2i(cfg, resume=True)
    from safetensors import safe_open

    with safe_open(str(state / "ema_unet.safetensors"), "pt") as h:
        assert h.metadata()["updates"] == "3"  # 2 before the resume + 1 after


def test_train_t2i_continues_from_a_saved_pipeline(tmp_path):
    from safetensors.torch import load_file

    from rhf_core.t2i.train import T2ITrainConfig, train_t2i

    base = T2ITrainConfig(out=str(tmp_path / "a"), n_images=16, vae_steps=2, vae_batch=4, unet_steps=2, unet_batch=4,
                          save_every=1, state_dir=str(tmp_path / "sa"), model=TINY, unet_lr=1e-2)
    train_t2i(base, resume=False)
    # zero further steps: the continued pipeline is the saved one, VAE included (no VAE training)
    cont = T2ITrainConfig(out=str(tmp_path / "b"), n_images=16, unet_steps=0, unet_batch=4, model=TINY,
                          state_dir=str(tmp_path / "sb"), init_from=str(tmp_path / "a"))
    train_t2i(cont, resume=False)
    for f in ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
              "text_encoder/model.safetensors"):
        a, b = load_file(str(tmp_path / "a" / f)), load_file(str(tmp_path / "b" / f))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = json.loads((tmp_path / "b" / "train_log.json").read_text())
    assert log["config"]["init_from"] == str(tmp_path / "a")
    assert [(e["stage"], e["step"]) for e in log["log"]] == [("vae", 1), ("vae", 2), ("unet", 1), ("unet", 2)]
    assert all(e["run"]["unet_lr"] == 1e-2 for e in log["log"])  # earlier entries say which run they came from
    # two more steps move the weights
    cont.unet_steps, cont.out = 2, str(tmp_path / "c")
    train_t2i(cont, resume=False)
    a = load_file(str(tmp_path / "a" / "unet/diffusion_pytorch_model.safetensors"))
    c = load_file(str(tmp_path / "c" / "unet/diffusion_pytorch_model.safetensors"))
    assert not torch.equal(a["conv_in.weight"], c["conv_in.weight"])
    other = TinyT2IConfig(image_size=32, vae_channels=(8, 16), latent_channels=4, unet_channels=(16, 16),
                          text_dim=32, max_length=8)
    with pytest.raises(ValueError, match="does not match this model config"):
        train_t2i(T2ITrainConfig(out=str(tmp_path / "d"), n_images=8, unet_steps=0, model=other,
                                 state_dir=str(tmp_path / "sd"), init_from=str(tmp_path / "a")), resume=False)
    with pytest.raises(FileNotFoundError, match="a pipeline saved by train-t2i"):
        train_t2i(T2ITrainConfig(out=str(tmp_path / "e"), n_images=8, unet_steps=0, model=TINY,
                                 init_from=str(tmp_path / "nothing")), resume=False)


def test_summary_counts_by_category_and_split():
    from rhf_core.t2i.evaluate import summarize

    rows = []
    for i, (cat, unseen, aligned) in enumerate([("count", False, True), ("count", False, False), ("color", False, True),
                                                ("color", True, False), ("combination", True, True)]):
        rows.append({"prompt": str(i), "category": cat, "unseen": unseen, "single_object": cat == "color", "j": 0,
                     "aligned": aligned, "implausible": i == 0, "implausible_area": 0.1 * (i == 0),
                     "n_objects": 1, "ok_shape": True, "ok_count": aligned if cat == "count" else None})
    s = summarize(rows)
    assert s["overall"]["alignment_rate"] == 0.6
    assert s["seen"]["count"]["alignment_rate"] == 0.5 and s["seen"]["count"]["count_accuracy"] == 0.5
    assert s["seen"]["all"]["n_images"] == 3 and s["unseen"]["all"]["n_images"] == 2
    assert s["unseen"]["single_object"]["alignment_rate"] == 0.0
    assert s["overall"]["implausible_rate"] == 0.2


def test_embedded_generator_draws_scenes_the_judge_parses():
    from rhf_core.judge import judge
    from rhf_core.shapes.grammar import BACKGROUNDS

    gen = load_generator()
    assert gen.image_size == 64 and gen.name == "t2i-shapes"
    prompts = ["a red circle", "a purple circle", "one circle"]
    images = gen.generate(prompts, n=6, seed=0)
    verdicts = [judge(im, p) for p, row in zip(prompts, images) for im in row]
    assert all(v.scene["background"] in BACKGROUNDS for v in verdicts)
    assert sum(len(v.scene["objects"]) >= 1 for v in verdicts) >= 15  # objects drawn in most images (measured 17/18)
    assert sum(v.aligned for v in verdicts) >= 3  # a real, imperfect generator: some right, many wrong
    red = [o["color"] for v in verdicts[:6] for o in v.scene["objects"]]
    assert red.count("red") >= len(red) / 3  # the colour word steers the colour


def test_caption_noise_misstates_one_attribute_and_keeps_the_images():
    from dataclasses import asdict

    from rhf_core.shapes.grammar import parse_prompt
    from rhf_core.t2i.train import training_set

    clean_images, clean = training_set(300, 3, 32)
    noisy_images, noisy = training_set(300, 3, 32, caption_noise=0.3)
    assert np.array_equal(clean_images, noisy_images)
    changed = [(a, b) for a, b in zip(clean, noisy) if a != b]
    assert 0.2 < len(changed) / 300 < 0.4
    for a, b in changed:  # the image's true prompt and its caption differ in exactly one attribute
        sa, sb = asdict(parse_prompt(a)), asdict(parse_prompt(b))
        assert sum(sa[k] != sb[k] for k in ("count", "color", "shape", "background")) == 1, (a, b)
    with pytest.raises(ValueError, match="caption_noise is a share"):
        training_set(2, 0, 32, caption_noise=1.5)


def test_dtype_is_float32_on_cpu_and_named_dtypes_are_honoured():
    from rhf_core.t2i.generator import pick_dtype

    cpu = torch.device("cpu")
    assert pick_dtype(cpu) == torch.float32 and pick_dtype(cpu, "bfloat16") == torch.bfloat16
    with pytest.raises(GeneratorError, match="dtype must be auto, float16, bfloat16, float32"):
        pick_dtype(cpu, "int8")


@pytest.mark.parametrize("cls", ["FluxPipeline", "StableDiffusion3Pipeline", "StableDiffusionXLInpaintPipeline"])
def test_other_pipeline_families_are_refused_by_their_index(tmp_path, cls):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": cls, "transformer": ["diffusers", "X"]}))
    with pytest.raises(GeneratorError, match=f"is a {cls}, which this project does not run: supported are Stable "
                                             r"Diffusion 1\.x/2\.x"):
        load_generator(tmp_path)


def test_an_sd_index_over_an_sdxl_style_unet_is_refused_after_loading(tmp_path):
    """A folder that names StableDiffusionPipeline but whose UNet takes SDXL's added time conditioning."""
    from dataclasses import replace

    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    from rhf_core.t2i.build import build_components

    comps = build_components(replace(TINY), seed=0)
    cfg = {k: v for k, v in comps["unet"].config.items() if not k.startswith("_")}
    cfg.update(addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=16 + 6 * 8)
    comps["unet"] = UNet2DConditionModel.from_config(cfg)
    StableDiffusionPipeline(**comps, safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(tmp_path / "odd")
    with pytest.raises(GeneratorError, match="added 'text_time' conditioning .*SDXL-style"):
        load_generator(tmp_path / "odd")
