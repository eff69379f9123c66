"""What the real-browser tests share: a `streamlit run app.py` on a free port and a headless Debian
Chromium driven by Playwright (tests/test_browser*.py). Screenshots go to tests/artifacts/ (git-ignored)."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Flags for a closed network: no background connections, no sandbox (CI runs as root).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def streamlit_server(tmp_path_factory, env: dict | None = None, requires: tuple[str, ...] = ()):
    """Generator for a module fixture: start the app with `env` added to a fresh cache and offline hub,
    yield its URL, stop it. Skips without Chromium, Playwright or a module in `requires`."""
    if not Path(CHROMIUM).exists():
        pytest.skip("no Chromium at /usr/bin/chromium: install Debian's chromium (.ci/run does with apt)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (requirements-dev.txt)")
    for module in requires:
        pytest.importorskip(module, reason=f"{module} is not installed (requirements.txt)")
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "streamlit.log"
    full_env = dict(os.environ, RHF_CACHE_DIR=str(tmp_path_factory.mktemp("cache")), HF_HUB_OFFLINE="1")
    full_env.pop("RHF_SHARED", None)  # shared mode only where a test asks for it
    full_env.update(env or {})
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
             "--server.address", "127.0.0.1", "--server.headless", "true"],
            cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT,
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


def browser_page(height: int = 1400):
    """Generator for a module fixture: one Chromium page, 1500 × `height`, with long timeouts."""
    from playwright.sync_api import expect, sync_playwright

    # Assertions wait for the app, which is slow on a loaded machine; 5 s (the default) is too little.
    expect.set_options(timeout=60_000)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        pg = browser.new_page(viewport={"width": 1500, "height": height})
        pg.set_default_timeout(90_000)
        yield pg
        browser.close()


def settled(pg, quiet: float = 1.5, timeout: float = 120) -> None:
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
