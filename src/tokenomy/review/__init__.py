"""Where the money goes: the ledger read as a bill (the allocation basis) and as ranked
savings (`tokenomy review`). Reads the gateway's ledger; the gateway never imports it."""

from tokenomy.review.allocation import Allocation, allocate
from tokenomy.review.data import LedgerData, parse_duration, read_ledger

__all__ = ["Allocation", "LedgerData", "allocate", "parse_duration", "read_ledger"]
