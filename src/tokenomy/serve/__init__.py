"""`tokenomy serve`: an OpenAI-compatible gateway that routes, caches and meters every
request in front of engines it starts (llama.cpp, vLLM) or URLs it is given."""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import signal
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tokenomy.serve.config import GatewayConfig

log = logging.getLogger("tokenomy.serve")


def routing(config: GatewayConfig) -> tuple[object | None, object | None]:
    """(embedder, `model: auto` router) as the config asks for them, either None. Loaded
    before any engine starts, so a bad calibration file fails in a second, not after."""
    calibration = None
    if config.router.calibration is not None:
        from tokenomy.serve.router import Calibration

        calibration = Calibration.load(config.router.calibration)
    if not config.cache.semantic and calibration is None:
        return None, None
    from tokenomy.serve.embed import Embedder

    embedder = Embedder()
    if calibration is None:
        return embedder, None
    from tokenomy.serve.router import Router

    return embedder, Router(calibration, embedder, config.router)


@contextlib.contextmanager
def running_engines(config: GatewayConfig, progress: Callable[[str], None] | None = None
                    ) -> Iterator[dict]:
    """Start every engine the config needs, yield {deployment id: Upstream}, stop them."""
    from tokenomy.serve.app import Upstream
    from tokenomy.serve.engines import Engines

    engines = Engines(config.model_list)
    engines.start(progress)
    try:
        yield {i: Upstream(e.deployment, e.base_url, e.model_id, e.auth_headers())
               for i, e in engines.by_id.items()}
    finally:
        engines.stop()


def serve(config: GatewayConfig, host: str | None = None, port: int | None = None,
          progress: Callable[[str], None] | None = None) -> None:
    """Start the engines, run the gateway until SIGINT/SIGTERM (draining in-flight
    requests), then stop the engines."""
    import uvicorn

    from tokenomy.serve.app import GatewayState, create_app
    from tokenomy.serve.wire import HttpProtocol

    if config.cache.redis_url:  # unreachable: fail before the engines start
        from tokenomy.serve.cache import check_redis

        check_redis(config.cache.redis_url)
    embedder, router = routing(config)
    with running_engines(config, progress) as upstreams:
        app = create_app(GatewayState(config, upstreams, router=router, embedder=embedder))
        gc.freeze()  # what start-up made lives on: full collections no longer walk it
        with _exit_after_drain():
            uvicorn.run(app, host=host or config.general.host,
                        port=port or config.general.port,
                        timeout_graceful_shutdown=math.ceil(config.general.drain_timeout_s),
                        log_level="warning", access_log=False, http=HttpProtocol)


@contextlib.contextmanager
def _exit_after_drain() -> Iterator[None]:
    """uvicorn drains on SIGINT/SIGTERM, then re-raises the signal to the handler it found
    installed; by default that kills the process (exit -15) before the engines are stopped.
    A no-op handler there lets serve() return: engines stopped, exit 0."""
    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in handled}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


__all__ = ["routing", "running_engines", "serve"]
