"""RAHF on tiny configs of both backbone kinds (scratch, and Hugging Face classes built locally)."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from rhf_core.dataset import tokenize_prompt
from rhf_core.rahf import CheckpointError, RAHFConfig, TextConfig, VisionConfig, load_rahf, new_rahf
from rhf_core.rahf.evaluate import evaluate_rahf, format_tables
from rhf_core.rahf.train import TrainConfig, train_rahf


def tiny(variant="multihead", **kw) -> RAHFConfig:
    return RAHFConfig(image_size=32, vision=VisionConfig(patch_size=8, dim=32, layers=1, heads=2),
                      text=TextConfig(vocab_buckets=64, dim=32, layers=1, heads=2), fusion_dim=32,
                      fusion_layers=1, fusion_heads=2, variant=variant, **kw)


IMAGES = [Image.new("RGB", (48, 40), (200, 30, 30)), Image.new("RGB", (20, 70), (10, 10, 200))]
PROMPTS = ["a red circle, on the grass.", "two blue squares"]


@pytest.mark.parametrize("variant,skip", [("multihead", False), ("augmented", False), ("multihead", True),
                                          ("augmented", True)])
def test_predictions_have_the_contracted_shapes(variant, skip, tmp_path):
    model = new_rahf(tiny(variant, heatmap_skip=skip))
    preds = model.predict(IMAGES, PROMPTS)
    for img, prompt, p in zip(IMAGES, PROMPTS, preds):
        for name in ("implausibility", "misalignment"):
            hm = p.heatmaps[name]
            assert hm.shape == (img.height, img.width) and hm.dtype == np.float32
            assert 0 <= hm.min() and hm.max() <= 1
        assert set(p.scores) == {"plausibility", "alignment", "aesthetics", "overall"}
        assert all(0 < v < 1 for v in p.scores.values())
        assert [t for t, _ in p.words] == tokenize_prompt(prompt)
        assert all(0 <= w <= 1 for _, w in p.words)
    # Batched and one-by-one agree.
    single = model.predict(IMAGES[1:], PROMPTS[1:])[0]
    assert single.scores["overall"] == pytest.approx(preds[1].scores["overall"], abs=1e-5)
    # Save / load round trip: identical predictions.
    model.save(tmp_path / "ck")
    again = load_rahf(tmp_path / "ck").predict(IMAGES, PROMPTS)
    np.testing.assert_allclose(again[0].heatmaps["implausibility"], preds[0].heatmaps["implausibility"], atol=1e-6)
    assert [w for _, w in again[1].words] == pytest.approx([w for _, w in preds[1].words], abs=1e-6)


def test_heatmap_skip_connections_see_the_pixels():
    from rhf_core.rahf.model import HeatmapHead

    head = HeatmapHead(dim=8, grid=4, image_size=32, outputs=2, skip=True)
    tokens = torch.randn(1, 16, 8)
    a, b = torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 32)
    b[..., :8, :8] = 1.0  # a bright corner
    with torch.no_grad():
        ha, hb = head(tokens, a), head(tokens, b)
    assert ha.shape == (1, 2, 32, 32)
    diff = (ha - hb).abs()[0, 0]
    assert diff[:8, :8].mean() > 10 * diff[20:, 20:].mean()  # same tokens: only the pixels moved the map, locally
    with pytest.raises(ValueError, match="needs the pixels"):
        head(tokens)
    # a checkpoint config written before the option existed loads without it
    assert RAHFConfig.from_dict({k: v for k, v in tiny().to_dict().items() if k != "heatmap_skip"}).heatmap_skip is False


def test_loading_checks_weights_against_the_config(tmp_path):
    new_rahf(tiny()).save(tmp_path / "ck")
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    cfg["fusion_layers"] = 2  # the weights hold one fusion layer
    (tmp_path / "ck" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="missing"):
        load_rahf(tmp_path / "ck")
    with pytest.raises(CheckpointError, match="not a RAHF checkpoint"):
        load_rahf(tmp_path)
    with pytest.raises(CheckpointError, match="no RAHF checkpoint"):
        load_rahf(tmp_path / "nope")
    (tmp_path / "ck" / "config.json").write_text('{"variant": "three-headed"}')
    with pytest.raises(CheckpointError, match="variant"):
        load_rahf(tmp_path / "ck")


def test_bad_inputs_raise_clear_errors():
    model = new_rahf(tiny())
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        model.predict(IMAGES, PROMPTS[:1])
    with pytest.raises(ValueError, match="pass lists"):
        model.predict(IMAGES[0], PROMPTS[0])


def _tiny_hf_backbones(tmp_path):
    from transformers import BertConfig, BertModel, BertTokenizerFast, ViTConfig, ViTModel

    vit = tmp_path / "vit"
    ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64), add_pooling_layer=False).save_pretrained(vit)
    bert = tmp_path / "bert"
    bert.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "blue", "two", "circle", "square", "##s",
             "on", "the", "grass", ",", "."]
    (bert / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab_file=str(bert / "vocab.txt"))
    tok.save_pretrained(bert)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(bert)
    return vit, bert


def test_hugging_face_backbones_built_locally(tmp_path):
    vit, bert = _tiny_hf_backbones(tmp_path)
    cfg = tiny()
    cfg.vision = VisionConfig(kind="hf", name_or_path=str(vit))
    cfg.text = TextConfig(kind="hf", name_or_path=str(bert))
    model = new_rahf(cfg)
    assert type(model.model.vision.backbone).__name__ == "ViTModel"
    assert type(model.model.text.backbone).__name__ == "BertModel"
    preds = model.predict(IMAGES, PROMPTS)
    assert preds[0].heatmaps["misalignment"].shape == (40, 48)
    assert [t for t, _ in preds[0].words] == tokenize_prompt(PROMPTS[0])  # "circles" → circle ##s, pooled
    model.save(tmp_path / "ck")
    shutil.rmtree(vit)
    shutil.rmtree(bert)  # the checkpoint carries the backbone configs and tokenizer itself
    again = load_rahf(tmp_path / "ck").predict(IMAGES, PROMPTS)
    assert again[1].scores["alignment"] == pytest.approx(preds[1].scores["alignment"], abs=1e-5)


def test_train_resume_and_evaluate_on_cpu(tmp_path):
    cfg = TrainConfig(data="shapes:n=240,seed=5", out=str(tmp_path / "run"), state_dir=str(tmp_path / "state"),
                      epochs=1, batch_size=16, max_records=48, model=tiny())
    first = train_rahf(cfg, resume=False)
    assert (tmp_path / "run" / "model.safetensors").is_file() and (tmp_path / "state" / "trainer_state.pt").is_file()
    assert first.predict(IMAGES[:1], PROMPTS[:1])[0].heatmaps["implausibility"].shape == (40, 48)
    cfg.epochs = 2
    train_rahf(cfg, resume=True)
    log = json.loads((tmp_path / "run" / "train_log.json").read_text())["epochs"]
    assert [e["epoch"] for e in log] == [1, 2]
    # A finished run calibrates its heatmaps on the dev split.
    assert set(load_rahf(tmp_path / "run").config.heatmap_scale) == {"implausibility", "misalignment"}
    result = evaluate_rahf(str(tmp_path / "run"), data="shapes:n=240,seed=6", split="test",
                           train_data="shapes:n=240,seed=5", baseline_epochs=1, max_records=40)
    assert set(result["models"]) == {"rahf", "constant", "mean_heatmap", "cnn"}
    rahf = result["models"]["rahf"]
    assert set(rahf["scores"]) == {"plausibility", "alignment", "aesthetics", "overall"}
    assert {"cc", "kld", "sim", "nss", "auc_judd", "mse_all", "mse_empty_gt"} <= set(rahf["heatmaps"]["implausibility"])
    assert {"precision", "recall", "f1"} <= set(rahf["keywords"])
    assert result["models"]["mean_heatmap"]["heatmaps"]["implausibility"]["auc_judd"] > 0.5
    assert "plausibility" in result["noise_ceiling"] and "unseen" in result["by_prompt_split"]
    oracle = result["oracle"]
    # Knowing the defects beats any single rater: the expected annotation correlates better with the
    # labels than a second, independent panel of raters does, and true Likert values beat one rater.
    assert oracle["heatmaps"]["implausibility"]["cc"] > result["heatmap_noise_ceiling"]["implausibility"]["cc"]
    assert oracle["scores"]["plausibility"]["srcc"] > result["noise_ceiling"]["plausibility"]["srcc"]
    assert 0.0 < oracle["heatmaps"]["implausibility"]["cc"] < 1.0
    text = format_tables(result)
    assert "Implausibility heatmap" in text and "Misaligned keywords" in text and "Targets:" in text
    assert "Oracle (knows every defect" in text


def test_training_lowers_the_loss():
    """A few steps on a fixed batch must reduce every part of the loss (the heads learn)."""
    from rhf_core.data import open_dataset
    from rhf_core.rahf.train import dataset_arrays, make_batch, rahf_loss

    torch.manual_seed(0)
    arr = dataset_arrays(open_dataset("shapes:n=60,seed=2").subset(np.arange(16)), 32)
    model = new_rahf(tiny()).model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = make_batch(arr, np.arange(16), 48)
    cfg = TrainConfig()
    _, before = rahf_loss(model(batch["pixels"], batch["words"]), batch, cfg)
    for _ in range(40):
        loss, _ = rahf_loss(model(batch["pixels"], batch["words"]), batch, cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
    _, after = rahf_loss(model(batch["pixels"], batch["words"]), batch, cfg)
    assert all(after[k] < before[k] for k in before), (before, after)


def test_cc_loss_matches_pearson_and_skips_empty_or_missing_maps():
    from rhf_core.rahf.train import cc_loss

    rng = np.random.default_rng(0)
    target = torch.zeros(3, 2, 8, 8)
    target[0, 0, 2:4, 2:4] = 1.0  # flagged
    target[1, 0, 5:7, 1:3] = 0.5  # flagged, but the map was not collected
    logits = torch.from_numpy(rng.normal(size=(3, 2, 8, 8))).float()
    collected = torch.tensor([[1.0, 1.0], [0.0, 1.0], [1.0, 1.0]])
    expected = 1 - np.corrcoef(torch.sigmoid(logits[0, 0]).ravel().numpy(), target[0, 0].ravel().numpy())[0, 1]
    assert float(cc_loss(logits, target, collected)) == pytest.approx(expected, abs=1e-5)
    # A prediction shaped like the label scores ~0; an inverted one ~2; nothing flagged gives 0.
    assert float(cc_loss(10 * target - 5, target, collected)) == pytest.approx(0.0, abs=1e-4)
    assert float(cc_loss(5 - 10 * target, target, collected)) == pytest.approx(2.0, abs=1e-4)
    assert float(cc_loss(logits, torch.zeros_like(target), collected)) == 0.0


def test_heatmap_calibration_fits_the_least_squares_scale_and_keeps_map_shapes(tmp_path):
    from rhf_core import metrics as M
    from rhf_core.data import open_dataset
    from rhf_core.rahf.calibrate import calibrate_checkpoint
    from rhf_core.rahf.common import heatmap_gate, scorable_records

    rahf = new_rahf(tiny(), seed=3)
    rahf.save(tmp_path / "ck")
    ds = open_dataset("shapes:n=120,seed=9", split="train")
    scales = calibrate_checkpoint(tmp_path / "ck", ds, max_records=40)
    assert set(scales) == {"implausibility", "misalignment"} and all(s > 0 for s in scales.values())
    raw, cal = load_rahf(tmp_path / "ck"), load_rahf(tmp_path / "ck")
    assert cal.config.heatmap_scale == scales
    raw.config.heatmap_scale = {}
    recs = scorable_records(ds, 40)  # the records the scale was fitted on
    p_raw = raw.predict([r.image for r in recs], [r.prompt for r in recs])
    p_cal = cal.predict([r.image for r in recs], [r.prompt for r in recs])
    for h in scales:
        # Each calibrated map is the raw map times the scale and the model's confidence that it flags anything.
        gate = heatmap_gate(h, p_raw[0].scores, p_raw[0].words)
        np.testing.assert_allclose(p_cal[0].heatmaps[h], np.clip(p_raw[0].heatmaps[h] * scales[h] * gate, 0, 1),
                                   atol=1e-5)
        labelled = [(p, c, r) for p, c, r in zip(p_raw, p_cal, recs) if h in r.heatmaps]

        def mse(factor):
            return np.mean([np.mean((np.clip(c.heatmaps[h] * factor, 0, 1) - r.heatmaps[h]) ** 2) for _, c, r in labelled])

        # The fitted scale is the least-squares optimum (nothing clips at these heat levels) ...
        assert mse(1.0) <= min(mse(0.8), mse(1.25)), h
        # ... and a per-image factor leaves a map's shape metrics alone.
        flagged = [(p, c, r) for p, c, r in labelled if r.heatmaps[h].any() and c.heatmaps[h].std() > 0]
        assert flagged
        for p, c, r in flagged[:5]:
            assert M.cc(c.heatmaps[h], r.heatmaps[h]) == pytest.approx(M.cc(p.heatmaps[h], r.heatmaps[h]), abs=1e-4)
    with pytest.raises(ValueError, match="heatmap_scale"):
        RAHFConfig.from_dict({**tiny().to_dict(), "heatmap_scale": {"implausibility": -1.0}})


def test_training_on_too_few_records_is_a_clear_cli_error(tmp_path, capsys):
    # A one-record folder (e.g. one image just annotated) has nothing left to train on once a record
    # is held out: the CLI says so (exit 2), no traceback.
    from rhf_core.__main__ import main

    (tmp_path / "images").mkdir()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(tmp_path / "images" / "a.png")
    (tmp_path / "labels.jsonl").write_text(json.dumps(
        {"id": "a", "prompt": "a red square", "image": "images/a.png", "scores": {"plausibility": 0.5}}) + "\n")
    code = main(["train-rahf", "--data", f"folder:{tmp_path}", "--out", str(tmp_path / "run"), "--epochs", "1"])
    assert code == 2
    assert "training needs at least 2" in capsys.readouterr().err


def test_config_errors_are_library_errors():
    from rhf_core.errors import RHFError

    # A checkpoint's config.json is user input: its errors must be ones the CLI and pages report.
    with pytest.raises(RHFError, match="variant must be"):
        RAHFConfig.from_dict({"variant": "nope"})
    with pytest.raises(RHFError, match="unknown RAHF config fields"):
        RAHFConfig.from_dict({"colour": 1})
