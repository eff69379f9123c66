"""The explorer's embeddings map in a real browser: a lasso drawn on the WebGL scatter filters the
gallery (AppTest cannot draw a selection, so this is the only test of the chart's callback)."""

import re

import pytest

from tests.browser_support import ARTIFACTS, browser_page, settled

SPEC = "shapes:n=300,seed=1"


@pytest.fixture(scope="module")
def server(app_server):
    return app_server


@pytest.fixture(scope="module")
def page(server, chromium_browser):
    yield from browser_page(chromium_browser, height=1400)


def _count(pg) -> int:
    text = pg.get_by_text(re.compile(r"records match")).first.inner_text()
    return int(re.search(r"([\d,]+) of ([\d,]+) records match", text).group(1).replace(",", ""))


def test_a_lasso_on_the_map_filters_the_gallery(server, page):
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(exist_ok=True)
    page.goto(f"{server}/explorer?ds={SPEC}&view=Map")
    settled(page)
    drag = page.locator("[data-testid='stPlotlyChart'] .nsewdrag").first
    expect(drag).to_be_visible()
    assert _count(page) == 300
    box = drag.bounding_box()
    # A lasso around the middle third of the plot (the layout's drag mode is lasso).
    x0, y0 = box["x"] + box["width"] / 3, box["y"] + box["height"] / 3
    x1, y1 = box["x"] + 2 * box["width"] / 3, box["y"] + 2 * box["height"] / 3
    page.mouse.move(x0, y0)
    page.mouse.down()
    for x, y in ((x1, y0), (x1, y1), (x0, y1), (x0, y0 + 2)):
        page.mouse.move(x, y, steps=8)
    page.mouse.up()
    expect(page.get_by_text(re.compile(r"Selected on the map: [\d,]+ records"))).to_be_visible()
    settled(page)
    n = _count(page)
    page.screenshot(path=str(ARTIFACTS / "explorer-map-lasso.png"))
    assert 0 < n < 300
    label = page.get_by_text(re.compile(r"Selected on the map: [\d,]+ records")).first.inner_text()
    assert int(re.search(r"([\d,]+) records", label).group(1).replace(",", "")) == n


def test_the_map_from_the_rahf_image_encoder_says_text_search_needs_clip(server, page):
    from playwright.sync_api import expect

    page.goto(f"{server}/explorer?ds={SPEC}&view=Map&emb_src=RAHF")
    settled(page)
    expect(page.get_by_text(re.compile(r"PCA of RAHF rahf-shapes image embeddings \(\d+ dims\) of all 300"))).to_be_visible()
    expect(page.get_by_text(re.compile(r"Text search needs the reward's CLIP encoder"))).to_be_visible()
    expect(page.locator("[data-testid='stPlotlyChart'] .nsewdrag").first).to_be_visible()
    assert page.get_by_placeholder("e.g. a red circle").count() == 0
    page.screenshot(path=str(ARTIFACTS / "explorer-map-rahf.png"))


def _thumbnail_target(pg, grid: str, n: int) -> tuple:
    """The n-th thumbnail image of a ranked grid (`similar` or `text`) and the id its Open button opens."""
    img = pg.locator(f"[class*='st-key-gcell_{grid}_'] [data-testid='stImage'] img").nth(n)
    cell = img.locator(f"xpath=ancestor::div[contains(@class, 'st-key-gcell_{grid}_')]").first
    position = int(re.search(rf"st-key-gcell_{grid}_(\d+)", cell.get_attribute("class")).group(1))
    return img, f"shapes-1-{position:06d}"


def test_a_click_on_a_text_search_or_more_like_this_thumbnail_opens_its_record(server, page):
    from playwright.sync_api import expect

    page.goto(f"{server}/explorer?ds={SPEC}&view=Map&map_text=three+blue+squares")
    settled(page)
    expect(page.get_by_text(re.compile(r"images nearest to “three blue squares”"))).to_be_visible()
    img, rec_id = _thumbnail_target(page, "text", 2)
    img.click()
    expect(page.get_by_role("textbox", name="Record id")).to_have_value(rec_id)
    settled(page)
    # The record view's "More like this" (bound to ?similar=): its third neighbour opens on a click.
    page.goto(f"{server}/explorer?ds={SPEC}&view=Record&id={rec_id}&similar=true")
    settled(page)
    expect(page.get_by_text(re.compile(r"records whose images are nearest to this one"))).to_be_visible()
    img, other = _thumbnail_target(page, "similar", 2)
    assert other != rec_id
    img.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "explorer-more-like-this.png"))
    img.click()
    expect(page.get_by_role("textbox", name="Record id")).to_have_value(other)
    settled(page)
