"""Shared-server mode end to end in a real browser: `RHF_SHARED=1 streamlit run app.py` with data and
export roots set in the environment, on a free port, driven by Debian Chromium through Playwright.
A path outside the data roots typed into the sidebar is refused, and so is an export outside the
export root (nothing is written). Screenshots go to tests/artifacts/ (git-ignored)."""

import re

import pytest

from rhf_core.data import export, open_dataset
from tests.browser_support import ARTIFACTS, browser_page, settled, streamlit_server

SPEC = "shapes:n=300,seed=1"


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """data/ds (a small dataset inside the data root), outside/secret (one outside it), exports/."""
    base = tmp_path_factory.mktemp("shared")
    for name in ("data", "exports", "outside"):
        (base / name).mkdir()
    export(open_dataset("shapes:n=3,seed=0"), base / "data" / "ds")
    export(open_dataset("shapes:n=2,seed=1"), base / "outside" / "secret")
    return base


@pytest.fixture(scope="module")
def server(tree, tmp_path_factory):
    yield from streamlit_server(tmp_path_factory, {
        "RHF_SHARED": "1", "RHF_DATA_ROOTS": str(tree / "data"), "RHF_MODEL_ROOTS": str(tree / "models"),
        "RHF_EXPORT_ROOT": str(tree / "exports")})


@pytest.fixture(scope="module")
def page(server, chromium_browser):
    yield from browser_page(chromium_browser, height=1100)


def _type(pg, label: str, text: str) -> None:
    box = pg.get_by_label(label, exact=True)
    box.fill(text)
    box.press("Enter")
    box.blur()
    settled(pg)


def test_shared_server_refuses_a_dataset_path_outside_the_roots(server, page, tree):
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(exist_ok=True)
    page.goto(f"{server}/explorer?ds={SPEC}")
    settled(page)
    expect(page.get_by_text("of 300 records match")).to_be_visible()

    outside = str(tree / "outside" / "secret")
    _type(page, "Dataset", f"folder:{outside}")
    alert = page.get_by_text(re.compile("this path is outside the allowed data folders"))
    expect(alert).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "shared-refused-dataset.png"))
    body = page.locator("[data-testid='stMain']").inner_text()
    assert str(tree) not in body and "records match" not in body  # no server path shown, nothing opened
    assert page.locator("[data-testid='stException']").count() == 0

    _type(page, "Dataset", "folder:../outside/secret")  # relative, climbing out of the root
    expect(alert).to_be_visible()

    _type(page, "Dataset", "folder:ds")  # relative, inside the root: opens
    expect(page.get_by_text(re.compile(r"3 of 3 records match"))).to_be_visible()


def test_shared_server_refuses_an_export_outside_the_export_root(server, page, tree):
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(exist_ok=True)
    page.goto(f"{server}/explorer?ds={SPEC}&q=triangle&view=Export")
    settled(page)
    label = "New folder in this server's export folder"
    expect(page.get_by_label(label, exact=True)).to_be_visible()
    assert page.get_by_text("Overwrite", exact=True).count() == 0  # never offered on a shared server

    target = tree / "outside" / "stolen"
    _type(page, label, str(target))
    page.get_by_role("button", name="Export to folder").click()
    settled(page)
    expect(page.get_by_text(re.compile("Export refused: this path is outside the server's export folder"))).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "shared-refused-export.png"))
    assert str(tree) not in page.locator("[data-testid='stMain']").inner_text()
    assert not target.exists() and sorted(p.name for p in (tree / "outside").iterdir()) == ["secret"]
    assert not any((tree / "exports").iterdir())  # nothing written anywhere

    _type(page, label, "mine")
    page.get_by_role("button", name="Export to folder").click()
    settled(page)
    expect(page.get_by_text(re.compile(r"Wrote \d+ records to mine in the server's export folder"))).to_be_visible()
    assert (tree / "exports" / "mine" / "labels.jsonl").is_file()
    assert page.get_by_text(re.compile(r"Exporting \d")).count() == 0  # the bar is gone once done

