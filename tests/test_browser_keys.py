"""The explorer's keys and thumbnail clicks in a real browser (AppTest cannot press keys or click an
image): → / ← step through the filtered records in the Record view, but not while a text box has
focus; j / k turn the gallery's pages; a click on a thumbnail opens its record."""

import re

import pytest

from tests.browser_support import ARTIFACTS, browser_page, settled

pytestmark = pytest.mark.browser
SPEC = "shapes:n=300,seed=1"


@pytest.fixture(scope="module")
def server(app_server):
    return app_server


@pytest.fixture(scope="module")
def page(server, chromium_browser):
    ARTIFACTS.mkdir(exist_ok=True)
    yield from browser_page(chromium_browser, height=1400)


def record_number(pg) -> int:
    text = pg.get_by_text(re.compile(r"Record [\d,]+ of [\d,]+")).first.inner_text()
    return int(re.search(r"Record ([\d,]+) of", text).group(1).replace(",", ""))


def test_arrow_keys_step_through_records_but_not_while_typing(server, page):
    from playwright.sync_api import expect

    page.goto(f"{server}/explorer?ds={SPEC}&view=Record&sort=plausibility")
    settled(page)
    expect(page.get_by_text(re.compile(r"Record 1 of 300"))).to_be_visible()
    # The shortcut lives on the mounted Next button, and a focused text box (or slider) takes the key:
    # start from the button on the page and nothing focused (a loaded CI run once lost the first press).
    expect(page.get_by_role("button", name="Next ▶")).to_be_enabled()
    page.evaluate("document.activeElement && document.activeElement.blur()")
    page.keyboard.press("ArrowRight")
    expect(page.get_by_text(re.compile(r"Record 2 of 300"))).to_be_visible()
    page.keyboard.press("ArrowRight")
    expect(page.get_by_text(re.compile(r"Record 3 of 300"))).to_be_visible()
    settled(page)
    page.screenshot(path=str(ARTIFACTS / "explorer-keys-record.png"))
    page.keyboard.press("ArrowLeft")
    expect(page.get_by_text(re.compile(r"Record 2 of 300"))).to_be_visible()
    settled(page)
    # In the record-id box the arrows move the caret: the record stays.
    page.get_by_role("textbox", name="Record id").click()
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowRight")
    page.wait_for_timeout(1500)
    settled(page)
    assert record_number(page) == 2


def test_j_and_k_turn_the_gallery_pages_and_a_thumbnail_click_opens_its_record(server, page):
    from playwright.sync_api import expect

    page.goto(f"{server}/explorer?ds={SPEC}&view=Gallery&per_page=12")
    settled(page)
    expect(page.get_by_text(re.compile(r"^Page 1 of 25 · "))).to_be_visible()
    page.evaluate("document.activeElement && document.activeElement.blur()")  # no box takes the key
    page.keyboard.press("j")
    expect(page.get_by_text(re.compile(r"^Page 2 of 25 · "))).to_be_visible()
    page.keyboard.press("j")
    expect(page.get_by_text(re.compile(r"^Page 3 of 25 · "))).to_be_visible()
    page.keyboard.press("k")
    expect(page.get_by_text(re.compile(r"^Page 2 of 25 · "))).to_be_visible()
    settled(page)
    page.screenshot(path=str(ARTIFACTS / "explorer-keys-gallery.png"))
    # Typed into a text box, j is a letter, not a page turn.
    page.get_by_role("textbox", name="Tag the 0 ticked records").click()
    page.keyboard.type("jj")
    page.wait_for_timeout(1500)
    settled(page)
    expect(page.get_by_text(re.compile(r"^Page 2 of 25 · "))).to_be_visible()
    assert page.get_by_role("textbox", name="Tag the 0 ticked records").input_value() == "jj"
    # The third thumbnail of page 2 is record 15 of the (unsorted) 300.
    third = page.locator("[class*='st-key-gcell_'] [data-testid='stImage'] img").nth(2)
    # Sent at its own 64 px, shown enlarged with crisp pixels (ui/explorer_parts.py gallery_cell).
    assert third.evaluate("i => [i.naturalWidth, getComputedStyle(i).imageRendering]") == [64, "pixelated"]
    cell_key = third.locator("xpath=ancestor::div[contains(@class, 'st-key-gcell_')]").first.get_attribute("class")
    position = int(re.search(r"st-key-gcell_(\d+)", cell_key).group(1))
    third.click()
    expect(page.get_by_text(re.compile(r"Record 15 of 300"))).to_be_visible()
    settled(page)
    assert position == 14
    assert page.get_by_role("textbox", name="Record id").input_value() == f"shapes-1-{position:06d}"
    page.screenshot(path=str(ARTIFACTS / "explorer-thumbnail-opened.png"))


def test_a_click_on_a_patch_crop_opens_its_record(server, page):
    from playwright.sync_api import expect

    page.goto(f"{server}/explorer?ds={SPEC}&view=Patches")
    settled(page)
    crop = page.locator("[class*='st-key-gcell_patch_'] [data-testid='stImage'] img").nth(1)
    expect(crop).to_be_visible()
    cell = crop.locator("xpath=ancestor::div[contains(@class, 'st-key-gcell_patch_')]").first
    button_class = cell.locator("[class*='st-key-patch_open_']").first.get_attribute("class")
    rec_id = re.search(r"st-key-patch_open_(shapes-1-\d{6})", button_class).group(1)
    crop.click()
    expect(page.get_by_role("textbox", name="Record id")).to_have_value(rec_id)
    settled(page)
    page.screenshot(path=str(ARTIFACTS / "explorer-patch-opened.png"))
