"""RAHF at real scale, on tiny models: RichHF-format files (TFRecords + Pick-a-Pic parquet) written
here, a T5 text backbone and a ViT built locally, streaming from the on-disk cache, several processes
under `accelerate launch`, backbone freezing and learning-rate scales, and the settings refused."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import load_file

from rhf_core.dataset import tokenize_prompt
from rhf_core.errors import RHFError
from rhf_core.rahf import RAHFConfig, TextConfig, VisionConfig, load_rahf, new_rahf
from rhf_core.rahf.evaluate import evaluate_rahf, format_tables
from rhf_core.rahf.train import (RowFile, TrainConfig, decoded_arrays, dataset_arrays, freeze_unreached, make_batch,
                                 prepare_backbones, shard_order, train_rahf)
from rhf_core.sources.tfrecord import make_example, write_tfrecord

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["a", "red", "blue", "green", "cat", "dog", "bird", "sitting", "on", "under", "the", "mat", "moon", "two",
         "three", "tree", "car", "big", "small", "house"]


# --- RichHF-18K-format files ------------------------------------------------------------------

def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def write_richhf_records(root: Path, counts: dict, side: int = 64, seed: int = 0, row_group: int = 50) -> tuple[Path, Path]:
    """`counts` records per split ({"train": 40, ...}) as RichHF-18K TFRecords (512×512 PNG maps, a
    0/1 label per prompt token) and their prompts and `side`-pixel JPEGs as Pick-a-Pic parquet.
    Each image has a bright square; the implausibility map marks it, so there is something to learn."""
    rng = np.random.default_rng(seed)
    tf_dir, pick_dir = root / "richhf", root / "pickapic"
    tf_dir.mkdir(parents=True)
    pick_dir.mkdir(parents=True)
    rows = {"caption": [], "image_0_uid": [], "image_1_uid": [], "jpg_0": [], "jpg_1": []}
    pending = []
    k = 0
    for split, n in counts.items():
        examples = []
        for _ in range(n):
            uid = f"u{k:06d}"
            k += 1
            prompt = " ".join(rng.choice(WORDS, size=int(rng.integers(3, 9))))
            tokens = tokenize_prompt(prompt)
            labels = " ".join("0" if rng.random() < 0.2 else "1" for _ in tokens)
            y, x = (int(v) for v in rng.integers(0, side * 3 // 4, size=2))
            w = side // 4
            arr = np.full((side, side, 3), rng.integers(30, 120, size=3), np.uint8)
            arr[y:y + w, x:x + w] = 240
            art = np.zeros((512, 512), np.uint8)
            s = 512 / side
            art[int(y * s):int((y + w) * s), int(x * s):int((x + w) * s)] = 255
            plaus = float(rng.uniform(0.2, 0.9))
            examples.append(make_example({
                "filename": f"{uid}.jpg", "aesthetics_score": float(rng.uniform()), "artifact_score": plaus,
                "misalignment_score": float(rng.uniform()), "overall_score": float(rng.uniform()),
                "prompt_misalignment_label": labels, "artifact_map": _encode(Image.fromarray(art, "L"), "PNG"),
                "misalignment_map": _encode(Image.fromarray(np.zeros((512, 512), np.uint8), "L"), "PNG")}))
            pending.append((uid, prompt, _encode(Image.fromarray(arr), "JPEG")))
            if len(pending) == 2:  # a Pick-a-Pic row holds a pair of images for one caption
                (u0, p0, j0), (u1, _, j1) = pending
                for key, v in zip(rows, (p0, u0, u1, j0, j1)):
                    rows[key].append(v)
                pending = []
        write_tfrecord(tf_dir / f"{split}.tfrecord", examples)
    if pending:  # an odd one out: a row whose second image is absent
        (u0, p0, j0), = pending
        for key, v in zip(rows, (p0, u0, "", j0, None)):
            rows[key].append(v)
    # Pick-a-Pic pairs share a caption: give each image of the pair the first one's prompt.
    table = pa.table({**{c: rows[c] for c in ("caption", "image_0_uid", "image_1_uid")},
                      "jpg_0": pa.array(rows["jpg_0"], pa.binary()), "jpg_1": pa.array(rows["jpg_1"], pa.binary())})
    pq.write_table(table, pick_dir / "train-00000.parquet", row_group_size=row_group)
    return tf_dir, pick_dir


def richhf_spec(tf_dir: Path, pick_dir: Path) -> str:
    return f"richhf18k:{tf_dir},pickapic={pick_dir}"


# --- tiny Hugging Face backbones --------------------------------------------------------------

def tiny_t5(folder: Path) -> Path:
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    pieces += [("▁" + w, -1.0) for w in WORDS] + [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    tok = T5Tokenizer(vocab=pieces, extra_ids=0)
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    T5EncoderModel(T5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2,
                            decoder_start_token_id=0)).save_pretrained(folder)
    return folder


def tiny_vit(folder: Path, pooler: bool = True) -> Path:
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    # With its pooler, as hub ViTs are saved: the pooler is not used for patch tokens (DDP must not wait for it).
    ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64), add_pooling_layer=pooler).save_pretrained(folder)
    return folder


def hf_model(vit: Path, t5: Path, **kw) -> RAHFConfig:
    return RAHFConfig(image_size=32, vision=VisionConfig(kind="hf", name_or_path=str(vit)),
                      text=TextConfig(kind="hf", name_or_path=str(t5)), fusion_dim=32, fusion_layers=1,
                      fusion_heads=2, **kw)


def scratch_model() -> RAHFConfig:
    return RAHFConfig(image_size=32, vision=VisionConfig(patch_size=8, dim=32, layers=1, heads=2),
                      text=TextConfig(vocab_buckets=64, dim=32, layers=1, heads=2), fusion_dim=32,
                      fusion_layers=1, fusion_heads=2)


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    root = tmp_path_factory.mktemp("backbones")
    return tiny_vit(root / "vit"), tiny_t5(root / "t5")


@pytest.fixture(scope="module")
def richhf(tmp_path_factory):
    # 512 px like RichHF's maps: calibration and evaluation compare maps at the image's own size.
    return write_richhf_records(tmp_path_factory.mktemp("richhf"), {"train": 40, "dev": 10, "test": 10}, side=512)


IMAGES = [Image.new("RGB", (48, 40), (200, 30, 30)), Image.new("RGB", (20, 70), (10, 10, 200))]
PROMPTS = ["a red cat, on the mat.", "two blue birds"]


# --- tied weights -----------------------------------------------------------------------------

def test_t5_backbone_saves_once_and_reloads_tied(backbones, tmp_path):
    vit, t5 = backbones
    model = new_rahf(hf_model(vit, t5))
    text = model.model.text.backbone
    assert text.shared.weight.data_ptr() == text.encoder.embed_tokens.weight.data_ptr()  # tied in T5
    preds = model.predict(IMAGES, PROMPTS)
    model.save(tmp_path / "ck")  # used to fail: "Some tensors share memory"
    stored = load_file(str(tmp_path / "ck" / "model.safetensors"))
    assert "text.backbone.shared.weight" in stored and "text.backbone.encoder.embed_tokens.weight" not in stored
    again = load_rahf(tmp_path / "ck")
    text2 = again.model.text.backbone
    assert text2.shared.weight.data_ptr() == text2.encoder.embed_tokens.weight.data_ptr()  # still one tensor
    assert torch.equal(text2.encoder.embed_tokens.weight, text.shared.weight)
    p2 = again.predict(IMAGES, PROMPTS)
    np.testing.assert_allclose(p2[0].heatmaps["implausibility"], preds[0].heatmaps["implausibility"], atol=1e-6)
    assert [w for _, w in p2[1].words] == pytest.approx([w for _, w in preds[1].words], abs=1e-6)


# --- end to end on RichHF-format files --------------------------------------------------------

def test_richhf_t5_vit_train_evaluate_reload_predict(richhf, backbones, tmp_path):
    tf_dir, pick_dir = richhf
    vit, t5 = backbones
    cfg = TrainConfig(data=richhf_spec(tf_dir, pick_dir), out=str(tmp_path / "run"), state_dir=str(tmp_path / "state"),
                      epochs=1, batch_size=8, lr=1e-3, model=hf_model(vit, t5), preload_mb=0)
    trained = train_rahf(cfg, resume=False)
    # Streamed from the on-disk cache: 40 training rows of a 32 px image and two float16 maps each.
    cache = tmp_path / "state" / "decoded" / "train-32"
    assert json.loads((cache / "manifest.json").read_text())["rows"] == 40
    assert (cache / "images.u8").stat().st_size == 40 * 32 * 32 * 3
    assert (cache / "heatmaps.f16").stat().st_size == 40 * 2 * 32 * 32 * 2
    log = json.loads((tmp_path / "run" / "train_log.json").read_text())["epochs"]
    assert len(log) == 1 and np.isfinite(log[0]["val_loss"])
    # Reload from the checkpoint alone (the backbone folders are not needed) and predict.
    again = load_rahf(tmp_path / "run")
    assert type(again.model.text.backbone).__name__ == "T5EncoderModel"
    assert type(again.model.vision.backbone).__name__ == "ViTModel"
    a, b = trained.predict(IMAGES, PROMPTS), again.predict(IMAGES, PROMPTS)
    assert a[0].heatmaps["implausibility"].shape == (40, 48) and b[1].heatmaps["misalignment"].shape == (70, 20)
    assert b[0].scores["plausibility"] == pytest.approx(a[0].scores["plausibility"], abs=1e-5)
    assert [t for t, _ in b[0].words] == tokenize_prompt(PROMPTS[0])
    result = evaluate_rahf(str(tmp_path / "run"), data=richhf_spec(tf_dir, pick_dir), split="test",
                           train_data=richhf_spec(tf_dir, pick_dir), baseline_epochs=1)
    assert result["records"] == 10
    rahf = result["models"]["rahf"]
    assert rahf["scores"]["plausibility"]["n"] == 10 and -1 <= rahf["scores"]["plausibility"]["plcc"] <= 1
    assert 0 <= rahf["heatmaps"]["implausibility"]["auc_judd"] <= 1
    assert "Implausibility heatmap" in format_tables(result)


def test_two_processes_under_accelerate_launch(richhf, backbones, tmp_path):
    """Two CPU processes (gloo) train one model with HF backbones; one of them writes the checkpoint."""
    tf_dir, pick_dir = richhf
    vit, t5 = backbones
    cfg = TrainConfig(data=richhf_spec(tf_dir, pick_dir), out=str(tmp_path / "run"), state_dir=str(tmp_path / "state"),
                      epochs=1, batch_size=8, model=hf_model(vit, t5), preload_mb=0)
    (tmp_path / "cfg.json").write_text(json.dumps(_asdict(cfg)))
    script = tmp_path / "launch_train.py"
    script.write_text(LAUNCHED)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(29500 + os.getpid() % 1000), str(script), str(tmp_path / "cfg.json")]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    # One report file per rank: two processes printing to one pipe can interleave their lines.
    reports = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("rank-*.json"))]
    assert sorted(r["rank"] for r in reports) == [0, 1] and {r["world"] for r in reports} == {2}
    # Each process took ceil(ceil(40 / 2) / 8) = 3 steps (the schedule counts one process's steps).
    assert {r["scheduler_steps"] for r in reports} == {3}
    # Both ended with the same weights, and those are the checkpoint's.
    assert reports[0]["digest"] == reports[1]["digest"]
    assert "text.backbone.shared.weight" in load_file(str(tmp_path / "run" / "model.safetensors"))
    assert load_rahf(tmp_path / "run").predict(IMAGES[:1], PROMPTS[:1])[0].heatmaps["implausibility"].shape == (40, 48)
    assert "not trained (no loss reaches them): vision.backbone.pooler" in done.stdout


LAUNCHED = '''
import hashlib, json, sys
import torch
from rhf_core.rahf import RAHFConfig
from rhf_core.rahf.train import TrainConfig, train_rahf
import rhf_core.rahf.train as T

d = json.loads(open(sys.argv[1]).read())
cfg = TrainConfig(**{**d, "model": RAHFConfig.from_dict(d["model"])})
steps = []
real = T.make_accelerator
def spy(cfg, cls):
    acc = real(cfg, cls)
    steps.append(acc)
    return acc
T.make_accelerator = spy
model = train_rahf(cfg, resume=False)
acc = steps[0]
h = hashlib.sha256()
for k, v in sorted(model.model.state_dict().items()):
    h.update(k.encode()); h.update(v.detach().cpu().float().numpy().tobytes())
# The best epoch's weights, as loaded back by every process; scheduler steps from the trainer state.
state = torch.load(cfg.state_dir + "/trainer_state.pt", weights_only=True)
with open(f"rank-{acc.process_index}.json", "w") as f:
    json.dump({"rank": acc.process_index, "world": acc.num_processes, "digest": h.hexdigest(),
               "scheduler_steps": state["scheduler"]["last_epoch"]}, f)
'''


def _asdict(cfg):
    from dataclasses import asdict

    return asdict(cfg)


# --- streaming --------------------------------------------------------------------------------

def test_streaming_gives_the_in_memory_weights_bit_for_bit(tmp_path):
    """The on-disk path reproduces the in-memory path's batches in the same order: same weights."""
    runs = {}
    for name, preload in (("memory", 2048), ("disk", 0)):
        cfg = TrainConfig(data="shapes:n=120,seed=5", out=str(tmp_path / name), state_dir=str(tmp_path / f"s-{name}"),
                          epochs=2, batch_size=16, max_records=48, model=scratch_model(), preload_mb=preload)
        train_rahf(cfg, resume=False)
        runs[name] = load_file(str(tmp_path / f"s-{name}" / "model.safetensors"))
    assert (tmp_path / "s-disk" / "decoded" / "train-32" / "images.u8").is_file()
    assert not (tmp_path / "s-memory" / "decoded").exists()
    assert runs["memory"].keys() == runs["disk"].keys()
    assert all(torch.equal(runs["memory"][k], runs["disk"][k]) for k in runs["memory"])


def test_decoded_cache_matches_memory_and_is_reused(richhf, tmp_path):
    from rhf_core.data import open_dataset

    tf_dir, pick_dir = richhf
    ds = open_dataset(richhf_spec(tf_dir, pick_dir)).split("dev")
    mem = dataset_arrays(ds, 24)
    disk = decoded_arrays(ds, 24, tmp_path / "c")
    idx = np.array([7, 0, 3, 3])
    a, b = make_batch(mem, idx, 48), make_batch(disk, idx, 48)
    for k in ("pixels", "heatmaps", "heat_mask", "scores", "score_mask", "word_targets", "word_mask"):
        assert torch.equal(a[k], b[k]), k
    assert a["words"] == b["words"] and a["heatmaps"][:, 0].amax() > 0.9  # the square is flagged
    # A second call finds the manifest and does not decode again (the files stay as they were).
    stamp = (tmp_path / "c" / "images.u8").stat().st_mtime_ns
    decoded_arrays(ds, 24, tmp_path / "c")
    assert (tmp_path / "c" / "images.u8").stat().st_mtime_ns == stamp
    # Another resolution or other records: not this cache's key, so it is rebuilt.
    assert decoded_arrays(ds.subset(np.arange(4)), 24, tmp_path / "c").images.shape[0] == 4


@settings(max_examples=25, deadline=None, derandomize=True)
@given(n=st.integers(1, 30), cols=st.integers(1, 5), picks=st.lists(st.integers(0, 10 ** 6), max_size=12))
def test_row_file_reads_the_rows_asked_for(tmp_path_factory, n, cols, picks):
    data = np.arange(n * cols * 2, dtype=np.float16).reshape(n, cols, 2)
    path = tmp_path_factory.mktemp("rows") / "rows.f16"
    path.write_bytes(data.tobytes())
    rows = RowFile(path, n, (cols, 2), np.float16)
    idx = np.array([p % n for p in picks], dtype=np.int64)
    np.testing.assert_array_equal(rows[idx], data[idx])
    assert len(rows) == n and rows.shape == data.shape
    with pytest.raises(IndexError):
        rows[np.array([n])]


@settings(max_examples=40, deadline=None, derandomize=True)
@given(n=st.integers(1, 200), world=st.integers(1, 8), seed=st.integers(0, 10 ** 6))
def test_shards_are_equal_and_cover_every_record(n, world, seed):
    orders = [shard_order(n, r, world, np.random.default_rng(seed)) for r in range(world)]
    assert len({len(o) for o in orders}) == 1 and len(orders[0]) == -(-n // world)  # same number of steps
    assert set(np.concatenate(orders)) == set(range(n))
    if world == 1:  # a single process keeps the order it always had
        np.testing.assert_array_equal(orders[0], np.random.default_rng(seed).permutation(np.arange(n)))


# --- backbones: unused parts, freezing, learning-rate scales ----------------------------------

def test_parts_no_loss_reaches_are_found_and_frozen(backbones):
    vit, t5 = backbones
    model = new_rahf(hf_model(vit, t5)).model.train()
    batch = {"pixels": torch.rand(2, 3, 32, 32), "words": [["a", "red", "cat"], ["two", "dogs"]]}
    rng_before = torch.random.get_rng_state()
    names = freeze_unreached(model, batch)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the probe leaves a seeded run alone
    assert names == ["vision.backbone.pooler.dense.weight", "vision.backbone.pooler.dense.bias"]
    assert not model.vision.backbone.pooler.dense.weight.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert freeze_unreached(new_rahf(scratch_model()).model, batch) == []  # the scratch model uses everything


def test_frozen_vision_and_scaled_text_learning_rate(backbones, tmp_path):
    vit, t5 = backbones
    cfg = TrainConfig(data="shapes:n=60,seed=3", out=str(tmp_path / "run"), state_dir=str(tmp_path / "st"), epochs=1,
                      batch_size=8, max_records=24, model=hf_model(vit, t5), vision_lr_scale=0.0, text_lr_scale=0.1)
    start = new_rahf(cfg.model).model.state_dict()
    train_rahf(cfg, resume=False)
    trained = load_file(str(tmp_path / "st" / "model.safetensors"))
    vision = [k for k in start if k.startswith("vision.")]
    assert vision and all(torch.equal(start[k], trained[k]) for k in vision)  # frozen: not one weight moved
    assert not torch.equal(start["text.backbone.shared.weight"], trained["text.backbone.shared.weight"])
    groups = torch.load(tmp_path / "st" / "trainer_state.pt", weights_only=True)["optimizer"]["param_groups"]
    assert sorted(round(g["initial_lr"] / cfg.lr, 6) for g in groups) == [0.1, 1.0]  # text at 1/10, the rest at lr


# --- refusals ---------------------------------------------------------------------------------

def test_settings_that_cannot_apply_are_refused(backbones, tmp_path):
    vit, t5 = backbones
    with pytest.raises(RHFError, match="patch_size set the scratch vision encoder's size"):
        RAHFConfig(vision=VisionConfig(kind="hf", name_or_path=str(vit), patch_size=16)).validate()
    with pytest.raises(RHFError, match="dim, layers set the scratch text encoder's size"):
        RAHFConfig(text=TextConfig(kind="hf", name_or_path=str(t5), dim=64, layers=3)).validate()
    base = dict(data="shapes:n=40,seed=1", out=str(tmp_path / "r"), model=scratch_model())
    with pytest.raises(RHFError, match="gradient_checkpointing applies to Hugging Face backbones"):
        train_rahf(TrainConfig(**base, gradient_checkpointing=True))
    with pytest.raises(RHFError, match="mixed_precision must be no, bf16 or fp16"):
        train_rahf(TrainConfig(**base, mixed_precision="fp8"))
    with pytest.raises(RHFError, match="vision_lr_scale must be 0"):
        train_rahf(TrainConfig(**base, vision_lr_scale=-1.0))
    if not torch.cuda.is_available():
        with pytest.raises(RHFError, match="fp16 needs a CUDA GPU"):
            train_rahf(TrainConfig(**base, mixed_precision="fp16"))
    assert not (tmp_path / "r").exists()  # refused before any work


def test_gradient_checkpointing_trains_the_same_weights(backbones, tmp_path):
    """Recomputing activations changes memory, not arithmetic: identical weights on CPU."""
    vit, t5 = backbones
    out = {}
    for flag in (False, True):
        cfg = TrainConfig(data="shapes:n=60,seed=3", out=str(tmp_path / f"r{flag}"), state_dir=str(tmp_path / f"s{flag}"),
                          epochs=1, batch_size=8, max_records=16, model=hf_model(vit, t5), gradient_checkpointing=flag)
        train_rahf(cfg, resume=False)
        out[flag] = load_file(str(tmp_path / f"s{flag}" / "model.safetensors"))
    assert all(torch.allclose(out[False][k], out[True][k], atol=1e-6) for k in out[False])
    # ... and it is on: the ViT attention runs twice per step (forward, then again in the backward pass).
    for flag, runs in ((False, 1), (True, 2)):
        model = new_rahf(hf_model(vit, t5)).model.train()
        prepare_backbones(model, TrainConfig(model=model.cfg, gradient_checkpointing=flag))
        calls = []
        model.vision.backbone.layers[0].attention.register_forward_hook(lambda *a: calls.append(1))
        out = model(torch.rand(2, 3, 32, 32), [["a", "cat"], ["two", "dogs"]])
        out["scores"].sum().backward()
        assert len(calls) == runs
