"""`GET /dashboard`: one self-contained HTML page (inline SVG, inline CSS, no scripts, no
fonts, nothing fetched) rendered from the ledger: spend over time by model, key and
feature, tokens, the cache's saving, latency and TTFT percentiles, budget burn-down.

Admin only. An admin key is an API key (`tokenomy keys create NAME`) whose id is listed in
the gateway config's `general.admin_keys`; it authenticates as every key does, by
`Authorization: Bearer <secret>` looked up (hashed) in the ledger. A browser sends it once
as `/dashboard?key=<secret>`: the gateway answers with an HttpOnly, SameSite=Strict cookie
scoped to /dashboard and a redirect to the same page without the key in the URL.

The page is built in a worker thread from two SELECTs (tokenomy.serve.dashboard_data);
nothing on the completions path changes.
"""

from __future__ import annotations

import datetime as dt
import time
from html import escape
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse

from tokenomy.errors import InvalidInputError
from tokenomy.report.svg import hbars, stacked_bars
from tokenomy.serve.dashboard_data import Dashboard, load
from tokenomy.serve.protocol import error

COOKIE = "tokenomy_admin"
COOKIE_MAX_AGE_S = 12 * 3600

CSS = """body{font-family:system-ui,sans-serif;margin:1.5em;max-width:1240px;color:#222}
h2{margin:1.4em 0 .3em;font-size:1.15em}.row{display:flex;gap:1.5em;flex-wrap:wrap;
align-items:flex-start}table{border-collapse:collapse;font-size:.85em}td,th{border:1px
solid #ccc;padding:3px 7px;text-align:right}th{background:#f4f4f4}td:first-child,
th:first-child{text-align:left}.note{color:#555;font-size:.85em}.m{color:#137333}
.e{color:#b06000}nav a{margin-right:1em}figure{margin:0;max-width:560px}"""


def mount(app: FastAPI, state) -> None:
    """Register GET /dashboard on the gateway's app (`state`: its GatewayState)."""

    @app.get("/dashboard", include_in_schema=False)
    async def dashboard(request: Request, since: str = "24h", key: str | None = None):
        if key is not None:  # from a link: trade it for a cookie, drop it from the URL
            refused = await _admin(state, key)
            if refused is not None:
                return refused
            target = "/dashboard" + (f"?{urlencode({'since': since})}"
                                     if "since" in request.query_params else "")
            response = RedirectResponse(target, status_code=303)
            response.set_cookie(COOKIE, key, max_age=COOKIE_MAX_AGE_S, path="/dashboard",
                                httponly=True, samesite="strict",
                                secure=request.url.scheme == "https")
            return response
        refused = await _admin(state, _secret(request))
        if refused is not None:
            return refused
        try:
            page = await state.db(render_page, state, since)
        except InvalidInputError as exc:
            return error(400, f"invalid request: {exc}", param="since")
        return HTMLResponse(page, headers={"Cache-Control": "no-store",
                                           "Content-Security-Policy": "default-src 'none'; "
                                           "style-src 'unsafe-inline'; img-src data:"})


def _secret(request: Request) -> str:
    scheme, _, credentials = request.headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return request.cookies.get(COOKIE, "")


async def _admin(state, secret: str) -> JSONResponse | None:
    """None when `secret` is an admin key's, else the refusal (401 without a valid key,
    403 with a valid key that is not an admin's)."""
    if not secret:
        return error(401, "the dashboard needs an admin key: send `Authorization: Bearer "
                     "<key>` or open /dashboard?key=<key> once (the key's id listed in "
                     "general.admin_keys)", type_="authentication_error",
                     code="invalid_api_key")
    found = await state.requests.lookup(secret)
    if found is None or found.revoked:
        return error(401, "invalid or revoked API key", type_="authentication_error",
                     code="invalid_api_key")
    if found.id not in state.config.general.admin_keys:
        return error(403, f"key {found.id} is not an admin key: add its id to "
                     "general.admin_keys in the gateway config",
                     type_="permission_error", code="not_admin")
    return None


def render_page(state, since: str) -> str:
    started = time.perf_counter()

    def rate(dep: str) -> float:
        try:
            return state.meter.rate(dep).usd_per_input_token
        except KeyError:  # a deployment no longer in the config
            return 0.0

    d = load(state.ledger, since, rate)
    return html(d, time.perf_counter() - started)


def _usd(x: float) -> str:
    return f"${x:,.2f}" if abs(x) >= 100 else f"${x:.6f}".rstrip("0").rstrip(".")


def _axis_usd(x: float) -> str:
    return f"${x:.3g}"


def _tokens(x: float) -> str:
    return f"{x:,.0f}" if x < 1e5 else f"{x / 1e6:.3g}M"


def _when(ts: float | None) -> str:
    return "-" if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).strftime(
        "%Y-%m-%d %H:%M UTC")


def html(d: Dashboard, took_s: float) -> str:
    buckets = f"{'hourly' if d.bucket_s == 3600 else 'daily'} UTC buckets"
    span = f"{d.since} window, {_when(d.start)} to {_when(d.now)}, {buckets}"
    win = f"last {d.since} ({buckets})"
    nav = "".join(f'<a href="/dashboard?since={s}">{s}</a>' for s in ("24h", "7d", "30d"))
    parts = [
        "<!doctype html><html><head><meta charset=utf-8><title>tokenomy dashboard</title>"
        f"<style>{CSS}</style></head><body><h1>tokenomy gateway: where the money goes</h1>",
        f"<nav>{nav}</nav><p><b>{d.requests}</b> requests, <b>{_usd(d.spend_usd)}</b> spent "
        f"(<span class=m>measured</span>: the gateway's meter, per request), "
        f"<b>{_usd(d.saving_usd)}</b> saved by the cache (<span class=e>estimated</span>)."
        f" {escape(span)}.</p>"]
    for by, what in (("model", "model (deployment)"), ("key", "API key"),
                     ("feature", "feature")):
        parts.append(_spend(d, by, what, win))
    parts += [_tokens_section(d, win), _cache_section(d, win), _latency_section(d, win),
              _budget_section(d),
              f"<p class=note>Rendered from the ledger in {took_s * 1000:.0f} ms.</p>"
              "</body></html>\n"]
    return "".join(parts)


def _table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _spend(d: Dashboard, by: str, what: str, win: str) -> str:
    title = f"Spend by {what}, measured, {win}"
    plot = stacked_bars(d.labels, d.spend[by], fmt=_axis_usd, title=title)
    totals = sorted(d.totals[by].items(), key=lambda kv: -kv[1])
    table = _table([what, "spend (measured)", "share"],
                   [[g, _usd(v), f"{v / d.spend_usd:.1%}" if d.spend_usd else "-"]
                    for g, v in totals] + [["total", _usd(d.spend_usd), ""]])
    return (f"<h2>Spend by {escape(what)} <span class=m>(measured)</span></h2>"
            f"<div class=row><figure>{plot}<figcaption class=note>{escape(title)}"
            f"</figcaption></figure>{table}</div>")


def _tokens_section(d: Dashboard, win: str) -> str:
    title = f"Tokens, measured, {win}"
    plot = stacked_bars(d.labels, d.tokens, fmt=_tokens, title=title)
    table = _table(["tokens", "count (measured)"],
                   [[k, f"{v:,}"] for k, v in d.token_totals.items()])
    return (f"<h2>Tokens <span class=m>(measured)</span></h2><div class=row><figure>{plot}"
            f"<figcaption class=note>{escape(title)}; cached: answered from the gateway's "
            f"response cache</figcaption></figure>{table}</div>")


def _cache_section(d: Dashboard, win: str) -> str:
    if not d.cache:
        return f"<h2>Cache savings</h2><p class=note>No cache hits in the {d.since} window.</p>"
    title = f"Cache savings per deployment, estimated, {win}"
    plot = hbars([(c["deployment"], [c["saving_usd"]]) for c in d.cache],
                 ["saved (estimated)"], fmt=_axis_usd, width=460, title=title)
    table = _table(["deployment", "hits", "cached tokens", "$/token", "saved (estimated)",
                    "priced at"],
                   [[c["deployment"], str(c["hits"]), f"{c['cached_tokens']:,}",
                     f"{c['usd_per_token']:.3g}", _usd(c["saving_usd"]), c["basis"]]
                    for c in d.cache] + [["total", "", "", "", _usd(d.saving_usd), ""]])
    return ("<h2>Cache savings <span class=e>(estimated)</span></h2><div class=row><figure>"
            f"{plot}<figcaption class=note>{escape(title)}: a hit is recorded at $0; its "
            "cached tokens priced as the table says</figcaption></figure>"
            f"{table}</div>")


def _latency_section(d: Dashboard, win: str) -> str:
    if not d.latency:
        return f"<h2>Latency</h2><p class=note>No answers from a deployment in the {d.since}" \
               " window.</p>"
    title = f"Latency per deployment (s), measured, {win}"
    plot = hbars([(p.deployment, list(p.latency or (0, 0, 0))) for p in d.latency],
                 ["p50", "p95", "p99"], fmt="{:.3g}s".format, width=460, title=title)

    def cells(v):
        return [f"{x:.3f}" for x in v] if v else ["-"] * 3

    table = _table(["deployment", "answers", "latency p50 s", "p95", "p99", "TTFT p50 s",
                    "p95", "p99"],
                   [[p.deployment, str(p.requests), *cells(p.latency), *cells(p.ttft)]
                    for p in d.latency])
    return ("<h2>Latency and time to first token <span class=m>(measured)</span></h2>"
            f"<div class=row><figure>{plot}<figcaption class=note>{escape(title)}: "
            "end-to-end at the gateway, successful uncached answers; nearest-rank "
            f"percentiles</figcaption></figure>{table}</div>")


def _budget_section(d: Dashboard) -> str:
    if not d.budgets:
        return "<h2>Budgets</h2><p class=note>No key has a budget.</p>"
    title = f"Budget burn-down per key, measured, the current period at {_when(d.now)}"
    plot = hbars([(b.key, [b.spent_usd]) for b in d.budgets], ["spent this period"],
                 limits=[b.budget_usd for b in d.budgets], fmt=_axis_usd, width=460,
                 title=title)
    table = _table(["key", "period", "spent (measured)", "budget", "used", "left",
                    "period ends"],
                   [[b.key, b.period, _usd(b.spent_usd), _usd(b.budget_usd),
                     f"{b.spent_usd / b.budget_usd:.1%}" if b.budget_usd else "-",
                     _usd(max(0.0, b.budget_usd - b.spent_usd)), _when(b.period_end)]
                    for b in d.budgets])
    return ("<h2>Budget burn-down <span class=m>(measured)</span></h2><div class=row>"
            f"<figure>{plot}<figcaption class=note>{escape(title)}; the red mark is the "
            f"budget</figcaption></figure>{table}</div>")


__all__ = ["COOKIE", "html", "mount", "render_page"]
