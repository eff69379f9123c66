"""AppTest page tests for Inpainting repair (embedded ShapesWorld generator and predictor)."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from rhf_core.rahf.domain import default_photos

APP = str(Path(__file__).resolve().parents[1] / "app.py")
SPEC = "shapes:n=60,seed=4"


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def open_repair() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=300)
    at.query_params["ds"] = SPEC
    at.run()
    at.switch_page("app_pages/repair.py").run()
    assert not at.exception, at.exception
    return at


@pytest.fixture
def media(monkeypatch):
    """file id → bytes of every image the pages hand to st.image (AppTest only keeps their URLs)."""
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

    store: dict[str, bytes] = {}
    original = MemoryMediaFileStorage.load_and_get_id

    def recording(self, path_or_data, mimetype, kind, filename=None):
        file_id = original(self, path_or_data, mimetype, kind, filename)
        store[file_id] = bytes(path_or_data) if isinstance(path_or_data, (bytes, bytearray)) else b""
        return file_id

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", recording)
    return store


def shown(media: dict, url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(media[url.rsplit("/", 1)[1].split(".")[0]])).convert("RGB"), np.float32)


def test_controls_keep_their_value_after_a_bad_record_id_and_a_slider():
    """Was `KeyError: None` at pred.heatmaps[heat_type] in the browser: the controls' default changed
    from the first option to None once their key was in session state, and the browser then reset them
    to nothing. The default sent to the browser must not change between reruns."""
    at = open_repair()
    first = {k: list(at.segmented_control(key=k).proto.default) for k in ("rep_source", "rep_heat")}
    assert first["rep_heat"] == [0]
    at.text_input(key="rep_record_id").input("no-such-id").run()
    assert at.error and "no record with id" in at.error[0].value
    at.text_input(key="rep_record_id").input("shapes-4-000003").run()
    at.slider(key="rep_threshold").set_value(0.3).run()
    at.slider(key="rep_dilation").set_value(1).run()
    assert not at.exception, at.exception
    for k, default in first.items():
        assert list(at.segmented_control(key=k).proto.default) == default, k
        assert at.segmented_control(key=k).value is not None, k
    assert any("mask:" in c for img in at.image for c in img.captions)


def test_random_record_sets_the_field_without_a_session_state_warning(monkeypatch):
    from streamlit.elements.lib import policies

    warned = []
    monkeypatch.setattr(policies, "_shown_default_value_warning", False)
    monkeypatch.setattr(policies._LOGGER, "warning", lambda msg, *a, **k: warned.append(msg % a))
    at = open_repair()
    before = at.text_input(key="rep_record_id").value
    for _ in range(3):
        at.button(key="rep_random").click().run()
        if at.text_input(key="rep_record_id").value != before:
            break
    assert at.text_input(key="rep_record_id").value != before
    assert not at.exception and not warned, warned


@pytest.mark.parametrize("name, data, message", [
    ("fake.png", b"these are not pixels", "not an image"),
    ("empty.png", b"", "empty"),
])
def test_a_bad_upload_names_the_file_once(name, data, message):
    at = open_repair()
    at.segmented_control(key="rep_source").set_value("Upload").run()
    at.file_uploader(key="rep_file").set_value([(name, data, "image/png")]).run()
    assert not at.exception
    assert at.error and message in at.error[0].value
    assert at.error[0].value.count(name) == 1, at.error[0].value  # was "fake.png: fake.png: …"


def test_an_upload_then_a_slider_keeps_the_heatmap_choice():
    at = open_repair()
    at.segmented_control(key="rep_heat").set_value("misalignment").run()
    at.segmented_control(key="rep_source").set_value("Upload").run()
    img = Image.new("RGB", (64, 64), (230, 230, 230))
    at.file_uploader(key="rep_file").set_value([("mine.png", png(img), "image/png")]).run()
    at.text_input(key="rep_upload_prompt").input("a red circle").run()
    at.slider(key="rep_threshold").set_value(0.2).run()
    assert not at.exception, at.exception
    assert at.segmented_control(key="rep_heat").value == "misalignment"  # kept while hidden
    assert any("misalignment" in c for img in at.image for c in img.captions)


def test_candidate_heatmaps_share_the_before_maps_colour_scale(media):
    """Candidate heatmaps were the raw heat through the colour map, near black; they are now overlaid on
    the candidate on the same scale as the before map, with the scale stated."""
    at = open_repair()
    at.number_input(key="rep_n").set_value(2)
    at.number_input(key="rep_steps").set_value(2).run()
    at.button(key="rep_run").click().run()
    assert not at.exception, at.exception
    shown_images = [(c, img.value[i]) for img in at.image for i, c in enumerate(img.captions)]
    scale = [c for c, _ in shown_images if c.startswith("colour scale of every predicted implausibility map")]
    assert scale, shown_images
    vmax = float(scale[0].rsplit("… ", 1)[1])
    peaks = [float(c.split("peak ")[1].split(",")[0].rstrip(")")) for c, _ in shown_images
             if "peak" in c and "predicted" in c]
    assert vmax == pytest.approx(max(peaks), abs=0.006)
    candidates = [(c, u) for c, u in shown_images if c.startswith("#")]  # column by column: image, then its map
    maps = [(c, u) for c, u in shown_images if c.startswith("predicted implausibility (peak")]
    assert len(candidates) == len(maps) == 2
    assert all(f"scale 0 … {vmax:.2f}" in c for c, _ in maps)
    for (_, cand_url), (_, map_url) in zip(candidates, maps):
        cand, heat = shown(media, cand_url), shown(media, map_url)
        assert heat.shape == cand.shape
        # Cold pixels leave the candidate as it is: the map is as bright as its image, not near black.
        assert heat.mean() > 0.6 * cand.mean(), (heat.mean(), cand.mean())


def test_a_prompt_without_words_is_a_message_not_an_exception():
    # RAHF refuses a wordless prompt ("."); the page says so and keeps working.
    at = open_repair()
    at.segmented_control(key="rep_source").set_value("Upload").run()
    at.file_uploader(key="rep_file").set_value([("mine.png", png(Image.new("RGB", (64, 64), (200, 0, 0))), "image/png")]).run()
    at.text_input(key="rep_upload_prompt").input(".").run()
    assert not at.exception, at.exception
    assert at.error and "has no words" in at.error[0].value


def test_shared_server_caps_the_candidates(monkeypatch):
    monkeypatch.setenv("RHF_SHARED", "1")
    monkeypatch.setenv("RHF_DATA_ROOTS", str(Path(__file__).resolve().parent))
    at = open_repair()
    assert at.number_input(key="rep_n").max == 8  # LIMITS["candidates"]; 16 locally
    monkeypatch.delenv("RHF_SHARED")
    at = open_repair()
    assert at.number_input(key="rep_n").max == 16


# --- the training-domain notice (issue #19) --------------------------------------------------------

def upload_and_repair(name: str, data: bytes, prompt: str) -> AppTest:
    at = open_repair()
    at.segmented_control(key="rep_source").set_value("Upload").run()
    at.file_uploader(key="rep_file").set_value([(name, data, "image/png")]).run()
    at.text_input(key="rep_upload_prompt").input(prompt).run()
    at.radio(key="rep_mode").set_value("relative").run()  # a mask however faint the map
    at.number_input(key="rep_n").set_value(2)
    at.number_input(key="rep_steps").set_value(2).run()
    assert not at.exception, at.exception
    return at


def domain_warnings(at: AppTest) -> list[str]:
    return [w.value for w in at.warning if "looks unlike the images this predictor was trained on" in w.value]


@pytest.mark.skipif(not default_photos(), reason="scikit-learn's sample photographs (requirements-dev.txt)")
def test_a_photograph_is_flagged_and_its_score_change_is_not_an_improvement():
    """Was: the pagoda photograph was painted over and '+0.53 plausibility' shown in green."""
    from streamlit.proto.Metric_pb2 import Metric

    photo = next(p for p in default_photos() if p.name == "china.jpg")
    at = upload_and_repair("pagoda.jpg", photo.read_bytes(), "a red pagoda among green trees")
    assert len(domain_warnings(at)) == 1  # beside the heatmap and mask preview, before any repair
    at.button(key="rep_run").click().run()
    assert not at.exception, at.exception
    assert [m.label for m in at.metric] == ["Plausibility", "Alignment", "Aesthetics", "Overall"]
    assert {m.proto.color for m in at.metric} == {Metric.MetricColor.GRAY}  # neither green nor red
    assert any("not an improvement" in w.value for w in at.warning)


def test_a_render_is_not_flagged_and_keeps_coloured_score_changes():
    from streamlit.proto.Metric_pb2 import Metric

    from rhf_core.shapes.dataset import generate_sample

    sample = generate_sample(27, seed=1)  # a test-split render with a melted shape: something to repair
    assert sample.split == "test" and any(d.type == "implausibility" for d in sample.defects)
    at = upload_and_repair("render.png", png(sample.image()), sample.prompt)
    assert not domain_warnings(at)
    assert any("trained on ShapesWorld renders" in c.value for c in at.caption)
    at.button(key="rep_run").click().run()
    assert not at.exception, at.exception
    assert not domain_warnings(at) and not any("not an improvement" in w.value for w in at.warning)
    changed = [m for m in at.metric if m.delta.strip("+-0.")]
    assert changed and Metric.MetricColor.GRAY not in {m.proto.color for m in changed}
