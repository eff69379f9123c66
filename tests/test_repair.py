"""The repair loop (rhf_core.repair) on a tiny random generator and the embedded RAHF, and the page."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from rhf_core.data import open_dataset
from rhf_core.errors import RHFError
from rhf_core.rahf import load_rahf
from rhf_core.repair import RepairError, repair, repair_mask
from rhf_core.t2i import load_generator
from rhf_core.t2i.build import build_pipeline
from tests.test_t2i import TINY

APP = str(Path(__file__).resolve().parents[1] / "app.py")
SPEC = "shapes:n=60,seed=4"


@pytest.fixture(scope="module")
def tiny_gen_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-gen") / "tiny-gen"
    build_pipeline(TINY, seed=1).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def parts(tiny_gen_dir):
    return load_rahf(), load_generator(tiny_gen_dir)


@pytest.fixture(scope="module")
def record():
    ds = open_dataset(SPEC)
    pos = int(np.argmax(ds.frame["implausibility_mass"].fillna(0).to_numpy()))
    return ds[pos]


def png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def test_mask_modes_and_dilation_follow_the_heatmap():
    heat = np.zeros((16, 16), np.float32)
    heat[4:6, 4:6] = 0.4
    heat[10, 10] = 0.8
    assert repair_mask((16, 16), heatmap_array=heat, threshold=0.5, dilation=0).sum() == 1  # only the 0.8 pixel
    assert repair_mask((16, 16), heatmap_array=heat, threshold=0.5).sum() == 49  # default dilation: a disk of radius 4
    assert repair_mask((16, 16), heatmap_array=heat, threshold=0.5, threshold_mode="relative", dilation=0).sum() == 5
    grown = repair_mask((16, 16), heatmap_array=heat, threshold=0.5, dilation=2)
    assert grown.sum() == 13  # a disk of radius 2 around one pixel
    big = repair_mask((32, 32), heatmap_array=heat, threshold=0.5, threshold_mode="relative", dilation=0)  # resized first
    assert big.shape == (32, 32) and big.any()
    assert not repair_mask((16, 16), heatmap_array=heat, threshold=0.9).any()
    with pytest.raises(RepairError, match="threshold mode"):
        repair_mask((16, 16), heatmap_array=heat, threshold_mode="percent")
    with pytest.raises(RepairError, match="but the image is 16×16"):
        repair_mask((16, 16), mask=np.ones((8, 8), bool))


def test_repair_ranks_candidates_and_keeps_unmasked_pixels(parts, record):
    rahf, gen = parts
    img = record.image
    r = repair(img, record.prompt, threshold=0.3, threshold_mode="relative", dilation=2, n=3, seed=0, steps=3,
               predictor=rahf, generator=gen)
    assert r.heatmap_source == "predicted" and not r.empty and 0 < r.mask_share < 1
    assert len(r.candidates) == 3 and r.best is r.candidates[0]
    plaus = [c.plausibility for c in r.candidates]
    assert plaus == sorted(plaus, reverse=True)
    again = rahf.predict([c.image for c in r.candidates], [record.prompt] * 3)  # scored independently
    assert np.allclose([p.scores["plausibility"] for p in again], plaus, atol=1e-5)
    orig = np.asarray(img)
    for c in r.candidates:
        arr = np.asarray(c.image)
        assert np.array_equal(arr[~r.mask], orig[~r.mask])
        assert c.judge is not None  # a ShapesWorld prompt: judged before and after
    assert r.before.judge is not None
    assert np.array_equal(np.asarray(r.mask_image) == 255, r.mask)
    # the same candidates (same seed) ranked by plausibility + alignment
    r2 = repair(img, record.prompt, threshold=0.3, threshold_mode="relative", dilation=2, n=3, seed=0, steps=3,
                predictor=rahf, generator=gen, rank="plausibility+alignment")
    assert sorted(c.index for c in r2.candidates) == [0, 1, 2]
    total = [c.plausibility + c.scores["alignment"] for c in r2.candidates]
    assert total == sorted(total, reverse=True)


def test_lower_strength_keeps_more_of_the_original_inside_the_mask(parts, record):
    rahf, _ = parts  # the embedded generator: a random tiny VAE cannot reproduce the original at all
    kw = dict(threshold=0.3, threshold_mode="relative", dilation=2, n=2, seed=0, steps=20, predictor=rahf,
              generator=load_generator())
    orig = np.asarray(record.image).astype(np.float32)
    err = {}
    for strength in (1.0, 0.5, 0.1):
        r = repair(record.image, record.prompt, strength=strength, **kw)
        inside = [np.abs(np.asarray(c.image).astype(np.float32) - orig)[r.mask].mean() for c in r.candidates]
        assert all(np.array_equal(np.asarray(c.image)[~r.mask], orig[~r.mask].astype(np.uint8))
                   for c in r.candidates)
        err[strength] = float(np.mean(inside))
    # mean |change| inside the mask falls with strength (measured about 27, 22, 15 grey levels; the floor is
    # the VAE's round trip of the noisy night sky)
    assert err[0.1] < err[0.5] < err[1.0]


def test_ground_truth_heatmap_and_user_mask_sources(parts, record):
    rahf, gen = parts
    gt = record.heatmaps["implausibility"]
    r = repair(record.image, record.prompt, threshold=0.5, threshold_mode="relative", dilation=0, n=1, steps=2,
               predictor=rahf, generator=gen, heatmap_array=gt)
    assert r.heatmap_source == "ground truth"
    assert np.array_equal(r.mask, gt >= 0.5 * gt.max())
    m = np.zeros((64, 64), bool)
    m[5:9, 5:9] = True
    r = repair(record.image, record.prompt, n=1, steps=2, predictor=rahf, generator=gen, mask=m)
    assert r.heatmap_source == "user mask" and r.mask.sum() == 16


def test_an_empty_mask_is_reported_not_inpainted(parts, record):
    rahf, gen = parts
    r = repair(record.image, record.prompt, threshold=1.0, threshold_mode="absolute", predictor=rahf, generator=gen)
    assert r.empty and r.candidates == [] and r.best is None
    assert "mask is empty" in r.message and "Nothing was inpainted" in r.message


@pytest.mark.parametrize("kwargs, message", [
    ({"prompt": ""}, "empty prompt"),
    ({"heatmap": "aesthetics"}, "unknown heatmap type"),
    ({"mask": np.ones((10, 10), bool)}, "10×10 but the image is 64×64"),
    ({"threshold": 1.5}, "threshold must be in"),
    ({"rank": "aesthetics"}, "unknown ranking"),
    ({"strength": 0.0}, "strength must be in"),
    ({"strength": 0.4}, "leave no denoising step"),  # 2 steps × 0.4
])
def test_bad_repair_requests(parts, record, kwargs, message):
    rahf, gen = parts
    args = {"image": record.image, "prompt": record.prompt, "predictor": rahf, "generator": gen, "steps": 2, **kwargs}
    with pytest.raises(RepairError, match=message):
        repair(**args)


# --- the page -----------------------------------------------------------------------------------

def open_page(gen_dir) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180)
    at.query_params["ds"] = SPEC
    at.query_params["gen"] = str(gen_dir)
    at.run()
    at.switch_page("app_pages/repair.py").run()
    assert not at.exception, at.exception
    return at


def _mask_caption(at) -> str:
    return next(c for img in at.image for c in img.captions if c.startswith("mask:"))


def _share(caption: str) -> float:
    return float(caption.split("mask: ")[1].split("%")[0])


def test_page_sliders_move_the_mask_and_repair_runs(tiny_gen_dir, record):
    at = open_page(tiny_gen_dir)
    at.text_input(key="rep_record_id").set_value(record.id).run()
    assert not at.exception, at.exception
    at.slider(key="rep_threshold").set_value(0.3).run()
    at.slider(key="rep_dilation").set_value(0).run()
    tight = _share(_mask_caption(at))
    at.slider(key="rep_dilation").set_value(4).run()
    grown = _share(_mask_caption(at))
    assert 0 < tight < grown
    at.slider(key="rep_threshold").set_value(0.9).run()
    assert _share(_mask_caption(at)) < grown
    at.slider(key="rep_threshold").set_value(0.3).run()
    at.number_input(key="rep_n").set_value(2).run()
    at.number_input(key="rep_steps").set_value(3).run()
    at.button(key="rep_run").click().run()
    assert not at.exception, at.exception
    captions = [c for img in at.image for c in img.captions]
    assert sum(c.startswith("#") and "plausibility" in c for c in captions) == 2
    assert any(c.startswith("after (best candidate") for c in captions)
    assert [m.label for m in at.metric][:4] == ["Plausibility", "Alignment", "Aesthetics", "Overall"]
    assert any("judge:" in c.value for c in at.caption)
    # Re-ranking by plausibility + alignment re-sorts the same candidates without a new run.
    def ranked():
        caps = [c for img in at.image for c in img.captions if c.startswith("#") and "alignment" in c]
        return [(float(c.split("plausibility ")[1].split(" ")[0]), float(c.split("alignment ")[1])) for c in caps]
    assert [p for p, _ in ranked()] == sorted((p for p, _ in ranked()), reverse=True)
    at.radio(key="rep_rank").set_value("plausibility+alignment").run()
    assert not at.exception and not at.info, (at.exception, at.info)
    totals = [p + a for p, a in ranked()]  # captions round each score to 0.01
    assert all(x >= y - 0.011 for x, y in zip(totals, totals[1:])), totals
    assert at.subheader[-1].value.endswith("plausibility + alignment")
    # Moving a slider after a run asks for a new run instead of showing stale results.
    at.slider(key="rep_dilation").set_value(1).run()
    assert any("press Repair" in i.value for i in at.info)


def test_page_bad_uploads_show_messages(tiny_gen_dir):
    at = open_page(tiny_gen_dir)
    at.segmented_control(key="rep_source").set_value("Upload").run()
    at.file_uploader(key="rep_file").set_value([("notes.png", b"this is not an image", "image/png")]).run()
    assert not at.exception and at.error and "notes.png" in at.error[0].value
    img = Image.new("RGB", (64, 64), (18, 22, 52))
    at.file_uploader(key="rep_file").set_value([("sky.png", png(img), "image/png")]).run()
    at.text_input(key="rep_upload_prompt").input("a red circle in the night sky").run()
    at.radio(key="rep_mask_source").set_value("Upload a mask").run()
    at.file_uploader(key="rep_mask_file").set_value([("m.png", png(Image.new("L", (32, 32), 255)), "image/png")]).run()
    assert not at.exception
    assert any("32×32 but the image is 64×64" in e.value for e in at.error)


# --- arguments are checked before any work; images go through load_image -------------------------

class _MustNotRun:
    """A predictor and generator that fail the test if repair gets as far as using them."""

    def predict(self, *a, **k):
        raise AssertionError("predict ran before the arguments were checked")

    def inpaint(self, *a, **k):
        raise AssertionError("inpaint ran before the arguments were checked")


@pytest.mark.parametrize("kwargs, message", [
    ({"seed": -1}, "seed must be a whole number"),
    ({"steps": 2.5}, "steps must be a whole number"),
    ({"steps": 0}, "steps must be a whole number"),
    ({"guidance": float("inf")}, "guidance must be a number"),
    ({"guidance": float("nan")}, "guidance must be a number"),
    ({"n": 0}, "n \\(candidates\\) must be"),
    ({"n": -3}, "n \\(candidates\\) must be"),
    ({"n": 2.5}, "n \\(candidates\\) must be"),
    ({"threshold": -0.1}, "threshold must be in"),
    ({"threshold": float("nan")}, "threshold must be in"),
    ({"dilation": -1}, "dilation must be"),
    ({"threshold_mode": "percent"}, "threshold mode"),
    ({"heatmap_array": np.zeros((8, 8, 3), np.float32)}, "2-D"),
    ({"heatmap_array": np.full((8, 8), 255.0)}, "in \\[0, 1\\]"),
    ({"heatmap_array": np.full((8, 8), np.nan)}, "NaN"),
    ({"prompt": "."}, "has no words"),
    ({"prompt": None}, "must be text"),
    ({"image": b"not an image"}, "not an image"),
])
def test_bad_arguments_are_refused_before_any_work(kwargs, message):
    args = {"image": Image.new("RGB", (16, 16)), "prompt": "two red circles", "predictor": _MustNotRun(),
            "generator": _MustNotRun(), "steps": 4, **kwargs}
    with pytest.raises(RHFError, match=message):
        repair(**args)


class _Recorder:
    """A predictor that records the image it is given and predicts a clean image (empty mask)."""

    def predict(self, images, prompts):
        from rhf_core.rahf.predictor import Prediction

        self.images = images
        return [Prediction(heatmaps={h: np.zeros(im.size[::-1], np.float32) for h in ("implausibility", "misalignment")},
                           scores=dict.fromkeys(("plausibility", "alignment", "aesthetics", "overall"), 0.5),
                           words=[]) for im in images]


def test_repair_decodes_16bit_and_transparent_images_through_load_image():
    deep = Image.fromarray(np.full((12, 10), 32896, np.uint16))  # mid-gray in 16 bits
    seen = _Recorder()
    r = repair(deep, "two red circles", predictor=seen, generator=_MustNotRun())
    assert r.empty and seen.images[0].mode == "RGB" and seen.images[0].size == (10, 12)
    assert seen.images[0].getpixel((0, 0)) == (128, 128, 128)  # was clipped to white (255)
    clear = Image.new("RGBA", (10, 12), (0, 0, 0, 0))  # fully transparent black: white on screen
    repair(clear, "two red circles", predictor=seen, generator=_MustNotRun())
    assert seen.images[0].getpixel((0, 0)) == (255, 255, 255)  # was black


def test_plan_then_run_is_one_way_predicts_the_image_once_and_equals_repair(parts, record):
    # The page previews a plan (heatmap, mask) and runs it unchanged: the original is predicted once,
    # the candidates once more, and the result is what repair() gives for the same settings.
    from rhf_core.repair import plan_repair, rank_candidates, run_repair

    rahf, gen = parts
    calls = []

    class Counting:
        def predict(self, images, prompts, **kw):
            calls.append(len(images))
            return rahf.predict(images, prompts, **kw)

    truth = record.heatmaps["implausibility"]
    plan = plan_repair(record.image, record.prompt, predictor=Counting(), threshold=0.3, threshold_mode="relative",
                       dilation=2, heatmap_array=truth)
    assert calls == [1] and plan.heatmap_source == "ground truth" and plan.heatmap.shape == plan.mask.shape
    result = run_repair(plan, generator=gen, n=3, seed=0, steps=3)
    assert calls == [1, 3]
    assert result.heatmap is plan.heatmap and result.heatmap_source == "ground truth" and result.before is plan.before
    whole = repair(record.image, record.prompt, threshold=0.3, threshold_mode="relative", dilation=2, n=3, seed=0,
                   steps=3, predictor=rahf, generator=gen, heatmap_array=truth)
    assert [c.index for c in whole.candidates] == [c.index for c in result.candidates]
    for a, b in zip(whole.candidates, result.candidates):
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    # re-ranking is a view: the result keeps its order
    order = [c.index for c in result.candidates]
    shown = rank_candidates(result.candidates, "plausibility+alignment")
    assert sorted(c.index for c in shown) == sorted(order) and [c.index for c in result.candidates] == order
    with pytest.raises(RepairError, match="unknown ranking"):
        rank_candidates(result.candidates, "beauty")
