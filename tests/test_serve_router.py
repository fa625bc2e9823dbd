"""The `model: auto` router: predictions and the threshold on synthetic clusters,
calibration against live fake deployments, the calibration file, routing through the
gateway, and `tokenomy route`."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import re

import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from fastapi import FastAPI, Request
from prometheus_client.parser import text_string_to_metric_families

from fake_upstream import Behaviour, ServerThread
from fake_upstream import create_app as fake_app
from test_serve_cache import HashEmbedder
from tokenomy.errors import InvalidInputError
from tokenomy.serve.app import GatewayState, Upstream, create_app
from tokenomy.serve.config import GatewayConfig
from tokenomy.serve.router import (
    Calibration,
    DeploymentCalibration,
    DeploymentRef,
    HeldOut,
    Router,
    RouterSettings,
    _cross_fitted,
    agree,
    calibrate,
    choose_tau,
    predict,
)

# The cheap deployment agrees with the reference on translations and not on proofs. The
# folds are by position parity, so each fold holds four of each.
EASY = [f"translate the word {w} into french" for w in
        ("apple", "house", "river", "table", "bread", "green", "night", "water")]
HARD = [f"prove the theorem about {w} primes" for w in
        ("twin", "mersenne", "fermat", "sophie", "regular", "gaussian", "lucky", "happy")]
PROMPTS = EASY + HARD
CHEAP_OK = [True] * len(EASY) + [False] * len(HARD)
COST = {"cheap": 1e-5, "ref": 1e-4}  # $ per request: cheap is a tenth of the reference
NEW_EASY, NEW_HARD = "translate the word lemon into french", "prove the theorem about odd primes"


def synthetic(embedder, tau: float = 0.5, **fields) -> Calibration:
    labels = {"cheap": CHEAP_OK, "ref": [True] * len(PROMPTS)}
    return Calibration(
        reference="ref",
        deployments={d: DeploymentCalibration(usd_per_request=COST[d], labels=labels[d],
                                              prior=float(np.mean(labels[d])),
                                              prior_source="calibration agreement")
                     for d in ("cheap", "ref")},
        prompts=PROMPTS, embeddings=embedder.encode(PROMPTS).tolist(),
        embedder=embedder.name, tau=tau,
        held_out=HeldOut(prompts=len(PROMPTS), quality=1.0, cost_share=1.0, routed={}),
        answer_words=16, max_tokens=48, created=dt.datetime.now(dt.UTC).isoformat(),
        conditions="synthetic", **fields)


@pytest.fixture
def calibration() -> Calibration:
    """Tuned for quality 1.0 on the synthetic clusters."""
    return synthetic(HashEmbedder()).retuned(RouterSettings(target_quality=1.0))


def cross_fitted():
    emb = HashEmbedder().encode(PROMPTS)
    labels = {"cheap": np.array(CHEAP_OK), "ref": np.ones(len(PROMPTS), dtype=bool)}
    predicted = _cross_fitted(emb, labels, {"cheap": 0.5, "ref": 1.0}, "ref", 8, 4.0)
    return predicted, labels


# -- predict, choose_tau, decide ---------------------------------------------------------
def test_predict_weights_neighbours_by_similarity_and_shrinks_to_prior():
    emb = np.array([[1, 0], [0, 1], [0.6, 0.8]], dtype=np.float32)  # [N, D], unit rows
    labels = np.array([True, False, True])
    q = np.array([[1, 0], [0, 1]], dtype=np.float32)
    # k=1: the nearest only; (sim * label + weight * prior) / (sim + weight)
    assert predict(emb, labels, 0.5, q, k=1, prior_weight=1) == \
        pytest.approx([(1 + 0.5) / 2, (0 + 0.5) / 2])
    # k=2 from [0, 1]: itself (sim 1, False) and [0.6, 0.8] (sim 0.8, True)
    assert predict(emb, labels, 0.5, q[1:], k=2, prior_weight=0) == pytest.approx([0.8 / 1.8])
    # a huge prior weight pins every prediction to the prior; no neighbours give it too
    assert predict(emb, labels, 0.3, q, k=3, prior_weight=1e9) == pytest.approx([0.3, 0.3])
    assert predict(emb[:0], labels[:0], 0.7, q, k=3, prior_weight=1) == \
        pytest.approx([0.7, 0.7])


def test_cross_fitted_predictions_separate_the_clusters():
    predicted, _ = cross_fitted()
    easy, hard = predicted["cheap"][:len(EASY)], predicted["cheap"][len(EASY):]
    assert easy.min() > 0.6 > 0.4 > hard.max(), (easy, hard)
    assert (predicted["ref"] == 1).all()


def test_choose_tau_meets_a_quality_target_at_the_lowest_cost():
    predicted, labels = cross_fitted()
    tau, out = choose_tau(predicted, labels, COST, ["cheap", "ref"], "ref", 1.0, None)
    easy, hard = predicted["cheap"][:len(EASY)], predicted["cheap"][len(EASY):]
    assert hard.max() < tau <= easy.min(), (tau, easy, hard)
    assert out.quality == 1.0 and out.routed == {"cheap": 0.5, "ref": 0.5}
    assert out.cost_share == pytest.approx((0.5 * COST["cheap"] + 0.5 * COST["ref"])
                                           / COST["ref"])
    # a lax target: everything to the cheap one, at half the answers right
    tau, out = choose_tau(predicted, labels, COST, ["cheap", "ref"], "ref", 0.5, None)
    assert out.routed == {"cheap": 1.0, "ref": 0.0} and out.quality == 0.5
    assert out.cost_share == pytest.approx(0.1)


def test_quality_is_not_traded_for_a_negligible_saving():
    predicted, labels = cross_fitted()
    nearly = {"cheap": COST["ref"] * 0.995, "ref": COST["ref"]}  # 0.5 % cheaper
    _, out = choose_tau(predicted, labels, nearly, ["cheap", "ref"], "ref", 0.5, None)
    assert out.quality == 1.0 and out.routed["cheap"] == 0.5, \
        "only the prompts the cheap one gets right: the rest would save < 1 %"
    _, out = choose_tau(predicted, labels, COST, ["cheap", "ref"], "ref", 0.5, None)
    assert out.routed["cheap"] == 1.0, "a real saving (90 %) is taken"


def test_choose_tau_under_a_cost_target_sends_mostly_to_the_cheap_one():
    predicted, labels = cross_fitted()
    tau, out = choose_tau(predicted, labels, COST, ["cheap", "ref"], "ref", None, 0.2)
    # one prompt of 16 to the reference fits in 20 % (15 * 0.1 + 1) / 16; it is a hard one
    assert out.cost_share == pytest.approx((15 * 0.1 + 1) / 16)
    assert out.routed == {"cheap": 15 / 16, "ref": 1 / 16} and out.quality == 9 / 16
    assert tau > 0
    tau, out = choose_tau(predicted, labels, COST, ["cheap", "ref"], "ref", None, 0.6)
    assert out.cost_share <= 0.6 and out.quality == 1.0, "the best quality within 60 %"


def test_router_sends_easy_prompts_to_the_cheap_one_and_hard_to_the_reference(calibration):
    router = Router(calibration, HashEmbedder())
    assert router.order == ["cheap", "ref"]
    for prompt in [*EASY, NEW_EASY]:
        assert router.decide(prompt, ["cheap", "ref"]).deployment == "cheap", prompt
    for prompt in [*HARD, NEW_HARD]:
        assert router.decide(prompt, ["cheap", "ref"]).deployment == "ref", prompt

    d = router.decide(NEW_EASY, ["cheap", "ref"])
    assert d.predicted_quality >= d.tau == calibration.tau
    assert d.difficulty == pytest.approx(1 - d.predicted_quality)
    assert d.reason.startswith("auto: ") and "on cheap" in d.reason and "ref 1.00" in d.reason
    hard = router.decide(NEW_HARD, ["cheap", "ref"])
    assert hard.predicted_quality == 1.0 and hard.difficulty > d.difficulty


def test_router_keeps_to_the_deployments_served(calibration):
    router = Router(calibration, HashEmbedder())
    assert router.decide(NEW_EASY, ["ref", "other"]).deployment == "ref"
    assert router.decide(NEW_HARD, ["cheap"]).deployment == "cheap"  # the only one there
    with pytest.raises(LookupError, match="none of which is served here"):
        router.decide(NEW_EASY, ["other"])


def test_router_refuses_a_calibration_from_another_embedder(calibration):
    class Wider(HashEmbedder):
        name, dim = "wider", 128

    with pytest.raises(InvalidInputError, match="calibrate again"):
        Router(calibration, Wider()).decide(NEW_EASY, ["cheap", "ref"])


# -- retuning ---------------------------------------------------------------------------------
def test_retuned_chooses_tau_again_for_a_new_target(calibration):
    assert calibration.held_out.quality == 1.0
    assert calibration.held_out.routed == {"cheap": 0.5, "ref": 0.5}
    assert calibration.retuned(RouterSettings()) is calibration

    cheap = calibration.retuned(RouterSettings(target_cost_share=0.2))
    assert cheap.tau < calibration.tau and cheap.held_out.routed["cheap"] > 0.9
    assert cheap.held_out.cost_share <= 0.2
    assert (cheap.target_quality, cheap.target_cost_share) == (None, 0.2)
    assert calibration.tau == calibration.retuned(RouterSettings(target_quality=1.0)).tau

    wider = calibration.retuned(RouterSettings(k=2, prior_weight=0.5))
    assert (wider.k, wider.prior_weight, wider.target_quality) == (2, 0.5, 1.0)
    assert wider.held_out.quality == 1.0
    router = Router(calibration, HashEmbedder(), RouterSettings(target_cost_share=0.2))
    assert router.tau == cheap.tau and router.calibration.target_cost_share == 0.2


# -- the calibration file ---------------------------------------------------------------------
def test_calibration_round_trips_and_is_never_overwritten(calibration, tmp_path):
    path = tmp_path / "sub" / "router.json"
    calibration.save(path)
    assert Calibration.load(path) == calibration
    before = path.read_text()
    with pytest.raises(InvalidInputError, match="exists"):
        calibration.retuned(RouterSettings(target_cost_share=0.2)).save(path)
    assert path.read_text() == before


@pytest.mark.parametrize("content", [None, "{not json", json.dumps({"reference": "ref"}),
                                     "short-labels", "unknown-reference"],
                         ids=["missing", "not-json", "incomplete", "lengths", "reference"])
def test_loading_a_bad_calibration_is_a_clear_error(calibration, tmp_path, content):
    path = tmp_path / "router.json"
    data = json.loads(calibration.model_dump_json())
    if content == "short-labels":
        data["deployments"]["cheap"]["labels"].pop()
        content = json.dumps(data)
    elif content == "unknown-reference":
        content = json.dumps({**data, "reference": "gpt-9"})
    if content is not None:
        path.write_text(content)
    with pytest.raises(InvalidInputError, match=re.escape(str(path))) as info:
        Calibration.load(path)
    assert "tokenomy route calibrate" in str(info.value)


# -- calibrate() against live deployments ---------------------------------------------------
def answering_app(answer, bodies: list) -> FastAPI:
    """An OpenAI-compatible upstream answering `answer(prompt)`, with usage in words."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        bodies.append(body)
        prompt = body["messages"][-1]["content"]
        text = answer(prompt)
        return {"id": "x", "object": "chat.completion", "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": len(prompt.split()),
                          "completion_tokens": len(text.split()),
                          "total_tokens": len(prompt.split()) + len(text.split())}}

    return app


def reference_answer(prompt: str) -> str:
    return f"the answer to {prompt} is known"


def cheap_answer(prompt: str) -> str:
    return reference_answer(prompt) if "translate" in prompt else "the answer to that is no"


@pytest.fixture
def live():
    """Two live deployments: 'ref' and 'cheap' (right on EASY only), and their requests."""
    with contextlib.ExitStack() as stack:
        bodies = {"ref": [], "cheap": []}
        urls = {"ref": stack.enter_context(ServerThread(answering_app(
                    reference_answer, bodies["ref"]))).url,
                "cheap": stack.enter_context(ServerThread(answering_app(
                    cheap_answer, bodies["cheap"]))).url}

        def refs(**cheap_fields) -> list[DeploymentRef]:
            return [DeploymentRef("ref", urls["ref"] + "/v1", "big", 1e-5, 2e-5),
                    DeploymentRef("cheap", urls["cheap"] + "/v1", "small", 1e-6, 2e-6,
                                  **cheap_fields)]

        yield refs, bodies


def test_calibrate_labels_answers_and_chooses_tau(live):
    refs, bodies = live
    steps = []
    c = asyncio.run(calibrate(refs(), "ref", PROMPTS, HashEmbedder(), target_quality=1.0,
                              max_tokens=32, answer_words=5, step=steps.append))
    assert c.deployments["cheap"].labels == CHEAP_OK
    assert c.deployments["ref"].labels == [True] * len(PROMPTS)
    for name, model in (("ref", "big"), ("cheap", "small")):
        assert len(bodies[name]) == len(PROMPTS)
        assert {(b["model"], b["temperature"], b["max_tokens"]) for b in bodies[name]} == \
            {(model, 0, 32)}
    ref_cost = np.mean([len(p.split()) * 1e-5 + len(reference_answer(p).split()) * 2e-5
                        for p in PROMPTS])
    cheap_cost = np.mean([len(p.split()) * 1e-6 + len(cheap_answer(p).split()) * 2e-6
                          for p in PROMPTS])
    assert c.deployments["ref"].usd_per_request == pytest.approx(ref_cost)
    assert c.deployments["cheap"].usd_per_request == pytest.approx(cheap_cost)
    assert (c.deployments["cheap"].prior, c.deployments["cheap"].prior_source) == \
        (0.5, "calibration agreement")
    assert c.deployments["ref"].prior == 1.0
    assert c.held_out.quality == 1.0 and c.held_out.routed == {"cheap": 0.5, "ref": 0.5}
    assert (c.target_quality, c.target_cost_share, c.answer_words) == (1.0, None, 5)
    assert c.embedder == "hashed-bag-of-words" and len(c.embeddings[0]) == 64
    assert "calibration answers from cheap: 16/16" in steps
    assert Router(c, HashEmbedder()).decide(NEW_EASY, ["cheap", "ref"]).deployment == "cheap"


def test_calibrate_uses_a_given_quality_prior_and_a_cost_target(live):
    refs, _ = live
    c = asyncio.run(calibrate(refs(quality_prior=0.8), "ref", PROMPTS, HashEmbedder(),
                              target_cost_share=0.5, answer_words=3))
    assert c.deployments["cheap"].labels == [True] * len(PROMPTS)  # "the answer to" agrees
    assert (c.deployments["cheap"].prior, c.deployments["cheap"].prior_source) == \
        (0.8, "tokenomy eval answer agreement")
    assert (c.target_quality, c.target_cost_share) == (None, 0.5)
    assert c.held_out.cost_share <= 0.5 and c.held_out.quality == 1.0


def test_agreement_is_on_the_first_words():
    assert agree("Paris is the capital", "Paris is the capital of France", 4)
    assert not agree("Paris is a city", "Paris is the capital", 4)
    assert agree("  Paris\nis ", "Paris is", 2)


@pytest.mark.parametrize(("reference", "n_refs", "n_prompts", "target", "message"), [
    ("gpt-9", 2, 16, 0.9, "not among the deployments"),
    ("ref", 1, 16, 0.9, "at least two deployments"),
    ("ref", 2, 7, 0.9, "too few"),
    ("ref", 2, 16, 1.5, "target quality"),
])
def test_calibrate_refuses_bad_input(reference, n_refs, n_prompts, target, message):
    refs = [DeploymentRef("ref", "http://127.0.0.1:9/v1", "big", 1e-5, 2e-5),
            DeploymentRef("cheap", "http://127.0.0.1:9/v1", "small", 1e-6, 2e-6)][:n_refs]
    with pytest.raises(InvalidInputError, match=message):
        asyncio.run(calibrate(refs, reference, PROMPTS[:n_prompts], HashEmbedder(),
                              target_quality=target))


def test_calibrate_reports_a_failing_deployment():
    behaviour = Behaviour(fail_with=500)
    with ServerThread(fake_app(behaviour)) as server:
        refs = [DeploymentRef("ref", server.url + "/v1", "big", 1e-5, 2e-5),
                DeploymentRef("cheap", server.url + "/v1", "small", 1e-6, 2e-6)]
        with pytest.raises(InvalidInputError, match="ref answered 500"):
            asyncio.run(calibrate(refs, "ref", PROMPTS, HashEmbedder()))


# -- through the gateway ------------------------------------------------------------------------
def metric(url: str, name: str, **labels: str) -> float:
    text = httpx.get(url + "/metrics").text
    return sum(s.value for family in text_string_to_metric_families(text)
               for s in family.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


@pytest.fixture
def routed_gateway(tmp_path, calibration):
    with contextlib.ExitStack() as stack:
        fakes = {name: Behaviour() for name in ("cheap", "ref")}
        model_list = [{"model_name": name, "params": {
            "engine": "openai", "model": "fake",
            "api_base": stack.enter_context(ServerThread(fake_app(b))).url + "/v1"},
            "model_info": {"input_cost_per_token": COST[name] / 100,
                           "output_cost_per_token": COST[name] / 50}}
            for name, b in fakes.items()]
        cfg = GatewayConfig.model_validate({"model_list": model_list,
                                            "database_url": f"sqlite:///{tmp_path / 'u.db'}"})
        state = GatewayState(cfg, {d.id: Upstream(d, d.params.api_base, d.params.model)
                                   for d in cfg.model_list},
                             router=Router(calibration, HashEmbedder()))
        url = stack.enter_context(ServerThread(create_app(state))).url
        yield url, state, fakes


def test_gateway_routes_model_auto(routed_gateway):
    url, state, fakes = routed_gateway
    models = httpx.get(url + "/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["cheap", "ref", "auto"]

    for prompt, expected in ((NEW_EASY, "cheap"), (NEW_HARD, "ref"), (EASY[0], "cheap")):
        r = httpx.post(url + "/v1/chat/completions", timeout=30, json={
            "model": "auto", "max_tokens": 4, "messages": [{"role": "user", "content": prompt}]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["model"], body["tokenomy"]["deployment"]) == (expected, expected), prompt
        assert body["tokenomy"]["route"].startswith("auto: ")
    assert (fakes["cheap"].calls, fakes["ref"].calls) == (2, 1)

    rows = state.ledger.rows()
    assert [(r["model"], r["deployment"]) for r in rows] == \
        [("auto", "cheap"), ("auto", "ref"), ("auto", "cheap")]
    assert all(r["route"].startswith("auto: predicted quality") for r in rows)
    assert "on ref" in rows[1]["route"]
    assert metric(url, "tokenomy_router_decisions_total", deployment="cheap") == 2
    assert metric(url, "tokenomy_router_decisions_total", deployment="ref") == 1
    assert metric(url, "tokenomy_router_difficulty_count") == 3

    # a deterministic request answered from the cache needs no routing decision
    for _ in range(2):
        r = httpx.post(url + "/v1/chat/completions", timeout=30, json={
            "model": "auto", "max_tokens": 4, "temperature": 0,
            "messages": [{"role": "user", "content": NEW_HARD}]})
        assert r.status_code == 200, r.text
    assert r.json()["tokenomy"]["cache"] == "exact"
    assert fakes["ref"].calls == 2
    assert metric(url, "tokenomy_router_decisions_total", deployment="ref") == 2


# -- tokenomy route ----------------------------------------------------------------------------
def invoke(*args: str):
    from tokenomy.cli import commands

    return CliRunner().invoke(commands(), list(args))


def test_route_show_prints_the_decision(tmp_path):
    from tokenomy.serve.embed import Embedder

    path = tmp_path / "router.json"
    synthetic(Embedder()).retuned(RouterSettings(target_quality=1.0)).save(path)
    result = invoke("route", "show", str(path), "--prompt", NEW_EASY, "--prompt", NEW_HARD)
    assert result.exit_code == 0, result.output
    assert "Router calibration" in result.output and "tau" in result.output
    easy_line, hard_line = [line for line in result.output.splitlines() if " -> " in line]
    assert re.search(r"'translate the word lemon into french' -> cheap: auto: ", easy_line)
    assert re.search(r"-> ref: auto: ", hard_line)


def test_route_show_refuses_a_calibration_of_another_embedder(calibration, tmp_path):
    path = tmp_path / "router.json"
    calibration.save(path)  # 64-dimensional hashed embeddings; show embeds with MiniLM
    result = invoke("route", "show", str(path), "--prompt", NEW_EASY)
    assert result.exit_code == 1 and "Error:" in result.output, result.output
    assert "calibrate again" in result.output and "Traceback" not in result.output


def test_route_calibrate_refuses_an_existing_output(tmp_path):
    config = tmp_path / "gateway.yaml"
    config.write_text("model_list:\n  - model_name: m\n")
    out = tmp_path / "router.json"
    out.write_text("keep me")
    result = invoke("route", "calibrate", "--config", str(config), "-o", str(out))
    assert result.exit_code == 1, result.output
    assert f"Error: {out} exists" in result.output and "never overwritten" in result.output
    assert out.read_text() == "keep me"

    both = invoke("route", "calibrate", "--config", str(config), "-o",
                  str(tmp_path / "new.json"), "--target-quality", "0.9",
                  "--target-cost-share", "0.5")
    assert both.exit_code == 1 and "not both" in both.output, both.output
