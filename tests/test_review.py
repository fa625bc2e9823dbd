"""`tokenomy review` on hand-made ledger rows (each finding's dollars worked by hand),
on a ledger older than the fingerprints (skipped with a note), through the CLI (table,
JSON, self-contained HTML, bad input)."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from tokenomy.review.run import review
from tokenomy.serve.config import GatewayConfig
from tokenomy.serve.ledger import Ledger, api_keys, instances, usage

T0 = 1_700_000_000.0
P_IN, P_OUT = 1e-6, 2e-6  # the API deployment's list prices
FINGERPRINTS = {"end_user": "VARCHAR(200)", "feature": "VARCHAR(100)", "tags": "TEXT",
                "prompt_hash": "VARCHAR(64)", "prefix_hash": "VARCHAR(64)",
                "prefix_chars": "INTEGER", "finish_reason": "VARCHAR(20)",
                "message_count": "INTEGER"}


def _config_dict(tmp_path) -> dict:
    bench = tmp_path / "bench.json"  # the self-hosted deployment's measured throughput
    bench.write_text(json.dumps({"hardware": "test", "runs": [{
        "concurrency_observed": 1.0, "machine_s_per_1m_input": 100.0,
        "machine_s_per_1m_output": 1000.0}]}))  # at $3.6/h: $1e-7 in, $1e-6 out a token
    return {"model_list": [
        {"model_name": "api", "params": {"engine": "openai", "model": "gpt",
                                         "api_base": "http://127.0.0.1:9/v1"},
         "model_info": {"input_cost_per_token": P_IN, "output_cost_per_token": P_OUT}},
        {"model_name": "local", "params": {"engine": "llamacpp"},
         "model_info": {"usd_per_hour": 3.6, "bench": str(bench)}}],
        "cache": {"exact": False}}


def _row(i: int, start: float, dep: str = "api", prompt: int = 1000, completion: int = 100,
         **fields) -> dict:
    row = {"id": f"r{i:02d}", "key_id": "anonymous", "endpoint": "chat", "model": dep,
           "deployment": dep, "status": "ok", "stream": False, "started_at": start,
           "finished_at": start + 1, "latency_s": 1.0, "prompt_tokens": prompt,
           "completion_tokens": completion, "cached_tokens": 0, "reserved_usd": 0.0,
           "cost_usd": prompt * P_IN + completion * P_OUT, "instance": "gw1", "cache": None,
           "route": None, "error": None, "prompt_hash": f"h{i}", "prefix_hash": None,
           "prefix_chars": None, "finish_reason": "stop", "message_count": 1}
    row.update(fields)
    return row


def _ledger(path, rows: list[dict], fingerprints: bool = True) -> str:
    url = f"sqlite:///{path}"
    ledger = Ledger(url)
    with ledger.engine.begin() as conn:
        have = {c["name"] for c in sa.inspect(conn).get_columns(usage.name)}
        for name, kind in FINGERPRINTS.items():  # as a gateway with fingerprints writes
            if fingerprints and name not in have:
                conn.execute(sa.text(f"ALTER TABLE {usage.name} ADD COLUMN {name} {kind}"))
            elif not fingerprints and name in have:
                conn.execute(sa.text(f"ALTER TABLE {usage.name} DROP COLUMN {name}"))
        table = sa.Table(usage.name, sa.MetaData(), autoload_with=conn)
        rows = [{k: v for k, v in r.items() if k in table.c} for r in rows]
        if rows:
            conn.execute(table.insert(), rows)
        conn.execute(instances.insert().values(id="gw1", host="h", pid=1, started_at=T0,
                                               heartbeat_at=T0 + 3600, stopped_at=T0 + 3600))
    ledger.close()
    return url


def _rows() -> list[dict]:
    rows = []
    # 3 distinct requests, each sent 3 times, one minute apart: 6 repeats the cache misses
    for i in range(9):
        rows.append(_row(i, T0 + 60 * i, prompt_hash=f"same{i % 3}"))
    # 4 requests sharing a 2000-character system prompt: 3 repeats of the prefix
    for i in range(9, 13):
        rows.append(_row(i, T0 + 60 * i, prefix_hash="sys", prefix_chars=2000))
    rows[12]["prompt_hash"] = "h11"  # an identical repeat: the cache's, not the prefix's
    rows.append(_row(13, T0 + 900, finish_reason="length", completion=500))
    rows.append(_row(14, T0 + 960, status="error", completion=50, error="upstream 500"))
    rows.append(_row(15, T0 + 1020, message_count=19))  # 9 of 19 messages kept
    return rows


@pytest.fixture
def config(tmp_path) -> GatewayConfig:
    return GatewayConfig.model_validate(_config_dict(tmp_path))


def test_findings_and_their_dollars(tmp_path, config):
    url = _ledger(tmp_path / "usage.db", _rows())
    r = review(url, config, until=T0 + 3600)
    found = {f.id: f for f in r.findings}
    one = 1000 * P_IN + 100 * P_OUT
    assert found["cache-repeats"].usd_window == pytest.approx(7 * one)
    assert found["cache-repeats"].evidence["repeats"] == 7
    assert found["cache-repeats"].basis == "measured"
    assert "exact: true" in found["cache-repeats"].change
    assert found["prefix-cache"].usd_window == pytest.approx(2 * 500 * P_IN)  # 2000 chars/4
    assert found["prefix-cache"].basis == "estimated"
    assert found["max-tokens"].usd_window == pytest.approx(1000 * P_IN + 500 * P_OUT)
    assert found["failed-spend"].usd_window == pytest.approx(1000 * P_IN + 50 * P_OUT)
    assert found["long-history"].usd_window == pytest.approx(1000 * (1 - 9 / 19) * P_IN)
    # the self-hosted deployment ran an hour with no request: its whole bill is idle
    assert found["idle-capacity"].usd_window == pytest.approx(3.6)
    # the ledger saw one hour: x720 to 30 days
    assert r.scale == pytest.approx(720)
    assert found["cache-repeats"].usd_month == pytest.approx(7 * one * 720)
    savings = [f.usd_month for f in r.findings if f.kind == "saving"]
    assert savings == sorted(savings, reverse=True)
    assert "extrapolated to 30 days" in r.conditions


def test_repeats_outside_the_ttl_or_overlapping_are_not_claimed(tmp_path, config):
    config.cache.ttl_s = 100
    rows = [_row(0, T0, prompt_hash="x"), _row(1, T0 + 0.5, prompt_hash="x"),  # in flight
            _row(2, T0 + 50, prompt_hash="x"), _row(3, T0 + 500, prompt_hash="x")]
    r = review(_ledger(tmp_path / "usage.db", rows), config, until=T0 + 3600)
    (f,) = [f for f in r.findings if f.id == "cache-repeats"]
    assert f.examples == ["r02"]  # r01 started before r00 finished; r03 after the TTL


def test_easy_traffic_served_by_the_dearer_deployment(tmp_path, config):
    easy = ("auto: predicted quality 1.00 >= tau 0.80 on local (difficulty 0.10; "
            "local 0.90, api 1.00)")
    hard = ("auto: predicted quality 1.00 >= tau 0.80 on api (difficulty 0.40; "
            "local 0.60, api 1.00)")
    rows = [_row(0, T0 + 10, route=easy),  # rated easy, yet served (a fallback) by api
            _row(1, T0 + 20, route=hard), _row(2, T0 + 30, dep="local", route=easy)]
    r = review(_ledger(tmp_path / "usage.db", rows), config, until=T0 + 3600)
    (f,) = [f for f in r.findings if f.id == "router"]
    # $0.0012 at the API's list prices against 1000 x 1e-7 + 100 x 1e-6 on local
    assert f.usd_window == pytest.approx(0.0012 - 0.0002)
    assert f.examples == ["r00"] and f.evidence["routed_requests"] == 3


def test_budget_that_runs_out_before_its_reset(tmp_path, config):
    url = _ledger(tmp_path / "usage.db", [_row(0, T0 + 10, key_id="k1", cost_usd=1.0)])
    with sa.create_engine(url).begin() as conn:
        conn.execute(api_keys.insert().values(
            id="k1", name="team", key_hash="x", created_at=T0, budget_usd=2.0, spent_usd=1.0,
            reserved_usd=0.0, window_start=0.0, window_count=0, revoked=False))
    r = review(url, config, until=T0 + 3600)
    (f,) = [f for f in r.findings if f.id == "budget-runout"]
    assert f.kind == "risk" and f.evidence["keys"]["k1"]["spend_rate_usd_per_hour"] == 1.0
    assert r.findings[-1] is f  # risks after the savings


@pytest.mark.parametrize("budget,at_risk", [(1.5, True), (2.0, False)])
def test_daily_budget_runs_out_only_if_before_midnight(tmp_path, config, budget, at_risk):
    """$1 spent today at $1/hour, reviewed at 23:13 UTC: a $1.5 budget runs out at 23:43,
    before the midnight reset; a $2 one would last until 00:13, after it."""
    url = _ledger(tmp_path / "usage.db", [_row(0, T0 + 10, key_id="k1", cost_usd=1.0)])
    day = 1_699_920_000.0  # 2023-11-14 00:00 UTC; T0 is 22:13:20 that day
    with sa.create_engine(url).begin() as conn:
        conn.execute(api_keys.insert().values(
            id="k1", name="team", key_hash="x", created_at=T0, budget_usd=budget,
            spent_usd=1.0, reserved_usd=0.0, window_start=0.0, window_count=0,
            revoked=False, budget_period="daily", period_start=day))
    r = review(url, config, until=T0 + 3600)
    found = [f for f in r.findings if f.id == "budget-runout"]
    assert bool(found) == at_risk
    if at_risk:
        key = found[0].evidence["keys"]["k1"]
        assert key["resets_at"] == "2023-11-15T00:00+00:00"
        assert key["hours_refused"] == pytest.approx((day + 86_400 - T0 - 5400) / 3600,
                                                     abs=0.01)


def test_a_ledger_without_fingerprints_skips_with_a_note(tmp_path, config):
    url = _ledger(tmp_path / "usage.db", _rows(), fingerprints=False)
    r = review(url, config, until=T0 + 3600)
    skipped = {s.id: s.reason for s in r.skipped}
    for fid in ("cache-repeats", "prefix-cache", "long-history", "max-tokens"):
        assert "not checked" in skipped[fid], skipped
    assert {f.id for f in r.findings} >= {"failed-spend", "idle-capacity"}


def _cli(*args):
    from tokenomy.cli import commands

    return CliRunner().invoke(commands(), ["review", *args])


def test_cli_formats(tmp_path):
    url = _ledger(tmp_path / "usage.db", _rows())
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(json.dumps(_config_dict(tmp_path)))
    base = ["--db", url, "--config", str(cfg), "--since", "1500d"]
    out = _cli(*base, "--format", "json")
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["findings"][0]["usd_month"] >= data["findings"][1]["usd_month"]
    assert "measured" in data["spend_usd"]["basis"]
    table = _cli(*base)
    assert table.exit_code == 0 and "cache-repeats" in table.output, table.output
    page = tmp_path / "review.html"
    done = _cli(*base, "--format", "html", "-o", str(page))
    assert done.exit_code == 0, done.output
    text = page.read_text()
    assert "<script" not in text and "http" not in text.replace(url, "")  # self-contained
    assert "Identical requests" in text and "extrapolated to 30 days" in text


@pytest.mark.parametrize("args,fragment", [
    (["--since", "soon"], "is not a duration"),
    (["--since", "-3d"], "is not a duration"),
    (["--format", "pdf"], "Invalid value for '--format'"),
    (["--db", "sqlite:////nonexistent/dir/usage.db"], "usage.db"),
    (["-o", "/nonexistent/dir/r.html"], "does not exist"),
], ids=["since-word", "since-negative", "format", "no-ledger", "no-dir"])
def test_bad_input_is_one_error_line(tmp_path, args, fragment):
    url = _ledger(tmp_path / "usage.db", [])
    if "--db" not in args:
        args = ["--db", url, *args]
    out = _cli(*args)
    assert out.exit_code != 0 and fragment in out.output, out.output
    assert "Traceback" not in out.output
