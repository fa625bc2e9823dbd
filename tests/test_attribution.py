"""Attribution through a live gateway: end users and tags from the conventions clients
send, key default tags, the fingerprints `tokenomy review` reads, `usage --by` summing to
the total to the micro-dollar, bounds (400, nothing recorded), the feature metric label,
and an older ledger gaining the new columns without losing rows."""

from __future__ import annotations

import asyncio
import json
import sqlite3

import httpx
import pytest
from click.testing import CliRunner

from gateway_harness import assert_error, chat, deployment
from tokenomy.cli import commands
from tokenomy.serve.ledger import ROW_COLUMNS, Ledger

CLI = commands()

FEATURES = ("search", "chat", "summarize")
USERS = ("alice", "bob", "carol", "dave")


def _request(i: int, feature: str, user: str) -> tuple[dict, dict]:
    """(body, headers): each request sends its feature and user by another convention."""
    body, headers = chat(f"question {i} about {feature}", max_tokens=4 + i % 5), {}
    match i % 4:
        case 0:
            body |= {"user": user, "metadata": {"tags": [f"feature:{feature}", "tier:free"]}}
        case 1:
            body |= {"safety_identifier": user}
            headers = {"x-litellm-tags": f"feature:{feature}, tier:pro"}
        case 2:
            headers = {"x-litellm-end-user-id": user, "Helicone-Property-Feature": feature}
        case _:
            headers = {"Helicone-User-Id": user, "x-tokenomy-tags": f"feature:{feature}"}
            body |= {"stream": True, "stream_options": {"include_usage": True}}
    return body, headers


def _post_all(gw, requests: list[tuple[str, dict, dict]]) -> list[httpx.Response]:
    async def run():
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*(
                client.post(gw.url + "/v1/chat/completions", json=body,
                            headers={"Authorization": f"Bearer {secret}", **headers})
                for secret, body, headers in requests))
    return asyncio.run(run())


def _usage(db_url: str, by: str) -> dict:
    r = CliRunner().invoke(CLI, ["usage", "--by", by, "--db", db_url, "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def test_load_run_sums_by_user_feature_and_tag(start_upstream, start_gateway, tmp_path):
    """3 keys x 3 features x 4 end users, every convention, half a stream in four: every
    grouping's parts sum to the same total, to the micro-dollar, and match the rows."""
    fake = start_upstream()
    db_url = f"sqlite:///{tmp_path / 'attr.db'}"
    gw = start_gateway(deployment("m", fake.url), db_url=db_url)
    keys = [gw.ledger.create_key(f"team{k}", tags=[f"team:t{k}", "feature:default"])
            for k in range(3)]
    requests, expected = [], []
    for i in range(72):
        feature, user = FEATURES[i % 3], USERS[(i // 3) % 4]
        key_id, secret = keys[(i // 12) % 3]
        body, headers = _request(i, feature, user)
        requests.append((secret, body, headers))
        expected.append((key_id, feature, user))
    responses = _post_all(gw, requests)
    assert all(r.status_code == 200 for r in responses), {r.status_code for r in responses}

    rows = gw.ledger.rows()
    assert len(rows) == 72 and {r["status"] for r in rows} == {"ok"}
    by_id = {}
    for r in rows:
        by_id.setdefault((r["key_id"], r["feature"], r["end_user"]), []).append(r)
    for key_id, feature, user in expected:  # the request's feature beat the key's default
        assert (key_id, feature, user) in by_id, (key_id, feature, user)
    for r in rows:
        tags = json.loads(r["tags"])
        assert tags[0] == f"feature:{r['feature']}" and "feature:default" not in tags
        assert any(t.startswith("team:t") for t in tags), tags  # the key's default tag
        assert r["finish_reason"] == "stop" and r["message_count"] == 1
        assert len(r["prompt_hash"]) == 64 and r["prefix_hash"] is None  # short prompts
        assert 0 < r["prefix_chars"] < 256

    micro_rows = sum(round(r["cost_usd"] * 1e6) for r in rows)
    totals = set()
    for by, groups in (("user", set(USERS)), ("feature", set(FEATURES)),
                       ("tag:team", {"t0", "t1", "t2"}), ("tag:feature", set(FEATURES)),
                       ("tag:tier", {"free", "pro", "(none)"}), ("key", None),
                       ("model", None), ("status", {"ok"})):
        out = _usage(db_url, by)
        parts = out["groups"]
        if groups is not None:
            assert {g["group"] for g in parts} == groups, (by, parts)
        total = out["total"]
        assert sum(g["cost_micro_usd"] for g in parts) == total["cost_micro_usd"], by
        assert sum(g["requests"] for g in parts) == total["requests"] == 72, by
        assert sum(g["cost_usd"] for g in parts) == pytest.approx(total["cost_usd"],
                                                                  abs=5e-7), by
        totals.add(total["cost_micro_usd"])
    assert totals == {micro_rows}, "every grouping has the same total"
    assert micro_rows == pytest.approx(sum(r["cost_usd"] for r in rows) * 1e6, abs=72)

    table = CliRunner().invoke(CLI, ["usage", "--by", "tag:team", "--db", db_url],
                               env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "total" in table.output, table.output
    assert f"{micro_rows // 1_000_000}.{micro_rows % 1_000_000:06d}" in table.output

    metrics = httpx.get(gw.url + "/metrics").text
    assert 'feature="search"' in metrics and "tokenomy_cost_usd_total{" in metrics
    assert not any(user in metrics for user in USERS), "an end user in a metric label"


def test_fingerprints(start_upstream, start_gateway):
    fake = start_upstream()
    gw = start_gateway(deployment("m", fake.url), cache={"exact": True})
    system = {"role": "system", "content": "You are a careful assistant. " * 20}

    def send(**fields):
        body = {"model": "m", "messages": [system, {"role": "user", "content": "hi"}],
                "max_tokens": 4, **fields}
        assert gw.post(json=body).status_code == 200

    send(temperature=0)
    send(temperature=0)  # served from the cache
    send(temperature=0, user="zed", metadata={"tags": ["x"]}, stream=True)  # same question
    send(temperature=0.5)
    rows = gw.ledger.rows()
    assert rows[1]["cache"] == "exact" and rows[3]["cache"] is None
    assert len({r["prompt_hash"] for r in rows[:3]}) == 1 != rows[3]["prompt_hash"]
    assert rows[0]["prefix_hash"] == rows[3]["prefix_hash"] is not None
    assert rows[0]["prefix_chars"] == len(system["content"]) + 1 + 2
    assert all(r["message_count"] == 2 and r["finish_reason"] == "stop" for r in rows)
    assert rows[2]["end_user"] == "zed" and json.loads(rows[2]["tags"]) == ["x"]


LONG = "x" * 101
BAD = [  # (id, body fields, headers, param, message fragment)
    ("metadata-17-keys", {"metadata": {f"k{i}": i for i in range(17)}}, {}, "metadata",
     "at most 16"),
    ("metadata-5KiB", {"metadata": {"note": "n" * 5000}}, {}, "metadata", "at most 4096"),
    ("metadata-not-object", {"metadata": ["a"]}, {}, "metadata", "must be an object"),
    ("metadata-tags-not-strings", {"metadata": {"tags": [1, 2]}}, {}, "metadata.tags",
     "list of strings"),
    ("metadata-tag-too-long", {"metadata": {"tags": [LONG]}}, {}, "tags", "at most 100"),
    ("metadata-tag-control", {"metadata": {"tags": ["a\u0007b"]}}, {}, "tags",
     "control character"),
    ("too-many-tags", {}, {"x-tokenomy-tags": ",".join(f"t{i}" for i in range(33))}, "tags",
     "at most 32"),
    ("litellm-tag-tab", {}, {"x-litellm-tags": "a\tb"}, "x-litellm-tags",
     "control character"),
    ("tokenomy-tag-too-long", {}, {"x-tokenomy-tags": f"ok, {LONG}"}, "tags", "at most 100"),
    ("helicone-property-tab", {}, {"Helicone-Property-Env": "a\tb"},
     "helicone-property-env", "control character"),
    ("user-too-long", {"user": "u" * 201}, {}, "user", "at most 200"),
    ("safety-identifier-number", {"safety_identifier": 7}, {}, "safety_identifier",
     "must be a string"),
    ("end-user-header-too-long", {}, {"x-litellm-end-user-id": "u" * 201},
     "x-litellm-end-user-id", "at most 200"),
    ("user-control", {"user": "a\nb"}, {}, "user", "control character"),
]


@pytest.mark.parametrize(("fields", "headers", "param", "fragment"),
                         [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_attribution_is_a_400_and_nothing_is_recorded(upstream, gateway, fields,
                                                          headers, param, fragment):
    r = httpx.post(gateway.url + "/v1/chat/completions", json=chat(**fields),
                   headers=headers, timeout=30)
    err = assert_error(r, 400, "invalid_request_error", param=param)
    assert fragment in err["message"] and "Traceback" not in r.text, err
    assert gateway.ledger.rows() == [] and upstream.behaviour.calls == 0


def test_metadata_json_orjson_refuses_is_measured_too(upstream, gateway):
    raw = (b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "metadata": '
           b'{"big": 123456789012345678901234567890, "tags": ["feature:x"]}}')
    r = httpx.post(gateway.url + "/v1/chat/completions", content=raw, timeout=30,
                   headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    assert gateway.ledger.rows()[0]["feature"] == "x"


def test_no_attribution_records_nulls(upstream, gateway):
    assert gateway.post(json=chat()).status_code == 200
    (row,) = gateway.ledger.rows()
    assert row["end_user"] is row["feature"] is row["tags"] is None
    assert row["prompt_hash"] and row["message_count"] == 1


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_an_older_ledger_gains_the_columns_and_keeps_its_rows(tmp_path, request, backend):
    url = (f"sqlite:///{tmp_path / 'old.db'}" if backend == "sqlite"
           else request.getfixturevalue("postgres_url"))
    ledger = Ledger(url)
    key_id, _ = ledger.create_key("old", budget_usd=5.0)
    usage_id = ledger.admit(key_id, 0.01, endpoint="chat/completions", model="m",
                            stream=False)
    ledger.finish(usage_id, key_id, status="ok", cost_usd=0.004)
    new_key_columns = ("tags", "budget_period", "period_start", "soft_limit_usd",
                       "webhook_url", "soft_notified_period")
    with ledger.engine.begin() as conn:  # back to the schema of the previous release
        for column in (*ROW_COLUMNS, "finish_reason"):
            conn.exec_driver_sql(f"ALTER TABLE tokenomy_usage DROP COLUMN {column}")
        for column in new_key_columns:
            conn.exec_driver_sql(f"ALTER TABLE tokenomy_api_keys DROP COLUMN {column}")
    ledger.close()
    if backend == "sqlite":
        with sqlite3.connect(tmp_path / "old.db") as conn:
            have = {r[1] for r in conn.execute("PRAGMA table_info(tokenomy_usage)")}
        assert "end_user" not in have and "cost_usd" in have

    reader = Ledger(url, create=False)  # `tokenomy usage` / `keys list` on it
    (row,) = reader.rows()
    assert row["id"] == usage_id and row["cost_usd"] == 0.004 and row["end_user"] is None
    key = reader.key(key_id)
    assert key.spent_usd == pytest.approx(0.004) and key.budget_period is None
    assert reader.summary("user")[0]["group"] == "(none)"
    reader.close()
    ledger = Ledger(url)
    later = ledger.admit(key_id, 0.01, endpoint="chat/completions", model="m", stream=False,
                         columns={"end_user": "eve", "feature": "f", "prompt_hash": "h"})
    ledger.finish(later, key_id, status="ok", cost_usd=0.001, finish_reason="length")
    rows = {r["id"]: r for r in ledger.rows()}
    assert set(rows) == {usage_id, later} and rows[later]["end_user"] == "eve"
    assert rows[later]["finish_reason"] == "length"
    assert ledger.key(key_id).spent_usd == pytest.approx(0.005)
    if backend == "postgresql":  # a shared server: leave it as the next test expects
        with ledger.engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM tokenomy_usage")
            conn.exec_driver_sql("DELETE FROM tokenomy_api_keys WHERE id != 'anonymous'")
    ledger.close()
