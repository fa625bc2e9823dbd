from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Caches and user catalogs never leak between tests or from the developer's home."""
    from tokenomy.catalog import _cached

    monkeypatch.setenv("TOKENOMY_HOME", str(tmp_path / "tokenomy-home"))
    monkeypatch.delenv("TOKENOMY_CATALOG", raising=False)
    _cached.cache_clear()
    yield
    _cached.cache_clear()
