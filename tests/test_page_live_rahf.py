"""AppTest page tests for Live RAHF (on a tiny checkpoint saved by the test)."""

import base64
import io
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from rhf_core.data import open_dataset
from rhf_core.images import MAX_PIXELS
from rhf_core.rahf import load_rahf, new_rahf
from rhf_core.rahf.analysis import analyse
from rhf_core.rahf.domain import default_photos, procedural_photographs, shapes_renders
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
    assert at.error[0].value.count(name) == 1, at.error[0].value  # was "notes.png: notes.png: …"
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


def prompt_fields(at: AppTest):
    return [t for t in at.text_input if t.key and t.key.startswith("prompt_")]


def test_a_prediction_is_dropped_when_its_files_or_prompts_change(checkpoint):
    """Was: removing a file or editing a prompt kept showing (and zipping) the old prediction."""
    at = open_live(checkpoint)
    red, blue = png(Image.new("RGB", (40, 40), (200, 0, 0))), png(Image.new("RGB", (40, 40), (0, 0, 200)))
    at.file_uploader[0].set_value([("red.png", red, "image/png"), ("blue.png", blue, "image/png")]).run()
    prompt_fields(at)[0].input("a red square").run()
    prompt_fields(at)[1].input("a blue square").run()
    at.button(key="live_predict").click().run()
    assert at.get("download_button") and [s.value for s in at.subheader] == ["red.png", "blue.png"]

    at.file_uploader[0].set_value([("blue.png", blue, "image/png")]).run()  # remove red.png
    assert not at.exception
    assert not at.get("download_button") and not at.subheader
    assert prompt_fields(at)[0].value == "a blue square"  # the remaining file keeps its prompt
    assert any("changed since the last prediction" in i.value for i in at.info)

    at.button(key="live_predict").click().run()
    assert at.get("download_button") and [s.value for s in at.subheader] == ["blue.png"]
    prompt_fields(at)[0].input("a blue circle").run()  # edit the prompt
    assert not at.get("download_button") and not at.subheader
    at.button(key="live_predict").click().run()
    assert at.get("download_button")
    assert any("a blue circle" in m.value or "circle" in m.value for m in at.markdown)


def test_mode_and_heatmap_come_back_after_another_page(checkpoint):
    at = open_live(checkpoint)
    at.segmented_control(key="live_mode").set_value("Dataset record").run()
    at.segmented_control(key="live_heat").set_value("misalignment").run()
    at.switch_page("app_pages/home.py").run()
    at.switch_page("app_pages/live_rahf.py").run()
    assert not at.exception, at.exception
    assert at.segmented_control(key="live_mode").value == "Dataset record"
    assert at.segmented_control(key="live_heat").value == "misalignment"
    assert at.text_input(key="live_record_id")  # the record view is drawn, not the upload one


def test_record_field_is_set_without_a_session_state_warning(checkpoint, monkeypatch):
    """Was: 'The widget with key "live_record_id" was created with a default value but also had its
    value set via the Session State API' in the server log after Random record or Open side by side."""
    from streamlit.elements.lib import policies

    warned = []
    monkeypatch.setattr(policies, "_shown_default_value_warning", False)
    monkeypatch.setattr(policies._LOGGER, "warning", lambda msg, *a, **k: warned.append(msg % a))
    at = open_live(checkpoint)
    at.segmented_control(key="live_mode").set_value("Dataset record").run()
    first = at.text_input(key="live_record_id").value
    for _ in range(3):
        at.button(key="live_random").click().run()
        if at.text_input(key="live_record_id").value != first:
            break
    picked = at.text_input(key="live_record_id").value
    assert picked != first and any(picked in m.value for m in at.markdown)
    assert not at.exception and not warned, warned


def run_analysis(at: AppTest, limit: int) -> AppTest:
    at.segmented_control(key="live_mode").set_value("Error analysis").run()
    at.number_input(key="live_limit").set_value(limit).run()
    return at.button(key="live_run").click().run()


def test_error_analysis_summary_belongs_to_its_records(checkpoint):
    at = run_analysis(open_live(checkpoint), 40)
    assert any(c.value.startswith("records: 40") for c in at.caption)
    assert at.session_state["live_analysis"][0][0].startswith(SPEC)  # Annotate finds the table by ds.spec
    at.number_input(key="live_limit").set_value(20).run()  # other records: the old table is stale
    assert not at.exception
    assert not at.dataframe and not any(c.value.startswith("records:") for c in at.caption)
    assert any("changed since the last run" in i.value for i in at.info)
    at.button(key="live_run").click().run()
    assert any(c.value.startswith("records: 20") for c in at.caption) and len(at.dataframe[0].value) == 20


def test_error_analysis_selection_follows_the_record_when_resorted(checkpoint):
    """Was: the selection is a row position, so re-sorting showed another record side by side."""
    at = run_analysis(open_live(checkpoint), 40)
    first = at.dataframe[0].value
    # The next sort (1 − CC) is cc_implausibility ascending: pick a record whose row changes with it.
    later = first.sort_values("cc_implausibility", na_position="last", kind="stable")["id"].astype(str).tolist()
    ids = first["id"].astype(str).tolist()
    row = next(i for i, rec_id in enumerate(ids) if later.index(rec_id) != i)
    chosen = ids[row]
    at.session_state["live_table"] = {"selection": {"rows": [row], "columns": []}}  # a click on that row
    at.run()
    assert [m.value for m in at.markdown if m.value.startswith("`shapes-")] == [f"`{chosen}`"]
    at.selectbox(key="live_sort").set_value("one_minus_cc_implausibility").run()
    assert not at.exception, at.exception
    now = at.dataframe[0].value["id"].astype(str).tolist()
    assert now.index(chosen) != row
    shown = [m.value for m in at.markdown if m.value.startswith("`shapes-")]
    assert shown == [f"`{chosen}`"], shown  # the same record, now at another row
    assert at.button(key="live_open").label == f"Open {chosen} side by side"


def test_word_f1_reads_undefined_not_zero(checkpoint, monkeypatch, tmp_path):
    """Word F1 with no word flagged by either side is undefined: the metric returns NaN and the page
    shows "—", in the table and beside the record (the tiny model flags words, so every F1 is made
    undefined here)."""
    import rhf_core.metrics as metrics

    real = metrics.token_metrics
    monkeypatch.setattr(metrics, "token_metrics", lambda *a, **k: real(*a, **k) | {"f1": float("nan")})
    monkeypatch.setenv("RHF_CACHE_DIR", str(tmp_path))  # no cached table from a run without the patch
    at = run_analysis(open_live(checkpoint), 40)
    cells = at.dataframe[0].value["word_f1"].tolist()
    assert cells and set(cells) == {"—"}, cells
    assert any("undefined" in c.value for c in at.caption)
    at.session_state["live_table"] = {"selection": {"rows": [0], "columns": []}}
    at.run()
    assert at.dataframe[-1].value.loc["word_f1", "value"] == "—"
    assert at.dataframe[-1].value.loc["cc_implausibility", "value"] not in ("—", "0")  # defined ones keep numbers


def test_a_prompt_without_words_is_a_message_not_an_exception(checkpoint):
    at = open_live(checkpoint)
    at.file_uploader[0].set_value([("cat.png", png(Image.new("RGB", (40, 40), (200, 0, 0))), "image/png")]).run()
    [t for t in at.text_input if t.key and t.key.startswith("prompt_")][0].input(".").run()
    at.button(key="live_predict").click().run()
    assert not at.exception, at.exception
    assert at.error and "has no words" in at.error[0].value
    assert not at.get("download_button")  # nothing predicted, nothing to download


# --- the training-domain notice (issue #19) --------------------------------------------------------

def open_live_embedded() -> AppTest:
    """Live RAHF on the embedded ShapesWorld checkpoint (no `?rahf=`)."""
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["ds"] = SPEC
    at.run()
    at.switch_page("app_pages/live_rahf.py").run()
    assert not at.exception, at.exception
    return at


def predict_upload(at: AppTest, name: str, data: bytes, prompt: str) -> AppTest:
    at.file_uploader[0].set_value([(name, data, "image/jpeg" if name.endswith(".jpg") else "image/png")]).run()
    prompt_fields(at)[0].input(prompt).run()
    at.button(key="live_predict").click().run()
    assert not at.exception, at.exception
    return at


def domain_warnings(at: AppTest) -> list[str]:
    return [w.value for w in at.warning if "looks unlike the images this predictor was trained on" in w.value]


@pytest.mark.skipif(not default_photos(), reason="scikit-learn's sample photographs (requirements-dev.txt)")
def test_a_photograph_on_the_embedded_checkpoint_shows_the_notice():
    """Was: a pagoda photograph got plausibility 0.16 and six flagged words, and nothing said the
    ShapesWorld predictor had never seen a photograph."""
    at = open_live_embedded()
    assert any("trained on ShapesWorld renders" in c.value for c in at.caption)
    photo = next(p for p in default_photos() if p.name == "china.jpg")  # a temple, like the pagoda
    at = predict_upload(at, "pagoda.jpg", photo.read_bytes(), "a red pagoda among green trees under a blue sky")
    [notice] = domain_warnings(at)
    assert "ShapesWorld renders" in notice and "not meaningful" in notice
    assert "docs/guides/published-weights.md" in notice and "your own checkpoint" in notice
    assert [m.label for m in at.metric].count("Plausibility") == 1  # the result is still shown, beside the notice


def test_a_shapesworld_render_on_the_embedded_checkpoint_shows_no_notice():
    at = open_live_embedded()
    render = shapes_renders(1, "test", 1)[0]
    at = predict_upload(at, "render.png", png(render), "two red circles on the grass")
    assert not domain_warnings(at) and not at.warning
    assert any(c.value.startswith("Domain check: like the images it was trained on") for c in at.caption)


def test_a_checkpoint_without_domain_statistics_says_so_without_an_alarm(checkpoint):
    at = open_live(checkpoint)
    assert any("does not record what it was trained on" in c.value and "No domain check" in c.value
               for c in at.caption)
    at = predict_upload(at, "noise.jpg", png(procedural_photographs(1)[0]), "a red cat")
    assert not domain_warnings(at)


@pytest.fixture(scope="module")
def checkpoint_b(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckb") / "tiny-rahf-b"
    new_rahf(tiny(), seed=1).save(path)  # the same shape, other weights
    return str(path)


def open_comparison(checkpoint: str, b: str, n: int = 40) -> AppTest:
    at = open_live(checkpoint)
    at.segmented_control(key="live_mode").set_value("Error analysis").run()
    at.number_input(key="live_limit").set_value(n).run()
    at.toggle(key="live_compare").set_value(True).run()
    at.text_input(key="live_rahf_b").input(b).run()
    return at


def cmp_table(at: AppTest) -> pd.DataFrame:
    """The A-vs-B table (a dataframe without selection has no key to find it by)."""
    tables = [d.value for d in at.dataframe if "verdict" in d.value]
    assert len(tables) == 1, len(tables)
    return tables[0]


def test_two_checkpoints_on_the_same_records_say_which_gets_each_right(checkpoint, checkpoint_b):
    at = open_comparison(checkpoint, checkpoint_b)
    assert not at.error and at.button(key="live_run").label == "Run error analysis (A and B)"
    at.button(key="live_run").click().run()
    assert not at.exception and not at.error
    # What the two checkpoints say on these 40 records, computed here without the page.
    ds = open_dataset(SPEC)
    col = "abs_err_plausibility"  # the first disagreement column: the page's default sort
    errs = {k: analyse(load_rahf(p), ds, np.arange(40), use_cache=False).set_index("id")[col]
            for k, p in (("a", checkpoint), ("b", checkpoint_b))}
    err = pd.DataFrame(errs).dropna()
    assert len(err) == 40 and not np.allclose(err["a"], err["b"])  # two different checkpoints

    def expected(t: float) -> dict[str, str]:
        ra, rb = err["a"] <= t, err["b"] <= t
        counts = {"Both right": ra & rb, "Only A": ra & ~rb, "Only B": ~ra & rb, "Neither": ~ra & ~rb}
        return {k: str(int(v.sum())) for k, v in counts.items()}

    metrics = {m.label: m.value for m in at.metric}
    assert {k: metrics[k] for k in ("Both right", "Only A", "Only B", "Neither")} == expected(0.1)
    assert len(at.get("plotly_chart")) == 1
    table = cmp_table(at)
    assert len(table) == 40 and set(table["id"]) == set(err.index)
    assert np.allclose(table.set_index("id").loc[err.index, "error_a"], err["a"], atol=1e-5)
    diffs = table["difference"].abs().tolist()
    assert diffs == sorted(diffs, reverse=True)  # where A and B differ most, first
    assert all(str(u).startswith("data:image/png;base64,") for u in table["image"])  # 40 ≤ MAX_THUMBS

    at.number_input(key=f"live_cmp_threshold_{col}").set_value(0.3).run()
    metrics = {m.label: m.value for m in at.metric}
    assert {k: metrics[k] for k in ("Both right", "Only A", "Only B", "Neither")} == expected(0.3)
    only = "Only B" if int(expected(0.3)["Only B"]) else "Neither"
    at.segmented_control(key="live_cmp_show").set_value(only[0].lower() + only[1:]).run()
    table = cmp_table(at)
    assert len(table) == int(expected(0.3)[only]) and set(table["verdict"]) <= {only[0].lower() + only[1:]}

    # A row of the A-vs-B table shows that record's labels beside both predictions.
    cmp = next(d for d in at.dataframe if "verdict" in d.value)
    rec_id = cmp.value["id"].iat[0]
    at.session_state["live_cmp_table"] = {"selection": {"rows": [0], "columns": []}}
    at.run()
    captions = [c for img in at.image for c in img.captions]
    assert {"A: predicted implausibility", "B: predicted implausibility"} <= set(captions)
    assert any(m.value.startswith(f"`{rec_id}`") for m in at.markdown)
    rec = ds.get(rec_id)  # the three maps share one scale: up to the highest of their peaks
    peaks = [float(load_rahf(p).predict([rec.image], [rec.prompt])[0].heatmaps["implausibility"].max())
             for p in (checkpoint, checkpoint_b)]
    if "implausibility" in rec.heatmaps:
        peaks.append(float(rec.heatmaps["implausibility"].max()))
    bars = [c for img in at.image for c in img.captions if c.startswith("One scale for the three maps")]
    assert len(bars) == 1 and f"0 → {max(peaks):.3g}," in bars[0]
    scores = next(d.value for d in at.dataframe if list(d.value.columns) == ["labelled", "A", "B"])
    assert abs(scores.loc["plausibility", "A"] - scores.loc["plausibility", "labelled"]) == pytest.approx(
        err.loc[rec_id, "a"], abs=1e-4)
    assert abs(scores.loc["plausibility", "B"] - scores.loc["plausibility", "labelled"]) == pytest.approx(
        err.loc[rec_id, "b"], abs=1e-4)

    # B and the comparison come back after a visit to another page.
    at.switch_page("app_pages/home.py").run()
    at.switch_page("app_pages/live_rahf.py").run()
    assert at.toggle(key="live_compare").value and at.text_input(key="live_rahf_b").value == checkpoint_b


def test_a_bad_second_checkpoint_is_an_error_and_the_first_still_runs(checkpoint, tmp_path):
    at = open_comparison(checkpoint, str(tmp_path))
    assert not at.exception
    assert at.error and "Could not load checkpoint B" in at.error[0].value
    assert "not a RAHF checkpoint" in at.error[0].value
    at.button(key="live_run").click().run()
    assert not at.exception and len(at.dataframe(key="live_table").value) == 40
    assert not at.get("plotly_chart")


def test_shared_mode_checks_the_second_checkpoint_like_the_sidebar(checkpoint_b, tmp_path, monkeypatch):
    models = tmp_path / "models"
    shutil.copytree(checkpoint_b, models / "tiny-b")
    monkeypatch.setenv("RHF_SHARED", "1")
    monkeypatch.setenv("RHF_MODEL_ROOTS", str(models))
    monkeypatch.setenv("RHF_DATA_ROOTS", str(tmp_path / "data"))
    at = open_comparison("", checkpoint_b, n=10)  # A: the embedded one; B: a path outside the model roots
    assert at.error and "outside the allowed model folders" in at.error[0].value
    assert checkpoint_b not in at.error[0].value and str(tmp_path) not in at.error[0].value
    at.text_input(key="live_rahf_b").input("tiny-b").run()  # inside the roots, by a relative path
    assert not at.error
    at.button(key="live_run").click().run()
    assert not at.exception and cmp_table(at)["id"].nunique() == 10


def test_error_analysis_table_has_a_thumbnail_per_row(checkpoint):
    at = open_live(checkpoint)
    at.segmented_control(key="live_mode").set_value("Error analysis").run()
    at.number_input(key="live_limit").set_value(30).run()
    at.button(key="live_run").click().run()
    table = at.dataframe(key="live_table").value
    ds = open_dataset(SPEC)
    assert table["image"].notna().all()
    # Each cell is that record's own image, shrunk: decode one and compare with the record.
    row = table.iloc[3]
    thumb = Image.open(io.BytesIO(base64.b64decode(row["image"].split(",", 1)[1]))).convert("RGB")
    original = ds.get(row["id"]).image.convert("RGB")
    assert max(thumb.size) <= 48
    expected = np.asarray(original.resize(thumb.size, Image.LANCZOS), dtype=float)
    assert np.abs(np.asarray(thumb, dtype=float) - expected).mean() < 3  # resampling differences only
    other = np.asarray(ds.get(table.iloc[4]["id"]).image.convert("RGB").resize(thumb.size, Image.LANCZOS), dtype=float)
    pixels = np.asarray(thumb, dtype=float)
    assert np.abs(pixels - other).mean() > np.abs(pixels - expected).mean()
