"""The allocation cost basis: what self-hosted deployments cost as a bill, not per token.

A self-hosted deployment is billed its $/hour for the wall time it ran: the gateway
instances recorded in the ledger (started_at .. stopped_at; for one still running,
its last heartbeat or the end of its last request, whichever is later), clipped to the
window. An engine the gateway starts (llama.cpp, OpenVINO, vLLM) runs once per gateway
instance, so overlapping instances each pay; a
server the gateway only points at (engine openai with usd_per_hour) is one machine,
billed over the union of the instances' runs.

The bill is split into busy time, the union of its requests' intervals (started_at ..
finished_at), and idle time. Each contiguous busy period's cost goes to the requests in
it, in proportion to their metered (usage-basis) cost, or equally when none has one;
idle is its own line. So allocated + idle = $/hour x hours run, for every deployment.
API deployments (per-token list prices) have no bill beyond their usage: their
requests keep their metered cost.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass, field

from tokenomy.errors import InvalidInputError
from tokenomy.review.data import LedgerData, Window
from tokenomy.serve.config import GatewayConfig

MANAGED_ENGINES = {"llamacpp", "openvino", "vllm"}  # one engine per gateway instance


@dataclass(frozen=True)
class SelfHostedBill:
    deployment: str
    engine: str
    usd_per_hour: float
    hours_run: float
    busy_hours: float
    requests: int
    bill_usd: float  # usd_per_hour x hours_run
    allocated_usd: float  # the busy share, spread over the requests
    idle_usd: float  # bill - allocated
    usage_usd: float  # the same requests' metered cost (usage basis)
    runs: int  # machines billed (gateway instances, or merged runs of one server)

    @property
    def utilization(self) -> float:
        return self.busy_hours / self.hours_run if self.hours_run > 0 else 0.0


@dataclass(frozen=True)
class ApiLine:
    deployment: str
    requests: int
    usage_usd: float


@dataclass
class Allocation:
    window: Window
    self_hosted: list[SelfHostedBill]
    api: list[ApiLine]
    per_request: dict[str, float]  # usage id -> $ on the allocation basis
    notes: list[str] = field(default_factory=list)

    @property
    def idle_usd(self) -> float:
        return sum(b.idle_usd for b in self.self_hosted)

    @property
    def total_usd(self) -> float:
        return sum(self.per_request.values()) + self.idle_usd

    def to_dict(self) -> dict:
        return {"window": {"since": self.window.since, "until": self.window.until},
                "self_hosted": [dict(b.__dict__, utilization=b.utilization)
                                for b in self.self_hosted],
                "api": [a.__dict__ for a in self.api], "idle_usd": self.idle_usd,
                "total_usd": self.total_usd, "notes": self.notes}


def allocate(data: LedgerData, config: GatewayConfig) -> Allocation:
    """The allocation basis of the window's ledger under `config`'s prices."""
    window = data.window
    per_request = {r["id"]: float(r["cost_usd"] or 0.0) for r in data.rows}
    deployments = {d.id: d for d in config.model_list}
    bills, api, notes = [], [], []
    runs = _runs(data)
    for d in config.model_list:
        rows = [r for r in data.rows if r["deployment"] == d.id and not r.get("cache")]
        rate = d.priced().usd_per_hour
        if rate is None:
            api.append(ApiLine(d.id, len(rows), sum(per_request[r["id"]] for r in rows)))
            continue
        bill, outside = _bill(d.id, d.params.engine, rate, rows, runs, window, per_request)
        bills.append(bill)
        if outside:
            notes.append(f"{outside} request(s) on {d.id} fall outside every recorded "
                         "gateway run (a ledger from before runs were recorded): kept at "
                         "their metered cost")
    unknown = sorted({r["deployment"] for r in data.rows
                      if r["deployment"] and r["deployment"] not in deployments})
    if unknown:
        notes.append(f"deployment(s) {', '.join(unknown)} are not in this gateway config: "
                     "their requests keep their metered cost (pass the config that served "
                     "them with --config)")
    if not data.instances and bills:
        notes.append("no gateway runs recorded in the window: self-hosted bills are $0")
    return Allocation(window, bills, api, per_request, notes)


def _bill(dep: str, engine: str, rate: float, rows: list[dict],
          runs: list[tuple[str, float, float]],
          window: Window, per_request: dict[str, float]) -> tuple[SelfHostedBill, int]:
    machines = _machines(runs, window, separate=engine in MANAGED_ENGINES)
    usd_per_s = rate / 3600.0
    members: dict[int, list[tuple[float, float, dict]]] = {i: [] for i in range(len(machines))}
    outside = 0
    for r in rows:
        i = _machine_of(r, machines)
        if i is None:
            outside += 1
            continue
        _, a, b = machines[i]
        end = r["finished_at"] if r["finished_at"] is not None else b
        start, stop = max(r["started_at"], a), min(end, b)
        if stop > start:
            members[i].append((start, stop, r))
        else:
            per_request[r["id"]] = 0.0  # no engine time in the window
    busy = 0.0
    for group in members.values():
        for start, stop, cluster in _clusters(group):
            busy += stop - start
            _spread(usd_per_s * (stop - start), cluster, per_request)
    run_s = sum(b - a for _, a, b in machines)
    bill_usd = usd_per_s * run_s
    allocated = usd_per_s * busy
    return SelfHostedBill(
        deployment=dep, engine=engine, usd_per_hour=rate, hours_run=run_s / 3600.0,
        busy_hours=busy / 3600.0, requests=len(rows), bill_usd=bill_usd,
        allocated_usd=allocated, idle_usd=bill_usd - allocated,
        usage_usd=sum(float(r["cost_usd"] or 0.0) for r in rows), runs=len(machines)), outside


def _runs(data: LedgerData) -> list[tuple[str, float, float]]:
    """(instance id, start, end) of each gateway run; one still running ends at its last
    heartbeat or its last request's end, whichever is later."""
    last: dict[str, float] = {}
    for r in data.rows:
        if r.get("instance"):
            seen = r["finished_at"] if r["finished_at"] is not None else r["started_at"]
            last[r["instance"]] = max(last.get(r["instance"], seen), seen)
    out = []
    for run in data.instances:
        end = run["stopped_at"]
        if end is None:
            end = max(run["heartbeat_at"], last.get(run["id"], run["heartbeat_at"]))
        out.append((run["id"], run["started_at"], end))
    return out


def _machines(runs: list[tuple[str, float, float]], window: Window, *, separate: bool
              ) -> list[tuple[str | None, float, float]]:
    """(instance id or None, start, end) of each machine billed, clipped to the window."""
    spans = []
    for instance, start, end in runs:
        a, b = window.clip(start, end)
        if b > a:
            spans.append((instance, a, b))
    if separate:
        return spans
    return [(None, a, b) for a, b in _union([(a, b) for _, a, b in spans])]


def _machine_of(row: dict, machines: list[tuple[str | None, float, float]]) -> int | None:
    """The machine that served a request: its gateway instance, else the run it started
    in."""
    for i, (instance, _, _) in enumerate(machines):
        if instance is not None and instance == row.get("instance"):
            return i
    for i, (_, a, b) in enumerate(machines):
        if a <= row["started_at"] <= b:
            return i
    return None


def _union(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[list[float]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def _clusters(items: list[tuple[float, float, dict]]
              ) -> list[tuple[float, float, list[dict]]]:
    """Contiguous busy periods: overlapping request intervals merged, with their rows."""
    out: list[tuple[float, float, list[dict]]] = []
    for a, b, row in sorted(items, key=lambda t: (t[0], t[1])):
        if out and a <= out[-1][1]:
            start, stop, rows = out[-1]
            out[-1] = (start, max(stop, b), [*rows, row])
        else:
            out.append((a, b, [row]))
    return out


def _spread(usd: float, rows: list[dict], per_request: dict[str, float]) -> None:
    weights = [max(float(r["cost_usd"] or 0.0), 0.0) for r in rows]
    total = sum(weights)
    for r, w in zip(rows, weights, strict=True):
        per_request[r["id"]] = usd * (w / total if total > 0 else 1.0 / len(rows))


# -- grouping (tokenomy usage --basis allocation --by ...) ----------------------------
GROUPS = ("key", "model", "day", "status", "user", "feature", "tag:NAME")
_COLUMN = {"user": "end_user", "feature": "feature"}


def grouper(by: str, data: LedgerData) -> Callable[[dict], str]:
    """The group of a usage row for `by` (key, model, day, status, user, feature, or
    tag:NAME: the values of the row's `NAME:value` tags)."""
    if by == "key":
        return lambda r: r["key_id"]
    if by == "model":
        return lambda r: r["deployment"] or r["model"]
    if by == "day":
        return lambda r: dt.datetime.fromtimestamp(r["started_at"], dt.UTC).date().isoformat()
    if by == "status":
        return lambda r: r["status"]
    column = _COLUMN.get(by) or ("tags" if by.startswith("tag:") and by[4:] else None)
    if column is None:
        raise InvalidInputError(f"cannot group by {by!r}: use {', '.join(GROUPS)}")
    if not data.has(column):
        raise InvalidInputError(f"this ledger has no {column} column (written by a gateway "
                                f"older than attribution): cannot group by {by}")
    if column != "tags":
        return lambda r: r[column] or "(none)"
    prefix = by[4:] + ":"

    def tag(r: dict) -> str:
        values = [t[len(prefix):] for t in _tags(r["tags"]) if t.startswith(prefix)]
        return ",".join(sorted(values)) or "(none)"
    return tag


def _tags(value) -> list[str]:
    if isinstance(value, list):
        return [str(t) for t in value]
    try:
        parsed = json.loads(value) if value else []
    except ValueError:
        return []
    return [str(t) for t in parsed] if isinstance(parsed, list) else []


def by_group(data: LedgerData, alloc: Allocation, by: str) -> list[dict]:
    """Spend per group on the allocation basis, then one idle line per self-hosted
    deployment; the lines sum to the total bill."""
    key = grouper(by, data)
    groups: dict[str, dict] = {}
    for r in data.rows:
        g = groups.setdefault(str(key(r)), {"group": str(key(r)), "requests": 0,
                                            "usage_usd": 0.0, "allocated_usd": 0.0})
        g["requests"] += 1
        g["usage_usd"] += float(r["cost_usd"] or 0.0)
        g["allocated_usd"] += alloc.per_request.get(r["id"], 0.0)
    out = [groups[g] for g in sorted(groups)]
    out += [{"group": f"idle: {b.deployment}", "requests": 0, "usage_usd": 0.0,
             "allocated_usd": b.idle_usd} for b in alloc.self_hosted]
    return out


__all__ = ["Allocation", "ApiLine", "SelfHostedBill", "allocate", "by_group", "grouper"]
