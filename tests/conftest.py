from __future__ import annotations

import contextlib

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


# -- a real PostgreSQL server from pip (pgserver), for the ledger's PostgreSQL path -----
@pytest.fixture(scope="module")
def postgres_url(tmp_path_factory):
    pgserver = pytest.importorskip("pgserver")
    server = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="stop")
    yield server.get_uri()
    server.cleanup()


# -- the gateway tests' fake upstream and gateway (tests/gateway_harness.py) ----------
@pytest.fixture
def start_upstream():
    with contextlib.ExitStack() as stack:
        from fake_upstream import Behaviour, ServerThread
        from fake_upstream import create_app as fake_app
        from gateway_harness import Fake

        def start(**behaviour) -> Fake:
            b = Behaviour(**behaviour)
            return Fake(b, stack.enter_context(ServerThread(fake_app(b))).url)

        yield start


@pytest.fixture
def start_gateway(tmp_path):
    with contextlib.ExitStack() as stack:
        from fake_upstream import ServerThread
        from gateway_harness import Gateway
        from tokenomy.serve.app import GatewayState, Upstream, create_app
        from tokenomy.serve.config import GatewayConfig

        def start(*deployments: dict, db_url: str | None = None, **config) -> Gateway:
            cfg = GatewayConfig.model_validate({
                "model_list": list(deployments),
                "database_url": db_url or f"sqlite:///{tmp_path / 'usage.db'}", **config})
            upstreams = {d.id: Upstream(d, d.params.api_base, d.params.model)
                         for d in cfg.model_list}
            state = GatewayState(cfg, upstreams)
            return Gateway(stack.enter_context(ServerThread(create_app(state))).url, state)

        yield start


@pytest.fixture
def upstream(start_upstream):
    return start_upstream()


@pytest.fixture
def gateway(start_gateway, upstream):
    from gateway_harness import deployment

    return start_gateway(deployment("m", upstream.url))
