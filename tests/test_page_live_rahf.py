"""AppTest page tests for Live RAHF (on a tiny checkpoint saved by the test)."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from rhf_core.images import MAX_PIXELS
from rhf_core.rahf import new_rahf
from tests.test_rahf import tiny

APP = str(Path(__file__).resolve().parents[1] / "app.py")
SPEC = "shapes:n=120,seed=4"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "tiny-rahf"
    new_rahf(tiny()).save(path)
    return str(path)


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def open_live(checkpoint: str, **params) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["ds"] = SPEC
    at.query_params["rahf"] = checkpoint
    for k, v in params.items():
        at.query_params[k] = v
    at.run()
    at.switch_page("app_pages/live_rahf.py").run()
    assert not at.exception, at.exception
    return at


def test_upload_predict_and_download(checkpoint):
    at = open_live(checkpoint)
    assert any("tiny-rahf" in c.value for c in at.caption)
    at.file_uploader[0].set_value([("cat.png", png(Image.new("RGBA", (80, 60), (200, 0, 0, 255))), "image/png"),
                                   ("dog.jpg", png(Image.new("RGB", (30, 30), (0, 0, 200))), "image/jpeg")]).run()
    prompts = [t for t in at.text_input if t.key and t.key.startswith("prompt_")]
    assert len(prompts) == 2
    prompts[0].input("a red cat").run()
    at.button(key="live_predict").click().run()
    assert at.warning and "dog.jpg" in at.warning[0].value  # the second image has no prompt yet
    [t for t in at.text_input if t.key and t.key.startswith("prompt_")][1].input("a blue dog").run()
    at.button(key="live_predict").click().run()
    assert not at.exception and not at.warning
    captions = [c for img in at.image for c in img.captions]
    assert captions.count("predicted implausibility") == 2
    labels = [m.label for m in at.metric]
    assert labels.count("Plausibility") == 2 and labels.count("Overall") == 2
    assert any("misaligned" in c.value for c in at.caption)
    assert at.get("download_button")
    at.segmented_control(key="live_heat").set_value("misalignment").run()
    assert [c for img in at.image for c in img.captions].count("predicted misalignment") == 2


@pytest.mark.parametrize("name, data, message", [
    ("notes.png", b"these are not pixels", "not an image"),
    ("empty.png", b"", "empty"),
    ("bomb.png", png(Image.new("1", (int(np.sqrt(MAX_PIXELS)) + 100,) * 2)), "too large"),
    ("cut.jpg", png(Image.new("RGB", (50, 50)))[:50], "corrupt or truncated"),
])
def test_bad_uploads_show_a_message(checkpoint, name, data, message):
    at = open_live(checkpoint)
    at.file_uploader[0].set_value([(name, data, "image/png"),
                                   ("ok.png", png(Image.new("RGB", (20, 20))), "image/png")]).run()
    assert not at.exception
    assert at.error and name in at.error[0].value and message in at.error[0].value
    assert len([t for t in at.text_input if t.key and t.key.startswith("prompt_")]) == 1  # the good one stays


def test_dataset_record_beside_its_labels(checkpoint):
    at = open_live(checkpoint, live_mode="Dataset record")
    at.segmented_control(key="live_mode").set_value("Dataset record").run()
    assert not at.exception
    captions = [c for img in at.image for c in img.captions]
    assert "predicted implausibility" in captions
    assert any(c.startswith(("labelled implausibility", "implausibility: not collected")) for c in captions)
    assert len(at.dataframe) >= 1
    at.text_input(key="live_record_id").input("shapes-4-000007").run()
    assert any("shapes-4-000007" in m.value for m in at.markdown)
    at.text_input(key="live_record_id").input("no-such-id").run()
    assert at.error and "no record with id" in at.error[0].value


def test_error_analysis_lists_records_by_disagreement(checkpoint):
    at = open_live(checkpoint)
    at.segmented_control(key="live_mode").set_value("Error analysis").run()
    at.number_input(key="live_limit").set_value(40).run()
    at.button(key="live_run").click().run()
    assert not at.exception
    table = at.dataframe[0].value
    assert len(table) == 40
    col = table.columns[2]
    assert col.startswith("abs_err_") and list(table[col]) == sorted(table[col], reverse=True)
    at.selectbox(key="live_sort").set_value("one_minus_cc_implausibility").run()
    table = at.dataframe[0].value
    values = table["one_minus_cc_implausibility"].dropna().tolist()
    assert values == sorted(values, reverse=True)


def test_bad_checkpoint_shows_an_error(tmp_path):
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["ds"] = SPEC
    at.query_params["rahf"] = str(tmp_path)
    at.run()
    at.switch_page("app_pages/live_rahf.py").run()
    assert not at.exception
    assert at.error and "not a RAHF checkpoint" in at.error[0].value
