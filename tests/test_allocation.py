"""The allocation basis: for each self-hosted deployment, allocated + idle = $/hour x
hours run, on hand-made ledger rows (numbers worked by hand) and on a live gateway."""

from __future__ import annotations

import contextlib
import json
import time

import pytest
from click.testing import CliRunner

from tokenomy.review import allocate, read_ledger
from tokenomy.review.allocation import by_group
from tokenomy.serve.config import GatewayConfig
from tokenomy.serve.ledger import Ledger, instances, usage

T0 = 1_700_000_000.0
RATE = 3.6  # $/hour: $0.001 a second


def _config(local_engine: str = "llamacpp") -> GatewayConfig:
    return GatewayConfig.model_validate(_config_dict(local_engine))


def _config_dict(local_engine: str = "llamacpp") -> dict:
    local = {"model_name": "local", "params": {"engine": local_engine},
             "model_info": {"usd_per_hour": RATE}}
    if local_engine == "openai":
        local["params"].update(model="m", api_base="http://127.0.0.1:9/v1")
    return {"model_list": [
        local,
        {"model_name": "api", "params": {"engine": "openai", "model": "gpt",
                                         "api_base": "http://127.0.0.1:9/v1"},
         "model_info": {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}},
    ]}


def _row(id_, dep, start, end, cost, instance="gw1", **fields) -> dict:
    return {"id": id_, "key_id": fields.pop("key_id", "anonymous"), "endpoint": "chat",
            "model": dep, "deployment": dep, "status": fields.pop("status", "ok"),
            "stream": False, "started_at": start, "finished_at": end,
            "latency_s": None if end is None else end - start, "prompt_tokens": 10,
            "completion_tokens": 5, "cached_tokens": 0, "reserved_usd": 0.0,
            "cost_usd": cost, "instance": instance, "cache": None, **fields}


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'usage.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
        reset = Ledger(url)
        from tokenomy.serve.ledger import metadata

        metadata.drop_all(reset.engine)  # a fresh ledger per test on the shared server
        reset.close()
    ledger = Ledger(url)
    with ledger.engine.begin() as conn:
        conn.execute(instances.insert(), [
            {"id": "gw1", "host": "h", "pid": 1, "started_at": T0, "heartbeat_at": T0 + 3590,
             "stopped_at": T0 + 3600},  # one hour, stopped
            {"id": "gw2", "host": "h", "pid": 2, "started_at": T0 + 1800,
             "heartbeat_at": T0 + 5400, "stopped_at": None},  # still running: 1 h so far
        ])
        conn.execute(usage.insert(), [
            _row("r1", "local", T0 + 10, T0 + 20, 0.01),
            _row("r2", "local", T0 + 15, T0 + 30, 0.03, key_id="k2"),  # overlaps r1
            _row("r3", "local", T0 + 2000, T0 + 2010, 0.0, instance="gw2"),
            _row("r4", "api", T0 + 40, T0 + 41, 0.002),
            _row("r5", "local", T0 + 50, T0 + 60, 0.0, cache="exact"),  # no engine time
        ])
    ledger.close()
    return url


def test_hand_made_rows_sum_to_the_bill(ledger_url):
    data = read_ledger(ledger_url, until=T0 + 7200)
    alloc = allocate(data, _config())
    (bill,) = alloc.self_hosted
    # llama.cpp runs once per gateway: gw1 1 h + gw2 1 h = 2 h at $3.6/h
    assert bill.hours_run == pytest.approx(2.0)
    assert bill.bill_usd == pytest.approx(7.2)
    # busy: r1..r2 merged (T0+10..T0+30, 20 s) + r3 (10 s) = 30 s -> $0.03
    assert bill.busy_hours * 3600 == pytest.approx(30.0)
    assert bill.allocated_usd == pytest.approx(0.03)
    assert round(bill.allocated_usd + bill.idle_usd, 2) == round(RATE * bill.hours_run, 2)
    # the 20 s cluster ($0.02) split by metered cost 0.01 : 0.03; r3 alone takes its 10 s
    assert alloc.per_request["r1"] == pytest.approx(0.005)
    assert alloc.per_request["r2"] == pytest.approx(0.015)
    assert alloc.per_request["r3"] == pytest.approx(0.01)
    assert alloc.per_request["r5"] == 0.0
    assert alloc.per_request["r4"] == pytest.approx(0.002)  # API: usage basis
    assert [a.usage_usd for a in alloc.api] == [pytest.approx(0.002)]
    assert alloc.total_usd == pytest.approx(7.2 + 0.002)


def test_window_clips_runs_and_requests(ledger_url):
    data = read_ledger(ledger_url, since_s=3600, until=T0 + 2700)  # T0-900 .. T0+2700
    (bill,) = allocate(data, _config()).self_hosted
    assert bill.hours_run == pytest.approx((2700 + 900) / 3600)  # gw1 2700 s + gw2 900 s
    assert round(bill.allocated_usd + bill.idle_usd, 2) == round(RATE * bill.hours_run, 2)


def test_a_server_outside_the_gateway_is_one_machine(ledger_url):
    data = read_ledger(ledger_url, until=T0 + 7200)
    (bill,) = allocate(data, _config("openai")).self_hosted
    assert bill.runs == 1 and bill.hours_run == pytest.approx(1.5)  # union T0..T0+5400
    assert round(bill.allocated_usd + bill.idle_usd, 2) == round(RATE * 1.5, 2)


@pytest.mark.parametrize("by", ["key", "model", "day", "status"])
def test_groups_sum_to_the_total(ledger_url, by):
    data = read_ledger(ledger_url, until=T0 + 7200)
    alloc = allocate(data, _config())
    groups = by_group(data, alloc, by)
    assert sum(g["allocated_usd"] for g in groups) == pytest.approx(alloc.total_usd)
    assert any(g["group"] == "idle: local" for g in groups)


def test_cli_usage_basis_allocation(ledger_url, tmp_path):
    from tokenomy.cli import commands

    path = tmp_path / "gw.yaml"
    path.write_text(json.dumps(_config_dict()))  # JSON is YAML
    result = CliRunner().invoke(commands(), ["usage", "--basis", "allocation", "--db",
                                             ledger_url, "--config", str(path), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    (bill,) = out["self_hosted"]
    assert bill["deployment"] == "local" and bill["runs"] == 2
    assert sum(g["allocated_usd"] for g in out["groups"]) == pytest.approx(out["total_usd"])
    table = CliRunner().invoke(commands(), ["usage", "--basis", "allocation", "--db",
                                            ledger_url, "--config", str(path)])
    assert table.exit_code == 0 and "idle: local" in table.output, table.output


def test_live_gateway_sums_to_the_bill(start_upstream, tmp_path):
    """Requests through a real gateway on 127.0.0.1 against a priced self-hosted server
    (a loopback upstream billed by the hour); the gateway stopped, its run is closed."""
    from fake_upstream import ServerThread
    from gateway_harness import Gateway, chat
    from tokenomy.serve.app import GatewayState, Upstream, create_app

    fake = start_upstream(token_delay_s=0.01)
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"hardware": "test", "runs": [
        {"concurrency_observed": 1.0, "machine_s_per_1m_input": 100.0,
         "machine_s_per_1m_output": 5000.0}]}))
    url = f"sqlite:///{tmp_path / 'usage.db'}"
    cfg = GatewayConfig.model_validate({"model_list": [{
        "model_name": "m", "params": {"engine": "openai", "model": "fake",
                                      "api_base": fake.url + "/v1"},
        "model_info": {"usd_per_hour": RATE, "bench": str(bench)}}],
        "database_url": url, "cache": {"exact": False}})
    state = GatewayState(cfg, {d.id: Upstream(d, d.params.api_base, d.params.model)
                               for d in cfg.model_list})
    with contextlib.ExitStack() as stack:
        gw = Gateway(stack.enter_context(ServerThread(create_app(state))).url, state)
        client = gw.client()
        for i in range(6):
            client.chat.completions.create(**chat(f"question {i} " * 5, max_tokens=8))
        time.sleep(0.3)  # idle time the bill keeps
    data = read_ledger(url)
    alloc = allocate(data, cfg)
    (bill,) = alloc.self_hosted
    assert bill.requests == 6 and len(data.instances) == 1
    run = data.instances[0]
    assert run["stopped_at"] is not None
    hours = (run["stopped_at"] - run["started_at"]) / 3600
    assert bill.hours_run == pytest.approx(hours)
    assert 0 < bill.busy_hours < bill.hours_run and bill.idle_usd > 0
    assert round(bill.allocated_usd + bill.idle_usd, 2) == round(RATE * hours, 2)
    assert sum(alloc.per_request.values()) == pytest.approx(bill.allocated_usd)


@pytest.mark.parametrize("by,groups", [
    ("user", {"alice", "(none)"}), ("feature", {"search", "(none)"}),
    ("tag:team", {"ml", "(none)"})])
def test_attribution_groups_sum_to_the_bill(tmp_path, by, groups):
    url = f"sqlite:///{tmp_path / 'usage.db'}"
    ledger = Ledger(url)
    with ledger.engine.begin() as conn:
        conn.execute(instances.insert().values(id="gw1", host="h", pid=1, started_at=T0,
                                               heartbeat_at=T0 + 600, stopped_at=T0 + 600))
        conn.execute(usage.insert(), [
            _row("a", "local", T0 + 10, T0 + 20, 0.01, end_user="alice", feature="search",
                 tags='["feature:search", "team:ml"]'),
            _row("b", "local", T0 + 30, T0 + 40, 0.01, end_user=None, feature=None,
                 tags=None)])
    ledger.close()
    data = read_ledger(url, until=T0 + 600)
    alloc = allocate(data, _config())
    rows = by_group(data, alloc, by)
    assert {r["group"] for r in rows} == groups | {"idle: local"}
    assert sum(r["allocated_usd"] for r in rows) == pytest.approx(RATE / 6)  # 10 minutes
