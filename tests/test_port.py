"""The authors' PyTorch port of RAHF (rhf_core.rahf.port) against a tiny model of the same architecture.

The fixture writes what a user downloads: a plain state_dict `.pt` with the port's key names (ViT layers
named as transformers 4 saved them), for a tiny ViT + T5 built here with random weights, whose decoder is
trained for a few seconds to write each prompt back with `_0` after its misaligned word. The expected
outputs are computed here, the way the port's own model.py does (one sample at a time, its heads written
out as functional convolutions straight from the state_dict), without rhf_core's loader.
"""

import argparse
import json
import re
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration, ViTConfig, ViTModel
from transformers.modeling_outputs import BaseModelOutput

from rhf_core.errors import InvalidArgumentError
from rhf_core.rahf import CheckpointError, load_port, load_rahf
from rhf_core.rahf.port import (ARCHITECTURE, NEW_TO_OLD, OLD_TO_NEW, align_words, build_tiny_backbones,
                                decoded_words, read_port_checkpoint, renamed)
from rhf_core.rahf.port_cli import add_convert_port_command
from rhf_core.reward.rewards import get_reward

SIZE, PATCH, GRID = 64, 16, 4
# Tiny head widths (the port's are 768/384 and 768, 384, 384, 192; the key names do not change).
CONV, UPS, LAST, MLP = (16, 8), (16, 8, 8, 8), 8, (16, 8)
SCORES = ("plausibility", "alignment", "aesthetics", "overall")
HEATMAPS = ("implausibility", "misalignment")
# (prompt as a user types it, the port's labelled target for it)
EXAMPLES = [("a red cat on the grass", "a red_0 cat on the grass"),
            ("a blue dog.", "a blue dog_0"),
            ("the cat, on a zebra", "the_0 cat on a zebra")]
PROMPTS = [p for p, _ in EXAMPLES]
VOCAB = "a red blue cat dog on the grass".split()  # "zebra" is spelt in letters


# --- what the port's own code computes --------------------------------------------------------------

def norm(x, scale):  # the port's LayerNorm: x * rsqrt(mean over channels of x² + 1e-8) * scale
    return x * (x.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt() * scale


def reference_heatmap(sd, pre, x):
    def conv(name, x):
        return F.conv2d(x, sd[f"{pre}{name}.weight"], sd[f"{pre}{name}.bias"], padding=1)

    x = norm(F.relu(conv("conv_layers.0", x)), sd[f"{pre}conv_layers.2.scale"])
    x = norm(F.relu(conv("conv_layers.3", x)), sd[f"{pre}conv_layers.5.scale"])
    for i in range(len(UPS)):
        x = F.conv_transpose2d(x, sd[f"{pre}deconv_layers.{i}.0.weight"], sd[f"{pre}deconv_layers.{i}.0.bias"],
                               stride=2, padding=1, output_padding=1)
        x = F.relu(norm(x, sd[f"{pre}deconv_layers.{i}.1.scale"]))
        y = F.relu(norm(conv(f"conv_layers2.{i}.0", x), sd[f"{pre}conv_layers2.{i}.1.scale"]))
        y = norm(conv(f"conv_layers2.{i}.3", y), sd[f"{pre}conv_layers2.{i}.4.scale"])
        x = F.relu(y + x)
    return torch.sigmoid(conv("last_conv2", F.relu(conv("last_conv1", x))))[:, 0]


def reference_score(sd, pre, x):
    for i in range(6):
        x = F.relu(norm(F.conv2d(x, sd[f"{pre}conv_layers.{3 * i}.weight"], sd[f"{pre}conv_layers.{3 * i}.bias"],
                                 padding=1), sd[f"{pre}conv_layers.{3 * i + 1}.scale"]))
    x = x.flatten(1)
    for i in (0, 2):
        x = F.relu(F.linear(x, sd[f"{pre}linear_layers.{i}.weight"], sd[f"{pre}linear_layers.{i}.bias"]))
    return torch.sigmoid(F.linear(x, sd[f"{pre}linear_layers.4.weight"], sd[f"{pre}linear_layers.4.bias"]))[:, 0]


def pixels_of(image):  # the ViT processor: bilinear resize, /255, mean 0.5, std 0.5
    arr = np.asarray(image.convert("RGB").resize((SIZE, SIZE), Image.BILINEAR), np.float32) / 255.0
    return ((torch.from_numpy(arr).permute(2, 0, 1) - 0.5) / 0.5)[None]


def caption_of(prompt):  # the port's clean_prompt: the RichHF tokens joined by spaces
    return " ".join(t for t in re.split(r"[,.?!\":; ]", prompt) if t)


def encode(vit, proj, t5, tok, image, prompt):
    visual = proj(vit(pixel_values=pixels_of(image)).last_hidden_state)
    ids = tok([caption_of(prompt)], return_tensors="pt", padding=True, truncation=True).input_ids
    hidden = t5.encoder(inputs_embeds=torch.cat([visual, t5.encoder.embed_tokens(ids)], dim=1)).last_hidden_state
    grid = hidden[:, 1:visual.size(1)].transpose(1, 2).reshape(1, -1, GRID, GRID)
    return grid, hidden[:, visual.size(1):]


def old_vit_name(key):  # transformers 4.x's ViT names, as the published file has them
    for new, old in [("attention.q_proj", "attention.attention.query"), ("attention.k_proj", "attention.attention.key"),
                     ("attention.v_proj", "attention.attention.value"), ("attention.o_proj", "attention.output.dense"),
                     ("mlp.fc1", "intermediate.dense"), ("mlp.fc2", "output.dense")]:
        key = key.replace(new, old)
    return re.sub(r"^layers\.", "encoder.layer.", key)


def random_heads(gen):
    def w(*shape):
        return torch.randn(*shape, generator=gen) * (2.0 / np.prod(shape[1:])) ** 0.5

    sd, d = {}, 64
    for h in HEATMAPS:
        p = f"heatmap_predictor.{h}."
        sd.update({p + "conv_layers.0.weight": w(CONV[0], d, 3, 3), p + "conv_layers.3.weight": w(CONV[1], CONV[0], 3, 3),
                   p + "last_conv1.weight": w(LAST, UPS[-1], 3, 3), p + "last_conv2.weight": w(1, LAST, 3, 3)})
        cin = CONV[1]
        for i, c in enumerate(UPS):
            sd[p + f"deconv_layers.{i}.0.weight"] = w(cin, c, 3, 3)
            sd[p + f"conv_layers2.{i}.0.weight"] = w(c, c, 3, 3)
            sd[p + f"conv_layers2.{i}.3.weight"] = w(c, c, 3, 3)
            for k in ("deconv_layers.{i}.1", "conv_layers2.{i}.1", "conv_layers2.{i}.4"):
                sd[p + k.format(i=i) + ".scale"] = 1 + 0.1 * torch.randn(c, 1, 1, generator=gen)
            cin = c
        sd[p + "conv_layers.2.scale"] = 1 + 0.1 * torch.randn(CONV[0], 1, 1, generator=gen)
        sd[p + "conv_layers.5.scale"] = 1 + 0.1 * torch.randn(CONV[1], 1, 1, generator=gen)
    widths = [d, d, d // 2, d // 4, d // 8, d // 16, d // 64]
    for s in SCORES:
        p = f"score_predictor.{s}."
        for i, (cin, c) in enumerate(zip(widths, widths[1:])):
            sd[p + f"conv_layers.{3 * i}.weight"] = w(c, cin, 3, 3)
            sd[p + f"conv_layers.{3 * i + 1}.scale"] = 1 + 0.1 * torch.randn(c, 1, 1, generator=gen)
        sd.update({p + "linear_layers.0.weight": w(MLP[0], GRID * GRID), p + "linear_layers.2.weight": w(MLP[1], MLP[0]),
                   p + "linear_layers.4.weight": w(1, MLP[1])})
    for k in [k for k in sd if k.endswith(".weight")]:
        out = sd[k].shape[1] if "deconv" in k else sd[k].shape[0]
        sd[k[: -len("weight")] + "bias"] = 0.1 * torch.randn(out, generator=gen)
    return sd


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny tensors: on a busy 2-core machine two torch threads spin-waiting on each other made these
    # tests ~10× slower (the fixture's training: 20 s on one thread).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def port(tmp_path_factory):
    root = tmp_path_factory.mktemp("port")
    vit_dir, t5_dir = build_tiny_backbones(root / "backbones", image_size=SIZE, patch_size=PATCH, words=VOCAB)
    torch.manual_seed(0)
    vit, t5 = ViTModel(ViTConfig.from_pretrained(vit_dir)), T5ForConditionalGeneration(T5Config.from_pretrained(t5_dir))
    proj = torch.nn.Linear(32, 64)
    tok = AutoTokenizer.from_pretrained(t5_dir)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)) for _ in EXAMPLES]
    images[1] = images[1].resize((80, 48))  # one image of its own size: maps come back at 80 × 48

    # The decoder learns the port's task on these three (teacher forcing, as its train.py does).
    params = [*vit.parameters(), *t5.parameters(), *proj.parameters()]
    opt = torch.optim.Adam(params, lr=1e-2)
    for step in range(300):
        loss = 0.0
        for image, (prompt, target) in zip(images, EXAMPLES):
            _, text = encode(vit, proj, t5, tok, image, prompt)
            labels = tok([target], return_tensors="pt").input_ids
            loss = loss + t5(encoder_outputs=BaseModelOutput(last_hidden_state=text), labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.02:
            break
    vit.eval(), t5.eval()

    heads = random_heads(torch.Generator().manual_seed(1))
    expected = []
    with torch.no_grad():
        for image, prompt in zip(images, PROMPTS):
            grid, text = encode(vit, proj, t5, tok, image, prompt)
            seq = t5.generate(encoder_outputs=BaseModelOutput(last_hidden_state=text), max_new_tokens=100)
            expected.append({"text": tok.batch_decode(seq, skip_special_tokens=True)[0],
                             "scores": {s: float(reference_score(heads, f"score_predictor.{s}.", grid)) for s in SCORES},
                             "heatmaps": {h: reference_heatmap(heads, f"heatmap_predictor.{h}.", grid)[0].numpy()
                                          for h in HEATMAPS}})
    state = {**{f"vit.{old_vit_name(k)}": v for k, v in vit.state_dict().items()},
             **{f"t5.{k}": v for k, v in t5.state_dict().items()},
             **{f"visual_token_projection.{k}": v for k, v in proj.state_dict().items()}, **heads}
    torch.save(state, root / "model.pt")
    return {"root": root, "vit": str(vit_dir), "t5": str(t5_dir), "images": images, "expected": expected,
            "state": state}


def check_against_reference(preds, port, atol=1e-4):
    for pred, image, exp, prompt in zip(preds, port["images"], port["expected"], PROMPTS):
        for s in SCORES:
            assert pred.scores[s] == pytest.approx(exp["scores"][s], abs=atol)
        for h in HEATMAPS:
            want = exp["heatmaps"][h]
            if image.size != (SIZE, SIZE):
                want = np.asarray(Image.fromarray(want, mode="F").resize(image.size, Image.BILINEAR))
            assert pred.heatmaps[h].shape == (image.size[1], image.size[0])
            np.testing.assert_allclose(pred.heatmaps[h], want, atol=atol)
        assert pred.meta["generated_text"] == exp["text"]
        marked = [w[:-2] for w in exp["text"].split() if w.endswith("_0")]
        assert pred.misaligned_words == marked
        assert [w for w, _ in pred.words] == caption_of(prompt).split()


def test_the_fixture_decoder_learned_the_port_task(port):
    # Otherwise every word test below would pass on an empty output.
    assert [e["text"] for e in port["expected"]] == [t for _, t in EXAMPLES]


def test_load_port_gives_the_port_outputs(port):
    model = load_port(port["root"] / "model.pt", vit=port["vit"], t5=port["t5"], device="cpu")
    preds = model.predict(port["images"], PROMPTS, batch_size=3)
    check_against_reference(preds, port)
    for pred in preds:  # the mark's probability agrees with what greedy decoding wrote
        assert all((p >= 0.5) == (w in pred.misaligned_words) for w, p in pred.words)
        assert all(0.0 <= p <= 1.0 for _, p in pred.words)
    assert model.domain["name"] == "richhf18k" and "RichHF-18K" in model.domain["description"]
    assert model.name == "richhf-port (model.pt)" and model.config.variant == "multihead"
    # Patch tokens for the domain check, like RAHFModel.vision: CLS dropped
    pixels = torch.cat([pixels_of(im) * 0.5 + 0.5 for im in port["images"]])
    assert model.model.vision(pixels).shape == (3, GRID * GRID, 32)
    # Batched with padding == one at a time (the encoder and decoder mask the padding)
    single = [model.predict([im], [p])[0] for im, p in zip(port["images"], PROMPTS)]
    for a, b in zip(preds, single):
        assert a.scores == pytest.approx(b.scores, abs=1e-5)
        assert [w for w, _ in a.words] == [w for w, _ in b.words]
        np.testing.assert_allclose([p for _, p in a.words], [p for _, p in b.words], atol=1e-5)


def test_todays_key_names_load_too_and_anything_else_is_refused(port, tmp_path):
    state = dict(port["state"])
    new = load_port(port["root"] / "model.pt", vit=port["vit"], t5=port["t5"]).model.state_dict()
    assert any(k.startswith("vit.layers.0.attention.q_proj") for k in new)
    torch.save(new, tmp_path / "new.pt")
    check_against_reference(load_port(tmp_path / "new.pt", vit=port["vit"], t5=port["t5"]).predict(
        port["images"], PROMPTS), port)

    torch.save(state, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)  # torch < 1.6's format
    assert read_port_checkpoint(tmp_path / "legacy.pt").keys() == state.keys()

    broken = {k: v for k, v in state.items() if k != "score_predictor.overall.linear_layers.4.bias"}
    broken["extra.head.weight"] = torch.zeros(1)
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match=r"1 missing \['score_predictor\.overall\.linear_layers\.4\.bias'\].*"
                                              r"1 unexpected \['extra\.head\.weight'\]"):
        load_port(tmp_path / "broken.pt", vit=port["vit"], t5=port["t5"])

    augmented = {k.replace("heatmap_predictor.implausibility.", "heatmap_predictor."): v for k, v in state.items()}
    torch.save(augmented, tmp_path / "augmented.pt")
    with pytest.raises(CheckpointError, match="augmented-prompt variant"):
        load_port(tmp_path / "augmented.pt", vit=port["vit"], t5=port["t5"])

    torch.save({"model": state, "epoch": 3}, tmp_path / "wrapped.pt")
    with pytest.raises(CheckpointError, match="no plain state_dict"):
        load_port(tmp_path / "wrapped.pt", vit=port["vit"], t5=port["t5"])

    torch.save(argparse.Namespace(a=1), tmp_path / "pickled.pt")  # weights_only refuses arbitrary objects
    with pytest.raises(CheckpointError, match="weights_only=True"):
        read_port_checkpoint(tmp_path / "pickled.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        read_port_checkpoint(tmp_path / "text.pt")
    with pytest.raises(CheckpointError, match="no checkpoint file"):
        load_port(tmp_path / "absent.pt", vit=port["vit"], t5=port["t5"])


def test_backbones_that_do_not_fit_are_named(port, tmp_path):
    other = T5Config.from_pretrained(port["t5"])
    other.d_ff = 96
    t5_dir = tmp_path / "t5"
    shutil.copytree(port["t5"], t5_dir)
    other.save_pretrained(t5_dir)
    with pytest.raises(CheckpointError, match=r"shapes differ.*DenseReluDense.*--vit and --t5"):
        load_port(port["root"] / "model.pt", vit=port["vit"], t5=str(t5_dir))


def test_convert_port_folder_loads_offline_everywhere(port, tmp_path):
    # Through the command line's handler, as `python -m rhf_core convert-port` runs it
    parser = argparse.ArgumentParser()
    add_convert_port_command(parser.add_subparsers(dest="command"))
    out = tmp_path / "richhf-port"
    args = parser.parse_args(["convert-port", str(port["root"] / "model.pt"), "--vit", port["vit"], "--t5", port["t5"],
                              "--out", str(out)])
    args.func(args)
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == ARCHITECTURE
    assert config["domain"] == {"name": "richhf18k",
                                "description": "RichHF-18K (Pick-a-Pic generations), the authors' published weights"}
    assert config["license"]["weights"] == "CC BY-NC 4.0" and config["source"]["checkpoint"] == "model.pt"
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {"config.json", "model.safetensors", "vit/config.json", "t5/config.json", "README.md"} <= files
    assert not [f for f in files if f.endswith((".pt", ".bin", ".pkl", ".pth"))]
    # the tied T5 embeddings are stored once
    assert "t5.shared.weight" in load_file(str(out / "model.safetensors"))
    assert "t5.lm_head.weight" not in load_file(str(out / "model.safetensors"))

    # The folder is self-contained: the backbone folders it came from are gone.
    moved = tmp_path / "gone"
    shutil.move(str(port["root"] / "backbones"), moved)
    try:
        model = load_rahf(out, device="cpu")
        check_against_reference(model.predict(port["images"], PROMPTS), port)
        assert model.name == "richhf-port" and model.domain["name"] == "richhf18k"
        reward = get_reward("rahf-alignment", predictor=model)(port["images"], PROMPTS)
        np.testing.assert_allclose(reward, [e["scores"]["alignment"] for e in port["expected"]], atol=1e-4)
    finally:
        shutil.move(str(moved), port["root"] / "backbones")

    with pytest.raises(InvalidArgumentError, match="already exists"):
        args.func(args)


def test_half_precision_runs_and_stays_close(port):
    model = load_port(port["root"] / "model.pt", vit=port["vit"], t5=port["t5"], device="cpu", dtype="bfloat16")
    assert next(model.model.parameters()).dtype == torch.bfloat16
    preds = model.predict(port["images"], PROMPTS)
    for pred, exp in zip(preds, port["expected"]):
        assert pred.scores == pytest.approx(exp["scores"], abs=0.05)
        assert np.isfinite(pred.heatmaps["implausibility"]).all()
    with pytest.raises(InvalidArgumentError, match="dtype must be"):
        load_port(port["root"] / "model.pt", vit=port["vit"], t5=port["t5"], dtype="int8")


def test_bad_inputs_are_refused_before_any_work(port):
    model = load_port(port["root"] / "model.pt", vit=port["vit"], t5=port["t5"])
    with pytest.raises(InvalidArgumentError, match="pass lists"):
        model.predict(port["images"][0], PROMPTS[0])
    with pytest.raises(InvalidArgumentError, match="2 images but 1 prompts"):
        model.predict(port["images"][:2], PROMPTS[:1])
    with pytest.raises(InvalidArgumentError, match="has no words"):
        model.predict(port["images"][:1], [" ,."])


# --- reading the decoder's output: properties --------------------------------------------------------

WORDS = st.lists(st.sampled_from(["a", "red", "cat", "zebra", "x1", "Grass"]), min_size=1, max_size=8)


def spell(words, marks):
    """Pieces of a labelled prompt, sentencepiece style: a word piece, then "_", "0" for a mark."""
    pieces = []
    for w, m in zip(words, marks):
        pieces += ["\u2581" + w[:2]] + ([w[2:]] if w[2:] else []) + (["_", "0"] if m else [])
    return pieces


def to_text(pieces):
    return "".join(p.replace("\u2581", " ") for p in pieces)


@settings(max_examples=60, derandomize=True, deadline=None)
@given(WORDS, st.data())
def test_labelled_prompts_parse_back_to_their_marks(words, data):
    marks = data.draw(st.lists(st.booleans(), min_size=len(words), max_size=len(words)))
    pieces = spell(words, marks)
    got = decoded_words(pieces, None, torch.tensor([0]), to_text)
    assert [(w, m, p) for w, m, p in got] == [(w, m, float(m)) for w, m in zip(words, marks)]
    probs, unmatched = align_words(words, got)
    assert probs == [float(m) for m in marks] and unmatched == []


@settings(max_examples=60, derandomize=True, deadline=None)
@given(WORDS, st.integers(0, 7), st.floats(-3, 3))
def test_mark_probability_is_read_where_the_decoder_chose(words, which, margin):
    which %= len(words)
    pieces = spell(words, [False] * len(words))
    vocab = 5  # token 0 is the mark "_"; logits favour it by `margin` after word `which` only
    logits = torch.zeros(len(pieces) + 1, vocab)
    logits[:, 0] = -5.0
    starts = [i for i, p in enumerate(pieces) if p.startswith("\u2581")] + [len(pieces)]
    logits[starts[which + 1], 0] = margin
    logits[starts[which + 1], 1] = 0.0
    got = decoded_words(pieces, logits, torch.tensor([0]), to_text)
    p = got[which][2]
    assert p == pytest.approx(1 / (1 + np.exp(-margin)), abs=1e-5)
    assert all(q < 0.01 for i, (_, _, q) in enumerate(got) if i != which)


@settings(max_examples=60, derandomize=True, deadline=None)
@given(st.lists(st.sampled_from(["a", "red", "cat", "zebra", "x1", "Grass"]), min_size=1, max_size=6, unique=True),
       st.integers(0, 7), st.sampled_from(["drop", "insert", "respell"]))
def test_alignment_survives_a_word_the_decoder_changed(words, where, change):
    where %= len(words)
    gen = [(w, i % 2 == 0, 0.9 if i % 2 == 0 else 0.1) for i, w in enumerate(words)]
    if change == "drop":
        del gen[where]
    elif change == "insert":
        gen.insert(where, ("inserted", True, 0.7))
    else:
        gen[where] = ("Respelt", gen[where][1], gen[where][2])
    probs, unmatched = align_words(words, gen)
    assert len(probs) == len(words)
    if change == "insert":
        assert probs == [0.9 if i % 2 == 0 else 0.1 for i in range(len(words))] and unmatched == []
    elif change == "respell":  # same length run: matched by position
        assert probs == [0.9 if i % 2 == 0 else 0.1 for i in range(len(words))]
    else:
        assert len(unmatched) >= 1 and all(p in (0.0, 0.1, 0.9) for p in probs)


@settings(max_examples=60, derandomize=True, deadline=None)
@given(st.integers(0, 40), st.sampled_from(["attention.attention.query", "attention.attention.key",
                                            "attention.attention.value", "attention.output.dense", "intermediate.dense",
                                            "output.dense", "layernorm_before", "layernorm_after"]),
       st.sampled_from(["weight", "bias"]))
def test_vit_key_names_map_both_ways(layer, part, kind):
    old = f"vit.encoder.layer.{layer}.{part}.{kind}"
    new = renamed(old, OLD_TO_NEW)
    assert new.startswith(f"vit.layers.{layer}.") and "attention.attention" not in new and "dense" not in new
    assert renamed(new, NEW_TO_OLD) == old
    assert renamed(f"t5.encoder.block.{layer}.layer.0.SelfAttention.q.weight", OLD_TO_NEW) is None  # T5 kept its names
