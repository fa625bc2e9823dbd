"""The request path's SQLite ledger steps (tokenomy.serve.ledger_fast): usage ids."""

from __future__ import annotations

import uuid

from tokenomy.serve.ledger_fast import new_usage_id


def test_usage_ids_are_uuid4_hex_and_distinct():
    ids = [new_usage_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for value in ids:
        parsed = uuid.UUID(hex=value)
        assert (parsed.version, parsed.variant, parsed.hex) == (4, uuid.RFC_4122, value)
