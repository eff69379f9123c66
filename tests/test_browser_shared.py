"""Shared-server mode end to end in a real browser: `RHF_SHARED=1 streamlit run app.py` with data and
export roots set in the environment, on a free port, driven by Debian Chromium through Playwright.
A path outside the data roots typed into the sidebar is refused, and so is an export outside the
export root (nothing is written). Screenshots go to tests/artifacts/ (git-ignored)."""

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from rhf_core.data import export, open_dataset

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Flags for a closed network: no background connections, no sandbox (CI runs as root).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SPEC = "shapes:n=300,seed=1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    if not Path(CHROMIUM).exists():
        pytest.skip("no Chromium at /usr/bin/chromium: install Debian's chromium (.ci/run does with apt)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (requirements-dev.txt)")
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "streamlit.log"
    env = dict(os.environ, RHF_CACHE_DIR=str(tmp_path_factory.mktemp("cache")), HF_HUB_OFFLINE="1",
               RHF_SHARED="1", RHF_DATA_ROOTS=str(tree / "data"), RHF_MODEL_ROOTS=str(tree / "models"),
               RHF_EXPORT_ROOT=str(tree / "exports"))
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
             "--server.address", "127.0.0.1", "--server.headless", "true"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"streamlit did not come up:\n{log.read_text()[-2000:]}")
        time.sleep(0.5)
    yield url
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import expect, sync_playwright

    # Assertions wait for the app, which is slow on a loaded machine; 5 s (the default) is too little.
    expect.set_options(timeout=60_000)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        pg = browser.new_page(viewport={"width": 1500, "height": 1100})
        pg.set_default_timeout(90_000)
        yield pg
        browser.close()


def _settled(pg, quiet: float = 1.5, timeout: float = 120) -> None:
    """Wait until no script run is in progress and nothing on the page is stale, continuously for
    `quiet` seconds: a run that starts late (a loaded CI machine) is not mistaken for a finished one."""
    pg.wait_for_selector("[data-testid='stApp']")
    busy = ("document.querySelector(\"[data-testid='stStatusWidget']\") !== null"
            " || document.querySelectorAll('[data-stale=\"true\"]').length > 0")
    deadline = time.time() + timeout
    calm_since = None
    while time.time() < deadline:
        if pg.evaluate(busy):
            calm_since = None
        elif calm_since is None:
            calm_since = time.time()
        elif time.time() - calm_since >= quiet:
            return
        time.sleep(0.1)
    raise AssertionError(f"the page did not settle within {timeout} s")


def _type(pg, label: str, text: str) -> None:
    box = pg.get_by_label(label, exact=True)
    box.fill(text)
    box.press("Enter")
    box.blur()
    _settled(pg)


def test_shared_server_refuses_a_dataset_path_outside_the_roots(server, page, tree):
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(exist_ok=True)
    page.goto(f"{server}/explorer?ds={SPEC}")
    _settled(page)
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
    _settled(page)
    label = "New folder in this server's export folder"
    expect(page.get_by_label(label, exact=True)).to_be_visible()
    assert page.get_by_text("Overwrite", exact=True).count() == 0  # never offered on a shared server

    target = tree / "outside" / "stolen"
    _type(page, label, str(target))
    page.get_by_role("button", name="Export to folder").click()
    _settled(page)
    expect(page.get_by_text(re.compile("Export refused: this path is outside the server's export folder"))).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "shared-refused-export.png"))
    assert str(tree) not in page.locator("[data-testid='stMain']").inner_text()
    assert not target.exists() and sorted(p.name for p in (tree / "outside").iterdir()) == ["secret"]
    assert not any((tree / "exports").iterdir())  # nothing written anywhere

    _type(page, label, "mine")
    page.get_by_role("button", name="Export to folder").click()
    _settled(page)
    expect(page.get_by_text(re.compile(r"Wrote \d+ records to mine in the server's export folder"))).to_be_visible()
    assert (tree / "exports" / "mine" / "labels.jsonl").is_file()
    assert page.get_by_text(re.compile(r"Exporting \d")).count() == 0  # the bar is gone once done

