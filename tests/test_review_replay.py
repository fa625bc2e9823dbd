"""The issue's acceptance test for `tokenomy review`: ShareGPT prompts with repeats
replayed through a live gateway with the cache off fill a ledger; review finds the
repeats; the same sequence replayed with the exact cache on costs less by what review
claimed, within 10%. Once against a loopback upstream with list prices (fast), once
against the embedded SmolLM2 on llama.cpp priced by the hour (integration)."""

from __future__ import annotations

import contextlib
import json
import random

import pytest

from tokenomy.evaluate.data import conversations
from tokenomy.review.run import review
from tokenomy.serve.config import GatewayConfig

DISTINCT = 12  # ShareGPT first user turns
SEED = 7


def _sequence() -> tuple[list[str], int]:
    """Each prompt sent 1-3 times, shuffled (a repeat always after its first send, as
    requests go one at a time); returns the prompts and the number of repeats."""
    prompts = []
    for conv in conversations("sharegpt", "calibration", 4 * DISTINCT, SEED):
        text = next((c for role, c in conv.messages if role == "user"), "").strip()
        if text and text[:300] not in prompts:
            prompts.append(text[:300])
        if len(prompts) == DISTINCT:
            break
    seq = [p for i, p in enumerate(prompts) for _ in range(1 + i % 3)]
    random.Random(SEED).shuffle(seq)
    return seq, len(seq) - len(prompts)


def _replay(config: GatewayConfig, upstreams: dict, seq: list[str], model: str) -> float:
    """Send `seq` through a gateway (temperature 0, 8 tokens); the ledger's total cost."""
    import openai

    from fake_upstream import ServerThread
    from tokenomy.serve.app import GatewayState, create_app

    state = GatewayState(config, upstreams)
    with ServerThread(create_app(state)) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
        for prompt in seq:
            client.chat.completions.create(model=model, temperature=0, max_tokens=8,
                                           messages=[{"role": "user", "content": prompt}])
    from tokenomy.serve.ledger import Ledger

    ledger = Ledger(config.db_url, create=False)
    rows = ledger.rows()
    ledger.close()
    assert len(rows) == len(seq) and {r["status"] for r in rows} == {"ok"}, rows[:2]
    return sum(r["cost_usd"] for r in rows)


def _check(make_config, upstreams: dict, model: str, tmp_path) -> None:
    seq, repeats = _sequence()
    off = make_config(tmp_path / "off.db", cache=False)
    cost_off = _replay(off, upstreams, seq, model)
    found = {f.id: f for f in review(off.db_url, off).findings}
    assert "cache-repeats" in found, [f.id for f in found.values()]
    claim = found["cache-repeats"]
    assert claim.evidence["repeats"] == repeats
    assert "exact: true" in claim.change
    on = make_config(tmp_path / "on.db", cache=True)
    cost_on = _replay(on, upstreams, seq, model)
    saved = cost_off - cost_on
    assert saved > 0
    assert abs(claim.usd_window - saved) <= 0.10 * saved, \
        f"review claimed ${claim.usd_window:.8f}, the cache saved ${saved:.8f}"
    on_review = {f.id for f in review(on.db_url, on).findings}
    assert "cache-repeats" not in on_review  # nothing left to save


def test_review_claims_what_the_cache_saves(start_upstream, tmp_path):
    from gateway_harness import deployment
    from tokenomy.serve.app import Upstream

    fake = start_upstream()

    def make_config(db, cache: bool) -> GatewayConfig:
        return GatewayConfig.model_validate({
            "model_list": [deployment("m", fake.url)], "database_url": f"sqlite:///{db}",
            "cache": {"exact": cache}})

    cfg = make_config(tmp_path / "x.db", False)
    upstreams = {d.id: Upstream(d, d.params.api_base, d.params.model) for d in cfg.model_list}
    _check(make_config, upstreams, "m", tmp_path)


@pytest.mark.integration
@pytest.mark.slow
def test_review_claims_what_the_cache_saves_on_llamacpp(tmp_path):
    from tokenomy.serve import running_engines

    def make_config(db, cache: bool) -> GatewayConfig:
        return GatewayConfig.model_validate(json.loads(json.dumps({
            "model_list": [{"model_name": "smollm2", "params": {"parallel": 2}}],
            "database_url": f"sqlite:///{db}", "cache": {"exact": cache}})))

    with contextlib.ExitStack() as stack:
        upstreams = stack.enter_context(running_engines(make_config(tmp_path / "x.db",
                                                                    False)))
        _check(make_config, upstreams, "smollm2", tmp_path)
