"""The gateway's upkeep beside the requests: recovering what dead gateways left in flight,
renewing this gateway's lease, and checkpointing a SQLite ledger's WAL."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from typing import TYPE_CHECKING

from tokenomy.serve.ledger_fast import CHECKPOINT_EVERY_S

if TYPE_CHECKING:
    from tokenomy.serve.app import GatewayState

log = logging.getLogger("tokenomy.serve")


async def recover(state: GatewayState) -> None:
    """Release what dead gateways (this one's predecessor, a replica) left in flight."""
    recovered = await state.db(state.ledger.recover, lease_s=state.config.general.lease_s,
                               legacy_older_than_s=_max_request_s(state))
    if recovered:
        log.warning("marked %d requests left in flight by a gateway that died as "
                    "interrupted; their reservations are released", recovered)


async def keep_lease(state: GatewayState) -> None:
    """Renew this gateway's lease, and recover replicas whose lease ran out, until
    cancelled. A database hiccup is logged and retried at the next beat."""
    import sqlalchemy as sa

    while True:
        await asyncio.sleep(state.config.general.lease_s / 3)
        try:
            await state.db(state.ledger.heartbeat)
            await recover(state)
        except sa.exc.SQLAlchemyError as exc:
            log.warning("could not renew the gateway's lease: %s", str(exc).splitlines()[0])


async def checkpoint_wal(state: GatewayState) -> None:
    """Copy the SQLite ledger's WAL into its file every second, in a worker thread: the
    event loop's own connection never checkpoints (a checkpoint fsyncs)."""
    while True:
        await asyncio.sleep(CHECKPOINT_EVERY_S)
        try:
            await state.db(state.requests.checkpoint)
        except sqlite3.Error as exc:
            log.warning("could not checkpoint the ledger's WAL: %s", exc)


def _max_request_s(state: GatewayState) -> float:
    """A request older than this cannot still be running in any gateway."""
    longest = max(d.params.timeout_s * (d.params.max_retries + 1)
                  for d in state.config.model_list)
    return 2 * longest * max(1, len(state.config.model_list))
