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


class RunTracker:
    """Streamlit's own protocol, read off the page's websocket: the browser asks for a run with a
    `rerun_script` BackMsg; the server answers `new_session` when a run starts and `script_finished`
    when it ends (also when it is cut short for the next one). Frames are numbered in the order the
    browser saw them, sent and received alike."""

    def __init__(self):
        self.seq = 0
        self.last = {"rerun_script": 0, "new_session": 0, "script_finished": 0}
        self.last_frame_at = time.monotonic()

    def _note(self, payload, message_type) -> None:
        self.seq += 1
        self.last_frame_at = time.monotonic()
        if not isinstance(payload, bytes):
            return
        msg = message_type()
        try:
            msg.ParseFromString(payload)
        except Exception:  # noqa: BLE001 - not a Streamlit message (no other sockets on the page)
            return
        kind = msg.WhichOneof("type")
        if kind in self.last:
            self.last[kind] = self.seq

    def attach(self, pg) -> None:
        from streamlit.proto.BackMsg_pb2 import BackMsg
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        def on_socket(ws):
            ws.on("framesent", lambda payload: self._note(payload, BackMsg))
            ws.on("framereceived", lambda payload: self._note(payload, ForwardMsg))

        pg.on("websocket", on_socket)

    def idle(self) -> bool:
        """The last run the browser asked for has started and finished, and none is running."""
        finished = self.last["script_finished"]
        return finished > self.last["rerun_script"] and finished > self.last["new_session"]


TRACKERS: dict[int, RunTracker] = {}


def chromium():
    """Generator for a session fixture: Playwright and one headless Chromium for every browser test of
    a test process (launching one costs ~1-2 s of CPU)."""
    from playwright.sync_api import expect, sync_playwright

    # Assertions wait for the app, which is slow on a loaded machine; 5 s (the default) is too little.
    expect.set_options(timeout=60_000)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def browser_page(browser, height: int = 1400):
    """Generator for a module fixture: a page of `browser`, 1500 × `height`, in its own context (no
    cookies or storage from another module), with long timeouts and a RunTracker on its websocket."""
    context = browser.new_context(viewport={"width": 1500, "height": height})
    pg = context.new_page()
    pg.set_default_timeout(90_000)
    TRACKERS[id(pg)] = tracker = RunTracker()
    tracker.attach(pg)
    yield pg
    TRACKERS.pop(id(pg), None)
    context.close()


def settled(pg, quiet: float = 0.5, timeout: float = 120) -> None:
    """Wait until the last run the browser asked for has finished (RunTracker), nothing on the page is
    stale or still loading, and no websocket frame has moved for `quiet` seconds since this call: a
    widget that sends its value a moment after the action (a debounced slider, a component in an
    iframe) is still waited for. Without a tracker (a page not made by browser_page) only the page is
    watched."""
    pg.wait_for_selector("[data-testid='stApp']")
    tracker = TRACKERS.get(id(pg))
    # stSkeleton: an element whose code (a lazily loaded chunk) has not arrived yet, so, for one, a
    # button's key shortcut is not bound yet (a first key press was lost on a loaded machine).
    busy = ("document.querySelector(\"[data-testid='stStatusWidget'], [data-testid='stSkeleton']\") !== null"
            " || document.querySelectorAll('[data-stale=\"true\"]').length > 0")
    start = time.monotonic()
    deadline = start + timeout
    calm_since = None
    while time.monotonic() < deadline:
        # evaluate() also lets Playwright deliver the websocket events queued since the last call.
        if pg.evaluate(busy) or (tracker is not None and not tracker.idle()):
            calm_since = None
        elif calm_since is None:
            calm_since = time.monotonic()
        elif time.monotonic() - max(calm_since, tracker.last_frame_at if tracker else start) >= quiet:
            return
        pg.wait_for_timeout(50)
    raise AssertionError(f"the page did not settle within {timeout} s")
