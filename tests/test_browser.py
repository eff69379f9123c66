"""End to end in a real browser: `streamlit run app.py` on a free port, driven by Debian Chromium
through Playwright. Screenshots go to tests/artifacts/ (git-ignored)."""

import re
from pathlib import Path

import pytest

from tests.browser_support import ARTIFACTS, browser_page, settled

SPEC = "shapes:n=300,seed=1"


@pytest.fixture(scope="module")
def server(app_server):
    return app_server


@pytest.fixture(scope="module")
def tiny_generator(tmp_path_factory):
    """A tiny random diffusers pipeline folder (tests/test_t2i.py's TINY), for the page's sidebar."""
    from rhf_core.t2i.build import build_pipeline
    from tests.test_t2i import TINY

    path = tmp_path_factory.mktemp("gen") / "tiny-gen"
    build_pipeline(TINY, seed=2).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def page(server, chromium_browser):
    yield from browser_page(chromium_browser, height=1400)


def _count(pg) -> tuple[int, int]:
    text = pg.get_by_text(re.compile(r"records match")).first.inner_text()
    m = re.search(r"([\d,]+) of ([\d,]+) records match", text)
    return int(m.group(1).replace(",", "")), int(m.group(2).replace(",", ""))


def test_explorer_filter_and_open_a_record(server, page):
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(exist_ok=True)
    page.goto(f"{server}/explorer?ds={SPEC}")
    settled(page)
    expect(page.get_by_text("of 300 records match")).to_be_visible()
    assert _count(page) == (300, 300)
    expect(page.locator("[data-testid='stImage']").first).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "explorer-gallery.png"))

    # Apply a filter: the count drops and the URL carries it.
    box = page.get_by_label("Prompt contains")
    box.fill("red")
    box.press("Enter")
    box.blur()
    expect(page.get_by_text(re.compile(r"^\s*\d+ of 300 records match"))).not_to_have_text(re.compile("300 of 300"))
    settled(page)
    n, _ = _count(page)
    assert 0 < n < 300
    assert "q=red" in page.url

    # Open the first record: the detail view with its overlay and the prompt's words.
    page.screenshot(path=str(ARTIFACTS / "explorer-filtered.png"))
    page.locator("[class*='st-key-open_'] button").first.click()  # gallery buttons are keyed open_<id>
    expect(page.get_by_text(re.compile(r"Record 1 of [\d,]+"))).to_be_visible()
    settled(page)
    expect(page.get_by_text("overlay", exact=False).first).to_be_visible()
    expect(page).to_have_url(re.compile(r"^(?=.*view=Record)(?=.*id=shapes-1-\d+)"))
    rec_id = re.search(r"id=(shapes-1-\d+)", page.url).group(1)
    expect(page.get_by_label("Record id", exact=True)).to_have_value(rec_id)
    expect(page.locator("[data-testid='stImage'] img")).to_have_count(6)  # three overlays, a colour bar under each
    expect(page.get_by_text("red", exact=True).first).to_be_visible()  # the prompt, word by word
    page.screenshot(path=str(ARTIFACTS / "explorer-record.png"))

    # The link alone reopens the same view in a fresh page.
    link = page.url
    page.goto("about:blank")
    page.goto(link)
    settled(page)
    expect(page.get_by_label("Record id", exact=True)).to_have_value(rec_id)
    expect(page.get_by_text(re.compile(r"Record 1 of"))).to_be_visible()


def test_plots_view_in_the_browser(server, page):
    from playwright.sync_api import expect

    page.goto(f"{server}/explorer?ds={SPEC}&view=Plots")
    settled(page)
    expect(page.get_by_text("Score histograms")).to_be_visible()
    expect(page.get_by_text("Most-flagged words (strength ≥ 0.5)")).to_be_visible()
    # Plotly's bundle loads lazily after the script run ends: wait for the charts, do not count early.
    expect(page.locator(".js-plotly-plot").nth(6)).to_be_attached(timeout=60_000)
    assert page.locator("[data-testid='stException']").count() == 0
    page.screenshot(path=str(ARTIFACTS / "explorer-plots.png"), full_page=True)

    # Clicking a point of the mass-vs-score scatter opens that record.
    point = page.locator(".js-plotly-plot path.point").first
    point.wait_for()
    point.scroll_into_view_if_needed()
    box = point.bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    expect(page.get_by_text(re.compile(r"Record \d+ of 300"))).to_be_visible()
    # The URL follows the page a moment later (query params travel in a separate message): wait for it.
    expect(page).to_have_url(re.compile(r"^(?=.*view=Record)(?=.*id=shapes-1-\d+)"))


def test_bad_spec_in_the_browser(server, page):
    from playwright.sync_api import expect

    page.goto(f"{server}/explorer?ds=folder:/no/such/dir")
    settled(page)
    expect(page.get_by_text(re.compile("Could not open dataset"))).to_be_visible()
    assert page.locator("[data-testid='stException']").count() == 0


def test_repair_page_in_the_browser(server, page):
    from playwright.sync_api import expect

    page.goto(f"{server}/repair?ds={SPEC}")
    settled(page)
    expect(page.get_by_text(re.compile(r"mask: [\d.]+% of the image"))).to_be_visible()
    page.get_by_role("button", name="Repair").click()
    expect(page.get_by_text(re.compile(r"Candidates, best first by predicted plausibility"))).to_be_visible()
    settled(page)
    assert page.locator("[data-testid='stException']").count() == 0
    expect(page.get_by_text(re.compile(r"after \(best candidate #\d\)"))).to_be_visible()
    expect(page.locator("[data-testid='stImage'] img").nth(3 + 4 + 2 * 4 - 1)).to_be_attached()
    page.screenshot(path=str(ARTIFACTS / "repair-after.png"))
    page.get_by_text(re.compile(r"Candidates, best first by predicted plausibility")).scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "repair-candidates.png"))


def test_repair_page_keeps_its_controls_after_a_bad_id_or_an_upload(server, page, tmp_path):
    """Was `KeyError: None` at pred.heatmaps[heat_type]: after a run that did not draw the heatmap control
    (a bad record id, an upload without its prompt yet), the next slider move read it as None."""
    from PIL import Image
    from playwright.sync_api import expect

    page.goto(f"{server}/repair?ds={SPEC}")
    settled(page)
    box = page.get_by_label("Record id", exact=True)
    box.fill("no-such-id")
    box.press("Enter")
    expect(page.get_by_text(re.compile("no record with id 'no-such-id'"))).to_be_visible()
    settled(page)
    box.fill("shapes-1-000003")
    box.press("Enter")
    settled(page)
    threshold = page.locator(".st-key-rep_threshold input[type=range]")
    threshold.focus()
    threshold.press("ArrowRight")
    settled(page)
    assert page.locator("[data-testid='stException']").count() == 0
    expect(page.get_by_text(re.compile(r"mask: [\d.]+% of the image"))).to_be_visible()

    # The same after an upload whose prompt comes later.
    path = tmp_path / "mine.png"
    Image.new("RGB", (64, 64), (220, 220, 220)).save(path)
    page.locator(".st-key-rep_source").get_by_text("Upload", exact=True).click()
    settled(page)
    page.locator("input[type='file']").first.set_input_files(str(path))
    settled(page)
    prompt = page.get_by_label("Its prompt")
    prompt.fill("a red circle")
    prompt.press("Enter")
    settled(page)
    threshold.focus()
    threshold.press("ArrowLeft")
    settled(page)
    assert page.locator("[data-testid='stException']").count() == 0
    expect(page.get_by_text(re.compile(r"mask: [\d.]+% of the image"))).to_be_visible()


def set_slider(pg, key: str, press: str, value: int) -> None:
    """Move the slider `key` with the keyboard and wait until it shows `value` (settle the page after the
    last move: each move's rerun request carries every widget's value)."""
    from playwright.sync_api import expect

    slider = pg.locator(f".st-key-{key} input[type=range]")
    slider.press(press)
    expect(slider).to_have_value(str(value))


def test_lee_page_in_the_browser(server, page):
    from playwright.sync_api import expect

    page.goto(f"{server}/lee?ds={SPEC}")
    settled(page)
    page.get_by_text("Free text", exact=True).click()  # the three example prompts
    settled(page)
    # n = 4, k = 2 (not the page's 16 and 4): 3 × 4 × 2 images instead of 3 × 16 × 2. Nothing asserted here
    # depends on n; k first, so k ≤ n holds at every step.
    set_slider(page, "lee_k", "Home", 1)
    set_slider(page, "lee_n", "Home", 2)
    set_slider(page, "lee_n", "ArrowRight", 3)
    set_slider(page, "lee_n", "ArrowRight", 4)
    set_slider(page, "lee_k", "ArrowRight", 2)
    settled(page)
    page.get_by_role("button", name="Compare").click()
    expect(page.get_by_text("Measures per arm")).to_be_visible(timeout=300_000)
    settled(page)
    assert page.locator("[data-testid='stException']").count() == 0
    expect(page.locator("[data-testid='stImage']")).to_have_count(4 * 2)  # four arms, k = 2 kept images each
    # Plotly's bundle loads lazily after the script run ends (slow on a loaded CI machine).
    expect(page.locator(".js-plotly-plot")).to_have_count(3, timeout=60_000)
    page.screenshot(path=str(ARTIFACTS / "lee-compare.png"))
    # Nothing is cut at the right edge: the measures table and the charts fit the main column.
    main = page.locator("[data-testid='stMain']").bounding_box()
    for element in [page.locator("[data-testid='stDataFrame']").first, *page.locator(".js-plotly-plot").all()]:
        box = element.bounding_box()
        assert box["x"] >= main["x"] - 1 and box["x"] + box["width"] <= main["x"] + main["width"] + 1, box
    page.locator(".js-plotly-plot").last.scroll_into_view_if_needed()  # the main area scrolls, not the page
    page.screenshot(path=str(ARTIFACTS / "lee-charts.png"))
    page.get_by_text("Images", exact=True).scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "lee-images.png"))

    # Pick the third prompt's images, then compare other prompts: the new grid's prompt box shows the
    # prompt whose images the page draws (it used to keep the old label over another prompt's images).
    prompt_box = page.locator("[class*='st-key-lee_prompt_']")
    prompt_box.click()
    page.get_by_role("option", name="three squares").click()
    settled(page)
    expect(page.get_by_text("The kept images of each arm for “three squares”.")).to_be_visible()
    text = page.locator(".st-key-lee_text textarea")
    text.fill("a blue star\ntwo green triangles")
    text.press("Control+Enter")
    settled(page)
    expect(page.get_by_text("Measures per arm")).to_have_count(0)  # the old result is not shown under new prompts
    page.get_by_role("button", name="Compare").click()
    expect(page.get_by_text("Measures per arm")).to_be_visible(timeout=300_000)
    settled(page)
    shown = page.locator("[class*='st-key-lee_prompt_'] input").input_value()  # what the box displays
    drawn = re.search("The kept images of each arm for “(.+)”", page.get_by_text(re.compile("The kept images of")).inner_text()).group(1)
    assert shown == drawn and drawn in ("a blue star", "two green triangles"), (shown, drawn)


def test_lee_page_fine_tune_stops_and_resumes_in_the_browser(server, page, tiny_generator):
    """Stop mid-training, then Fine-tune again: the run resumes where it stopped, not from step 0. On a tiny
    random pipeline in the sidebar (`?gen=`): what is tested is the page's stop and resume, and the embedded
    generator spent minutes sampling and rendering its training data twice before the first step.
    (test_lee_page_stop_before_the_first_step fine-tunes the embedded generator.)"""
    import json

    from playwright.sync_api import expect

    steps = 30
    page.goto(f"{server}/lee?ds={SPEC}&gen={tiny_generator}")
    settled(page)
    page.get_by_text("Free text", exact=True).click()  # another model trains on the prompts above (two here)
    settled(page)
    page.get_by_text("Fine-tune a new adapter now").click()
    page.get_by_label("Name", exact=True).fill("browser-stop")
    page.get_by_role("spinbutton", name="Steps").fill(str(steps))
    page.get_by_role("spinbutton", name="Steps").press("Enter")
    settled(page)
    page.get_by_role("button", name="Fine-tune", exact=True).click()
    # Stop as soon as a step has finished: the browser polls every 50 ms (a tiny step takes a fraction of a second).
    page.wait_for_function("() => /Fine-tuning… [1-9]/.test(document.body.innerText)", polling=50, timeout=300_000)
    page.get_by_role("button", name="Stop fine-tuning").click()
    stopped = page.get_by_text(re.compile(rf"Fine-tuning browser-stop stopped; its saved state holds \d+ of {steps} steps"))
    expect(stopped).to_be_visible()
    kept = int(re.search(rf"holds (\d+) of {steps}", stopped.inner_text()).group(1))
    settled(page)
    expect(page.get_by_role("button", name="Stop fine-tuning")).to_have_count(0)
    page.screenshot(path=str(ARTIFACTS / "lee-fine-tune-stopped.png"))
    page.get_by_role("button", name="Fine-tune", exact=True).click()
    done = page.get_by_text(re.compile("Saved the adapter to"))
    expect(done).to_be_visible(timeout=300_000)
    assert page.locator("[data-testid='stException']").count() == 0
    path = re.search(r"Saved the adapter to (\S+?);", done.inner_text()).group(1)
    info = json.loads((Path(path) / "adapter.json").read_text())
    logged = [e["step"] for e in info["log"]]
    assert info["complete"] and info["steps_done"] == steps
    # Stopped at `kept` (the step the page said the saved state held) and resumed from there, not from 0.
    assert 0 < kept < steps and logged[0] == kept and info["resumed_from"] == kept, (kept, logged)
    assert logged == sorted(logged) and logged[-1] == steps
    # The new adapter is listed and selected at once, and the Stop button is gone.
    expect(page.get_by_text(re.compile(r"Adapter browser-stop: "))).to_be_visible()
    expect(page.get_by_role("button", name="Stop fine-tuning")).to_have_count(0)


def test_lee_page_stop_before_the_first_step_says_nothing_was_kept(server, page):
    """Was "every finished step is kept" when no step had finished."""
    from playwright.sync_api import expect

    page.goto(f"{server}/lee?ds={SPEC}")
    settled(page)
    page.get_by_text("Fine-tune a new adapter now").click()
    page.get_by_label("Name", exact=True).fill("browser-early-stop")
    page.get_by_role("spinbutton", name="Training prompts").fill("10")
    page.get_by_role("spinbutton", name="Training prompts").press("Enter")
    settled(page)
    page.get_by_role("button", name="Fine-tune", exact=True).click()
    # While it still samples its training set (nothing else here fine-tunes the embedded generator, so none
    # is cached): that reports progress at every denoising step, where the Stop lands at once. (With the
    # samples cached it rendered and encoded 4,000 pre-training images, reporting nothing, before the Stop
    # could land: a minute in the suite.)
    page.get_by_role("button", name="Stop fine-tuning").click()
    # On a loaded machine the click can land after the first step: then the page must say how many
    # steps the state holds (test_lee_page_fine_tune_stops_and_resumes checks that number), never
    # claim steps it does not have.
    said = page.get_by_text(re.compile(r"Fine-tuning browser-early-stop stopped")).first
    expect(said).to_be_visible(timeout=240_000)  # the stopped run saves first; slow when the suite shares the CPUs
    text = said.inner_text()
    assert ("stopped before its first step finished: no step was kept" in text
            or re.search(r"its saved state holds [1-9]\d* of 300 steps", text)), text
    settled(page)
    assert page.locator("[data-testid='stException']").count() == 0


def test_live_rahf_upload_and_predict_in_the_browser(server, page, tmp_path):
    from playwright.sync_api import expect

    from rhf_core.shapes.dataset import generate_sample

    # A ShapesWorld render with a planted implausibility defect, uploaded as a user's PNG.
    s = next(s for s in (generate_sample(i, seed=3) for i in range(200))
             if any(d.type == "implausibility" for d in s.defects))
    path = tmp_path / "upload.png"
    s.image().resize((256, 256)).save(path)
    page.goto(f"{server}/live_rahf?ds={SPEC}")
    settled(page)
    page.locator("input[type='file']").first.set_input_files(str(path))
    box = page.get_by_label("Prompt for upload.png")
    box.fill(s.prompt)
    box.press("Enter")
    settled(page)
    page.get_by_role("button", name="Predict").click()
    expect(page.get_by_role("button", name=re.compile("Download predictions"))).to_be_visible()
    settled(page)
    assert page.locator("[data-testid='stException']").count() == 0
    expect(page.get_by_text("predicted implausibility")).to_be_visible()
    expect(page.locator("[data-testid='stMetric']").nth(3)).to_be_attached()
    page.get_by_text("predicted implausibility").scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "live-rahf-prediction.png"))

    # Another prompt: the old prediction is neither shown nor offered for download.
    box.fill(s.prompt + " and a cat")
    box.press("Enter")
    settled(page)
    expect(page.get_by_text(re.compile("changed since the last prediction"))).to_be_visible()
    expect(page.get_by_role("button", name=re.compile("Download predictions"))).to_have_count(0)
    expect(page.get_by_text("predicted implausibility")).to_have_count(0)


def test_live_rahf_mode_comes_back_after_another_page_in_the_browser(server, page):
    from playwright.sync_api import expect

    page.goto(f"{server}/live_rahf?ds={SPEC}")
    settled(page)
    page.locator(".st-key-live_mode").get_by_text("Dataset record", exact=True).click()
    settled(page)
    expect(page.get_by_label("Record id", exact=True)).to_be_visible()
    page.locator("[data-testid='stSidebarNav']").get_by_text("Home", exact=True).click()
    settled(page)
    page.locator("[data-testid='stSidebarNav']").get_by_text("Live RAHF", exact=True).click()
    settled(page)
    expect(page.get_by_label("Record id", exact=True)).to_be_visible()  # still the record view
    page.locator(".st-key-live_opacity input[type=range]").press("ArrowRight")  # any other widget
    settled(page)
    expect(page.get_by_label("Record id", exact=True)).to_be_visible()
    assert page.locator("[data-testid='stException']").count() == 0
