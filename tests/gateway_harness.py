"""What the gateway tests share: handles on a fake upstream and a gateway running in
threads on 127.0.0.1 (the fixtures that start them are in conftest.py), request builders
and the OpenAI error-shape check."""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx
import openai
from prometheus_client.parser import text_string_to_metric_families

from fake_upstream import Behaviour
from tokenomy.serve.app import GatewayState

PRICE_IN, PRICE_OUT = 1e-6, 2e-6  # USD per prompt / completion token
PROMPT = "the quick brown fox jumps over the lazy dog"


@dataclass
class Fake:
    behaviour: Behaviour
    url: str


@dataclass
class Gateway:
    url: str
    state: GatewayState

    @property
    def ledger(self):
        return self.state.ledger

    def client(self, api_key: str = "none") -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0)

    def post(self, path: str = "/v1/chat/completions", key: str | None = None,
             **kwargs) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.post(self.url + path, headers=headers, timeout=30, **kwargs)

    def metric(self, name: str, **labels: str) -> float:
        text = httpx.get(self.url + "/metrics").text
        return sum(s.value for family in text_string_to_metric_families(text)
                   for s in family.samples
                   if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def deployment(name: str, url: str, **params) -> dict:
    return {"model_name": name,
            "params": {"engine": "openai", "model": "fake", "api_base": url + "/v1", **params},
            "model_info": {"input_cost_per_token": PRICE_IN, "output_cost_per_token": PRICE_OUT}}


def chat(content: str = PROMPT, model: str = "m", **fields) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": content}], **fields}


def list_cost(row: dict) -> float:
    return row["prompt_tokens"] * PRICE_IN + row["completion_tokens"] * PRICE_OUT


def wait_for(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def assert_error(r: httpx.Response, status: int, type_: str, code: str | None = None,
                 param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    err = body["error"]
    assert err["message"] and err["type"] == type_, err
    assert err["code"] == code and err["param"] == param, err
    return err
