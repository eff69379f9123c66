import os

# Tests never touch the network or the project's own cache.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("RHF_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "rhf-cache"))
