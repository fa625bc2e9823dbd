"""GET /dashboard through a live gateway on a loopback upstream: admin keys only (bearer
or a one-time ?key= traded for an HttpOnly cookie), the totals it shows against sums
computed here from the ledger's rows, no external URL or script, and the page rendered
in headless Chromium to a PNG that is not blank."""

from __future__ import annotations

import datetime as dt
import re
import shutil
import subprocess
from collections import defaultdict

import httpx
import pytest

from gateway_harness import assert_error, chat, deployment
from tokenomy.serve.dashboard_data import percentile, period_end
from tokenomy.serve.ledger import Ledger

FEATURES = ("search", "chat", "summarize")
MODELS = ("small", "large")


def _usd(x: float) -> str:
    """The page's dollar format: up to 6 decimals, trailing zeros dropped."""
    return f"${x:.6f}".rstrip("0").rstrip(".")


@pytest.fixture
def run(start_upstream, start_gateway, tmp_path):
    """A gateway with two models and an exact cache, 3 keys (one with a daily budget) x 3
    features, plus one cache hit; returns (gateway, admin secret, member secret, rows)."""
    fake = start_upstream()
    db_url = f"sqlite:///{tmp_path / 'usage.db'}"
    ledger = Ledger(db_url)
    admin_id, admin = ledger.create_key("ops")
    keys = [ledger.create_key(f"team{k}", budget_usd=1.0 if k == 0 else None,
                              period="daily" if k == 0 else None) for k in range(3)]
    ledger.close()
    large = deployment("large", fake.url)
    large["model_info"] = {"input_cost_per_token": 5e-6, "output_cost_per_token": 2e-5}
    gw = start_gateway(deployment("small", fake.url), large, db_url=db_url,
                       cache={"exact": True}, general={"admin_keys": [admin_id]})
    for i in range(18):
        _, secret = keys[i % 3]
        feature = FEATURES[i // 3 % 3]
        body = chat(f"question {i} about {feature}", model=MODELS[i % 2],
                    max_tokens=3 + i % 4, metadata={"tags": [f"feature:{feature}"]})
        r = gw.post(json=body, key=secret)
        assert r.status_code == 200, r.text
    hit = chat("what is cached?", model="large", temperature=0, max_tokens=8)
    for _ in range(2):  # the second is answered from the cache
        assert gw.post(json=hit, key=keys[1][1]).status_code == 200
    rows = gw.ledger.rows()
    assert sum(1 for r in rows if r["cache"]) == 1, [r["cache"] for r in rows]
    return gw, admin, keys[0][1], rows


def test_dashboard_needs_an_admin_key(run):
    gw, admin, member, _ = run
    assert_error(httpx.get(gw.url + "/dashboard"), 401, "authentication_error",
                 "invalid_api_key")
    assert_error(httpx.get(gw.url + "/dashboard", headers={"Authorization": "Bearer nope"}),
                 401, "authentication_error", "invalid_api_key")
    assert_error(httpx.get(gw.url + "/dashboard", headers={"Authorization": f"Bearer {member}"}),
                 403, "permission_error", "not_admin")
    assert_error(httpx.get(gw.url + f"/dashboard?key={member}"), 403, "permission_error",
                 "not_admin")
    r = httpx.get(gw.url + "/dashboard", headers={"Authorization": f"Bearer {admin}"},
                  params={"since": "1y"})
    assert_error(r, 400, "invalid_request_error", None, "since")

    # a browser: ?key= once -> an HttpOnly SameSite=Strict cookie, the key out of the URL
    r = httpx.get(gw.url + "/dashboard", params={"key": admin, "since": "7d"})
    assert r.status_code == 303 and r.headers["location"] == "/dashboard?since=7d", r.headers
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/dashboard" in cookie
    with httpx.Client(base_url=gw.url) as browser:
        browser.get("/dashboard", params={"key": admin})
        page = browser.get("/dashboard?since=7d")
    assert page.status_code == 200 and "7d window" in page.text, page.text[:300]


def test_dashboard_shows_the_ledger_totals(run):
    gw, admin, _, rows = run
    r = httpx.get(gw.url + "/dashboard", headers={"Authorization": f"Bearer {admin}"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text

    total = sum(x["cost_usd"] for x in rows)
    assert f"<b>{len(rows)}</b> requests, <b>{_usd(total)}</b> spent" in page
    by = {"model": defaultdict(float), "key": defaultdict(float),
          "feature": defaultdict(float)}
    api_keys = gw.ledger.keys()
    names = {k.id: k.name for k in api_keys}
    for x in rows:
        by["model"][x["deployment"]] += x["cost_usd"]
        by["key"][f"{names[x['key_id']]} ({x['key_id']})"] += x["cost_usd"]
        by["feature"][x["feature"] or "(none)"] += x["cost_usd"]
    assert len(by["key"]) == 3 and len(by["model"]) == 2
    assert set(by["feature"]) == {*FEATURES, "(none)"}
    for groups in by.values():
        for group, usd in groups.items():
            assert f"<td>{group}</td><td>{_usd(usd)}</td>" in page, (group, usd)

    for kind in ("prompt", "completion", "cached"):
        count = sum(x[f"{kind}_tokens"] for x in rows)
        assert f"<td>{kind}</td><td>{count:,}</td>" in page, (kind, count)

    # the cache hit's saving: its tokens at the deployment's mean measured $/token
    hit = next(x for x in rows if x["cache"])
    paid = [x for x in rows if x["deployment"] == hit["deployment"] and not x["cache"]]
    per_token = (sum(x["cost_usd"] for x in paid)
                 / sum(x["prompt_tokens"] + x["completion_tokens"] for x in paid))
    saving = hit["cached_tokens"] * per_token
    assert hit["cost_usd"] == 0 and saving > 0
    assert f"<b>{_usd(saving)}</b> saved by the cache (<span class=e>estimated</span>)" in page

    for dep in MODELS:
        latencies = [x["latency_s"] for x in rows if x["deployment"] == dep
                     and not x["cache"]]
        p50 = percentile(latencies, 50)
        assert sorted(latencies)[(len(latencies) + 1) // 2 - 1] == p50
        assert f"<td>{dep}</td><td>{len(latencies)}</td><td>{p50:.3f}</td>" in page

    team0 = next(k for k in api_keys if k.name == "team0")
    spent = sum(x["cost_usd"] for x in rows if x["key_id"] == team0.id)
    assert (f"<td>team0 ({team0.id})</td><td>daily</td><td>{_usd(spent)}</td>"
            f"<td>$1</td>") in page
    for what in ("measured", "estimated", "24h window"):
        assert what in page

    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert "<script" not in page.lower() and "url(" not in page and "@import" not in page
    assert page.count("<svg") >= 7


def test_dashboard_renders_in_headless_chromium(run, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (.ci/run installs it)")
    gw, admin, _, _ = run
    shot = tmp_path / "dashboard.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                    "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}",
                    f"--screenshot={shot}", "--window-size=1280,2000",
                    f"{gw.url}/dashboard?key={admin}"],
                   check=True, capture_output=True, timeout=120)
    data = shot.read_bytes()
    assert len(data) > 20_000, f"screenshot only {len(data)} bytes"
    width, height, raw = png_pixels(data)
    assert (width, height) == (1280, 2000)
    grey = raw[::3 * 101]  # one channel of a spread of pixels
    mean = sum(grey) / len(grey)
    variance = sum((g - mean) ** 2 for g in grey) / len(grey)
    assert variance > 100, f"a blank page? variance {variance:.1f}"
    assert len(set(raw[::7])) > 20, "too few shades: no plots drawn?"


def png_pixels(data: bytes) -> tuple[int, int, bytes]:
    """(width, height, pixel bytes) of a PNG: Pillow (with matplotlib) decodes it."""
    image = pytest.importorskip("PIL.Image", reason="Pillow decodes the PNG (with "
                                "matplotlib: pip install tokenomy[report])")
    import io

    with image.open(io.BytesIO(data)) as img:
        rgb = img.convert("RGB")
        return rgb.width, rgb.height, rgb.tobytes()


@pytest.mark.parametrize(("period", "now", "end"), [
    ("daily", "2026-12-31T23:59:00", "2027-01-01T00:00:00"),
    ("weekly", "2026-12-02T12:00:00", "2026-12-07T00:00:00"),  # a Wednesday -> Monday
    ("monthly", "2026-12-15T08:00:00", "2027-01-01T00:00:00"),
    ("monthly", "2026-02-01T00:00:00", "2026-03-01T00:00:00"),
    (None, "2026-02-01T00:00:00", None),
], ids=["daily-new-year", "weekly", "monthly-december", "monthly-boundary", "lifetime"])
def test_budget_period_end(period, now, end):
    def ts(iso: str) -> float:
        return dt.datetime.fromisoformat(iso).replace(tzinfo=dt.UTC).timestamp()

    assert period_end(period, ts(now)) == (None if end is None else ts(end))
