"""The Annotate page in a real browser: `streamlit run app.py` on a free port, Debian Chromium through
Playwright, clicks on the `streamlit-image-coordinates` component at known positions of an image shown
larger than it is stored. Screenshots go to tests/artifacts/ (git-ignored)."""

import json
import re

import numpy as np
import pytest
from PIL import Image

from rhf_core import annotation as A
from rhf_core.data import open_dataset
from tests.browser_support import ARTIFACTS, browser_page, settled

W, H = 120, 80  # stored size; the page shows it 512 px wide (×4.27)
SHOWN_W = 512


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    src = tmp_path_factory.mktemp("src")
    (src / "images").mkdir()
    rng = np.random.default_rng(0)
    lines = []
    for rec_id, prompt in (("a", "a red cat on a mat"), ("b", "two blue dogs")):
        Image.fromarray(rng.integers(60, 200, (H, W, 3), dtype=np.uint8)).save(src / "images" / f"{rec_id}.png")
        lines.append(json.dumps({"id": rec_id, "prompt": prompt, "image": f"images/{rec_id}.png"}))
    (src / "labels.jsonl").write_text("\n".join(lines) + "\n")
    return src, tmp_path_factory.mktemp("out") / "annotations"


@pytest.fixture(scope="module")
def server(app_server):
    pytest.importorskip("streamlit_image_coordinates", reason="streamlit_image_coordinates is not installed (requirements.txt)")
    return app_server


@pytest.fixture(scope="module")
def page(server, chromium_browser):
    yield from browser_page(chromium_browser, height=1300)


def _image(page):
    return page.frame_locator("iframe[title*='streamlit_image_coordinates']").locator("#image")


def _click(page, x, y, n_kind: str):
    """Click the displayed image at (x, y) CSS pixels and wait until the page counts the point."""
    from playwright.sync_api import expect

    _image(page).click(position={"x": x, "y": y})
    expect(page.get_by_text(re.compile(re.escape(n_kind)))).to_be_visible()
    settled(page)


def _rate(page, ratings: dict):
    # One settle after the four clicks: each click's rerun request carries every widget's value, so the
    # last run has all four (what is saved is checked from the file).
    for name, value in ratings.items():
        page.locator(f"[class*='st-key-ann_{name}_']").get_by_text(str(value), exact=True).click()
    settled(page)


def _stored(x, y, box):
    """Where a click at displayed (x, y) lands in the stored image (the test's own mapping)."""
    return x * W / box["width"], y * H / box["height"]


def test_annotate_two_annotators_in_the_browser(server, page, folders):
    from playwright.sync_api import expect

    src, target = folders
    ARTIFACTS.mkdir(exist_ok=True)
    page.goto(f"{server}/annotate?ds=folder:{src}&ann_target={target}")
    settled(page)
    expect(page.get_by_text(re.compile(r"Image 1 of 2"))).to_be_visible()
    box = _image(page).bounding_box()
    assert round(box["width"]) == SHOWN_W and abs(box["height"] - SHOWN_W * H / W) < 1.5  # shown ≠ stored

    # Alice: two implausible points, one misaligned point, a flagged word, four ratings.
    clicks = [(100, 150), (400, 60)]
    _click(page, *clicks[0], "(1 implausibility")
    _click(page, *clicks[1], "(2 implausibility")
    page.get_by_role("button", name=re.compile("^Misalignment")).click()
    settled(page)
    _click(page, 300, 250, "1 misalignment")
    # A stray point removed by its label, another undone with the keyboard (U; focus off the image's frame).
    _click(page, 40, 40, "2 misalignment")
    page.locator("[class*='st-key-ann_rm_']").get_by_text("misalignment 2", exact=True).click()
    expect(page.get_by_text(re.compile(r"\(2 implausibility, 1 misalignment\)"))).to_be_visible()
    settled(page)
    _click(page, 480, 300, "2 misalignment")
    page.mouse.click(1450, 1250)
    page.keyboard.press("u")
    expect(page.get_by_text(re.compile(r"\(2 implausibility, 1 misalignment\)"))).to_be_visible()
    settled(page)
    page.locator("[class*='st-key-ann_words_']").get_by_text("cat", exact=True).click()
    settled(page)
    _rate(page, {"plausibility": 2, "alignment": 4, "aesthetics": 3, "overall": 2})

    # Bad input first: no annotator name gives a readable message and saves nothing.
    page.get_by_role("button", name=re.compile("^Save & next")).click()
    expect(page.get_by_text(re.compile("Not saved: enter your name"))).to_be_visible()
    assert not (target / "labels.jsonl").exists()
    name = page.get_by_role("textbox", name="Annotator")
    name.fill("alice")
    name.press("Enter")
    settled(page)
    page.screenshot(path=str(ARTIFACTS / "annotate-mid.png"))  # mid-annotation: markers, word, ratings

    # Save with the keyboard shortcut (S), focus off the text field.
    name.blur()
    page.mouse.click(1450, 1250)
    page.keyboard.press("s")
    expect(page.get_by_text(re.compile(r"Saved: a by alice"))).to_be_visible()
    expect(page.get_by_text(re.compile(r"Image 2 of 2"))).to_be_visible()  # moved on
    settled(page)

    ann = A.annotations_of(target, "a")
    assert len(ann) == 1 and ann[0]["annotator"] == "alice" and ann[0]["image_size"] == [W, H]
    got = ann[0]["points"]["implausibility"]
    for (x, y), (gx, gy) in zip(clicks, got):
        ex, ey = _stored(x, y, box)
        assert abs(gx - ex) <= 0.02 * W and abs(gy - ey) <= 0.02 * H, (got, clicks)
    assert len(ann[0]["points"]["misalignment"]) == 1  # the removed and the undone point are gone
    mx, my = ann[0]["points"]["misalignment"][0]
    assert abs(mx - _stored(300, 250, box)[0]) <= 0.02 * W and abs(my - _stored(300, 250, box)[1]) <= 0.02 * H
    assert ann[0]["words"] == [2] and ann[0]["scores"] == {"plausibility": 2, "alignment": 4, "aesthetics": 3, "overall": 2}
    rec = open_dataset(f"folder:{target}", cache=False).get("a")
    hm = rec.heatmaps["implausibility"]
    for gx, gy in got:  # the aggregate peaks where alice clicked
        assert hm[int(gy), int(gx)] == hm.max() == 1.0
    assert rec.scores == {"plausibility": 0.25, "alignment": 0.75, "aesthetics": 0.5, "overall": 0.25}
    assert rec.flagged_words == ["cat"]
    assert np.isnan(A.agreement(target).folder["cc_implausibility"])  # one annotator: undefined

    # Bob, on the same image: one implausible point near alice's first, other ratings; saved with the button.
    name.fill("bob")
    name.press("Enter")
    settled(page)
    page.get_by_role("button", name=re.compile("Back")).click()
    expect(page.get_by_text(re.compile(r"Image 1 of 2"))).to_be_visible()
    expect(page.get_by_text(re.compile(r"annotated by alice \(1 saves\)"))).to_be_visible()
    page.get_by_role("button", name=re.compile("^Implausibility")).click()
    settled(page)
    _click(page, 110, 155, "(1 implausibility")
    _rate(page, {"plausibility": 4, "alignment": 4, "aesthetics": 5, "overall": 3})
    page.get_by_role("button", name=re.compile("^Save & next")).dblclick()  # a double click saves once
    settled(page)
    assert [a["annotator"] for a in A.annotations_of(target, "a")] == ["alice", "bob"]
    assert [json.loads(line)["id"] for line in (target / "labels.jsonl").read_text().splitlines()] == ["a"]

    rec = open_dataset(f"folder:{target}", cache=False).get("a")
    assert rec.scores == {"plausibility": 0.5, "alignment": 0.75, "aesthetics": 0.75, "overall": 0.375}
    assert dict(rec.words)["cat"] == 0.5  # one of two annotators
    hm = rec.heatmaps["implausibility"]
    bx, by = A.annotations_of(target, "a")[1]["points"]["implausibility"][0]
    assert abs(bx - _stored(110, 155, box)[0]) <= 0.02 * W and abs(by - _stored(110, 155, box)[1]) <= 0.02 * H
    assert hm[int(by), int(bx)] == 1.0  # both disks overlap here
    ax, ay = got[1]
    assert hm[int(ay), int(ax)] == pytest.approx(0.5)  # only alice marked her second point
    assert rec.heatmaps["misalignment"].max() == pytest.approx(0.5)
    ag = A.agreement(target).folder
    assert 0 < ag["cc_implausibility"] < 1 and ag["spread_plausibility"] == pytest.approx(0.25)

    # The page shows the updated agreement for the folder and, back on the image, for the record.
    cc = page.locator("[data-testid='stMetric']").filter(has_text="CC implausibility")
    expect(cc).to_contain_text(f"{ag['cc_implausibility']:.3f}")
    expect(page.locator("[data-testid='stMetric']").filter(has_text="Plausibility spread")).to_contain_text("0.250")
    page.get_by_role("button", name=re.compile("Back")).click()
    expect(page.get_by_text("Agreement on this image")).to_be_visible()
    settled(page)
    assert page.locator("[data-testid='stException']").count() == 0
    page.screenshot(path=str(ARTIFACTS / "annotate-after.png"), full_page=True)

    # The folder opens in the explorer at once.
    page.goto(f"{server}/explorer?ds=folder:{target}")
    settled(page)
    expect(page.get_by_text(re.compile(r"1 of 1 records match"))).to_be_visible()


def test_annotate_bad_folders_in_the_browser(server, page, tmp_path):
    from playwright.sync_api import expect

    bad = tmp_path / "broken"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"not a png")
    a_file = tmp_path / "file.txt"
    a_file.write_text("")
    page.goto(f"{server}/annotate?ds=shapes:n=20,seed=1&annotator=carol&ann_target={a_file}")
    settled(page)
    expect(page.get_by_text("Save to folder: that path is a file, not a folder.")).to_be_visible()
    page.get_by_text("Image folder", exact=True).click()
    settled(page)
    box = page.get_by_role("textbox", name="Image folder")
    box.fill(str(tmp_path / "missing"))
    box.press("Enter")
    expect(page.get_by_text(re.compile(r"missing is not a folder"))).to_be_visible()
    box.fill(str(bad))
    box.press("Enter")
    expect(page.get_by_text(re.compile(r"This image cannot be shown: x.png"))).to_be_visible()
    settled(page)
    assert page.locator("[data-testid='stException']").count() == 0
