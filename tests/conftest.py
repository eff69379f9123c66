import os

# Tests never touch the network or the project's own cache.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
# Module- and session-scoped fixtures run before the function-scoped one below: isolate them too.
if not os.environ.get("RHF_TEST_CACHE"):
    import tempfile

    os.environ["RHF_TEST_CACHE"] = tempfile.mkdtemp(prefix="rhf-test-cache-")
os.environ["RHF_CACHE_DIR"] = os.environ["RHF_TEST_CACHE"]
# One torch thread per test process (and, through the environment, per streamlit server and CLI the tests
# start), unless the caller chose: the tests' models are tiny, and threads that wait for a preempted peer at
# every op are what a shared or oversubscribed machine (`-n 2` on 2 cores: 4 threads) makes of the default of
# one thread a core. Measured 2026-12-03 on 2 loaded cores: a tiny-pipeline fine-tune step took 6.5-9.6 s
# with 2 threads and 0.56 s with 1. numpy's BLAS likewise (a 20K × 512 PCA: 1.3-3.2 s on 2 threads, 0.2-0.3 s
# on one, commit 85bfd3e).
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("RHF_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "rhf-cache"))


def pytest_collection_modifyitems(items):
    # Real-browser tests (tests/test_browser*.py: a streamlit server and Chromium each) carry the
    # `browser` marker, so `pytest -m "not browser"` is the quick run while editing.
    for item in items:
        if item.module.__name__.rsplit(".", 1)[-1].startswith("test_browser"):
            item.add_marker(pytest.mark.browser)


# --- real-browser tests (tests/test_browser*.py) ------------------------------------------------------
# One app server on the default settings and one Chromium per test process, shared by the browser test
# modules that need nothing else (each module opens its own page): a module-scoped server per module
# started up to eight of each under `-n 2`, since xdist spreads a module's tests over both workers.

@pytest.fixture(scope="session")
def app_server(tmp_path_factory):
    from tests.browser_support import streamlit_server

    yield from streamlit_server(tmp_path_factory)


@pytest.fixture(scope="session")
def chromium_browser():
    from tests.browser_support import chromium

    yield from chromium()
