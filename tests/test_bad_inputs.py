"""Every bad input a user can give, in one table: the CLI verbs through click's CliRunner,
the gateway through HTTP. Each row: the command or request, the expected exit code or
HTTP status, and a fragment of the one-line message. One shared assertion checks: no
traceback, a single `Error:` line (or one OpenAI error object), no secret echoed, and
nothing written or changed under the test's temporary directory.

Rows are fast by design: every one is refused before a model loads or an engine starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import stat
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml
from click.testing import CliRunner

from gateway_harness import PROMPT, deployment
from tokenomy.cli import commands

CLI = commands()
SECRET = "sk-live-SECRET-0123456789"  # in files the configs point at; never in a message

GPU = {"name": "X1", "vendor": "nvidia", "memory_gib": 80, "bandwidth_gbs": 3350,
       "tflops": {"bf16": 989}, "interconnect": {"kind": "nvlink4", "bandwidth_gbs": 450},
       "price": {"usd_per_hour": 2.0, "provider": "test", "source": "test", "as_of": "2026"},
       "source": "test", "as_of": "2026"}
API = {"engine": "openai", "model": "m", "api_base": "http://127.0.0.1:9/v1"}


def _gw(**fields) -> dict:
    """A gateway config: one API deployment, changed by `fields` (dotted paths)."""
    config = {"model_list": [{"model_name": "m", "params": dict(API),
                              "model_info": {"input_cost_per_token": 1e-6,
                                             "output_cost_per_token": 2e-6}}]}
    for dotted, value in fields.items():
        *parents, leaf = dotted.split(".")
        node = config
        for name in parents:
            node = node[int(name)] if name.isdigit() else node.setdefault(name, {})
        node[leaf] = value
    return config


def _gpu(**changes) -> dict:
    gpu = json.loads(json.dumps(GPU))
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = gpu
        for name in parents:
            node = node[name]
        node[leaf] = value
    return {"gpus": [gpu]}


FILES: dict[str, str | bytes | dict | list] = {
    # shapes and syntax
    "bad.yaml": "model_list:\n  - {model_name: x\n  bad: [\n",
    "list.yaml": ["a", "b"],
    "notjson.json": "{nope",
    "list.json": [1, 2],
    "notjson.jsonl": '{"text": "fine"}\n{broken\n',
    "binary.jsonl": b"\xff\xfe\x00garbage",
    "file": "a regular file where a folder is expected",
    "secrets.txt": f"OPENAI_API_KEY={SECRET}\n",
    # files of another kind
    "bench.json": {"runs": [], "rho": 0.5},
    "eval.json": {"kld_mean": 0.1, "schema_version": 1, "verdict": "x"},
    "results-bad.json": {"selections": 1, "schema_version": 1},
    # models
    "notgguf.gguf": b"hello, not a model",
    "corrupt.gguf": b"GGUF\x03\x00\x00\x00" + b"\xff" * 40,
    "nodir/.keep": "",
    # workloads
    "wl-nan.yaml": {"input_tokens": 100, "output_tokens": 50, "mode": "online",
                    "requests_per_s": float("nan")},
    "wl-inf.yaml": {"input_tokens": 100, "output_tokens": 50, "mode": "offline",
                    "requests_per_s": float("inf")},
    "wl-neg.yaml": {"input_tokens": -5, "output_tokens": 50, "mode": "online"},
    "wl-frac.yaml": {"input_tokens": 10.5, "output_tokens": 50, "mode": "online"},
    "wl-list.yaml": [1, 2],
    # catalogs
    "cat-nan-price.yaml": _gpu(**{"price.usd_per_hour": float("nan")}),
    "cat-inf-price.yaml": _gpu(**{"price.usd_per_hour": float("inf")}),
    "cat-zero-price.yaml": _gpu(**{"price.usd_per_hour": 0}),
    "cat-inf-bw.yaml": _gpu(bandwidth_gbs=float("inf")),
    "cat-neg-bw.yaml": _gpu(**{"interconnect.bandwidth_gbs": -1}),
    "cat-neg-tflops.yaml": _gpu(**{"tflops.bf16": -5}),
    "cat-section.yaml": {"gpu": []},
    # gateway configs
    "gw-corrupt.yaml": _gw(**{"model_list.0.params": {"engine": "llamacpp",
                                                      "model": "corrupt.gguf"}}),
    "gw-notgguf.yaml": _gw(**{"model_list.0.params": {"engine": "llamacpp",
                                                      "model": "notgguf.gguf"}}),
    "gw-nomodel.yaml": _gw(**{"model_list.0.params": {"engine": "llamacpp",
                                                      "model": "missing.gguf"}}),
    "gw-secrets.yaml": _gw(**{"router.calibration": "secrets.txt"}),
    "gw-bench-kind.yaml": _gw(**{"model_list.0.model_info": {"bench": "eval.json"}}),
    "gw-nan-price.yaml": _gw(**{"model_list.0.model_info": {"usd_per_hour": float("nan")}}),
    "gw-inf-cost.yaml": _gw(**{"model_list.0.model_info.input_cost_per_token":
                               float("inf")}),
    "gw-neg-cost.yaml": _gw(**{"model_list.0.model_info.output_cost_per_token": -1}),
    "gw-timeout.yaml": _gw(**{"model_list.0.params.timeout_s": -1}),
    "gw-retries.yaml": _gw(**{"model_list.0.params.max_retries": 1.5}),
    "gw-port.yaml": _gw(**{"general.port": 70000}),
    "gw-body.yaml": _gw(**{"general.max_body_bytes": 0}),
    "gw-drain.yaml": _gw(**{"general.drain_timeout_s": float("inf")}),
    "gw-cache.yaml": _gw(**{"cache.threshold": float("nan")}),
    "gw-ttl.yaml": _gw(**{"cache.ttl_s": -3}),
    "gw-router.yaml": _gw(**{"router.target_quality": 2}),
    "gw-gpus.yaml": _gw(**{"model_list.0.model_info": {"usd_per_hour": 1, "gpus": 0}}),
    "gw-secret-yaml.yaml": f"model_list:\n  - params: {{api_key: {SECRET}\n    bad: [\n",
    "gw-list.yaml": [{"model_name": "m"}],
}


def _write(root: Path) -> None:
    import yaml

    for name, content in FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, str):
            path.write_text(content)
        elif name.endswith(".json"):
            path.write_text(json.dumps(content))
        else:
            path.write_text(yaml.safe_dump(content))
    with sqlite3.connect(root / "foreign.db") as conn:  # a SQLite file that is not a ledger
        conn.execute("CREATE TABLE notes (body TEXT)")
    (root / "text.db").write_text("not a database")


@dataclass
class Case:
    id: str
    args: list[str] | None = None  # a CLI invocation
    request: tuple | None = None  # or an HTTP request: (method, path, body, headers)
    expect: int = 1  # exit code, or HTTP status
    fragment: str = ""  # in the one-line message
    gateway: dict = field(default_factory=dict)  # config for the gateway of HTTP rows


def cli(id_: str, *args: str, fragment: str, code: int = 1) -> Case:
    return Case(id_, args=list(args), expect=code, fragment=fragment)


def http(id_: str, method: str, path: str, body=None, *, status: int, fragment: str,
         headers: dict | None = None, keyed: bool = False) -> Case:
    return Case(id_, request=(method, path, body, headers or {}), expect=status,
                fragment=fragment, gateway={"require_api_key": keyed})


def chat(**fields) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": PROMPT}], **fields}


P = ["plan", "llama-3.1-8b", "--gpu", "H100-SXM"]
E = ["eval", "corrupt.gguf"]
OPT = ["optimize", "llama-3.1-8b", "--gpu", "L4", "--scheme", "w4a16", "-o", "out"]
B = ["bench", "http://127.0.0.1:9/v1"]
S = ["serve", "--port", "{free_port}"]
MISSING_DB = "sqlite:///typo-dir/sub/usage.db"

CASES = [
    # -- plan: numbers ---------------------------------------------------------------
    cli("plan-rate-nan", *P, "--rate", "nan", fragment="--rate must be a finite number"),
    cli("plan-rate-inf", *P, "--rate", "inf", fragment="--rate must be a finite number"),
    cli("plan-rate-negative", *P, "--rate", "-1", fragment="> 0"),
    cli("plan-rate-huge", *P, "--rate", "1e308", fragment="<= 1,000,000"),
    cli("plan-rate-text", *P, "--rate", "fast", fragment="got 'fast'"),
    cli("plan-price-nan", *P, "--price", "H100-SXM=nan",
        fragment="--price H100-SXM=nan: the USD per GPU-hour"),
    cli("plan-price-inf", *P, "--price", "H100-SXM=inf", fragment="finite number > 0"),
    cli("plan-price-huge", *P, "--price", "H100-SXM=1e308", fragment="<= 10,000"),
    cli("plan-price-negative", *P, "--price", "H100-SXM=-2", fragment="> 0"),
    cli("plan-price-no-equals", *P, "--price", "H100-SXM", fragment="GPU=USD_PER_HOUR"),
    cli("plan-price-unknown-gpu", *P, "--price", "H100-SXN=2", fragment="unknown GPU"),
    cli("plan-input-tokens-zero", *P, "--input-tokens", "0", fragment="--input-tokens"),
    cli("plan-output-tokens-fraction", *P, "--output-tokens", "1.5",
        fragment="must be an integer"),
    cli("plan-context-too-long", *P, "--input-tokens", "9000000", fragment="context"),
    # -- plan: workload and catalog files
    cli("plan-workload-nan", *P, "--workload", "wl-nan.yaml", fragment="requests_per_s"),
    cli("plan-workload-inf", *P, "--workload", "wl-inf.yaml", fragment="requests_per_s"),
    cli("plan-workload-negative", *P, "--workload", "wl-neg.yaml", fragment="input_tokens"),
    cli("plan-workload-fraction", *P, "--workload", "wl-frac.yaml",
        fragment="must be an integer"),
    cli("plan-workload-list", *P, "--workload", "wl-list.yaml", fragment="YAML mapping"),
    cli("plan-workload-malformed", *P, "--workload", "bad.yaml", fragment="not valid YAML"),
    cli("plan-workload-missing", *P, "--workload", "missing.yaml", fragment="does not exist"),
    cli("plan-workload-missing-dir", *P, "--workload", "conf/chat", fragment="does not exist"),
    cli("plan-catalog-price-nan", *P, "--catalog", "cat-nan-price.yaml",
        fragment="price.usd_per_hour"),
    cli("plan-catalog-price-inf", *P, "--catalog", "cat-inf-price.yaml",
        fragment="price.usd_per_hour"),
    cli("plan-catalog-price-zero", *P, "--catalog", "cat-zero-price.yaml", fragment="> 0"),
    cli("plan-catalog-bandwidth-inf", *P, "--catalog", "cat-inf-bw.yaml",
        fragment="bandwidth_gbs"),
    cli("plan-catalog-link-negative", *P, "--catalog", "cat-neg-bw.yaml",
        fragment="interconnect.bandwidth_gbs"),
    cli("plan-catalog-tflops-negative", *P, "--catalog", "cat-neg-tflops.yaml",
        fragment="tflops.bf16"),
    cli("plan-catalog-malformed", *P, "--catalog", "bad.yaml", fragment="not valid YAML"),
    cli("plan-catalog-list", *P, "--catalog", "list.yaml", fragment="must be a mapping"),
    cli("plan-catalog-section", *P, "--catalog", "cat-section.yaml",
        fragment="unknown section"),
    cli("plan-catalog-missing", *P, "--catalog", "missing.yaml", fragment="does not exist",
        code=2),
    # -- plan: models
    cli("plan-model-missing-path", "plan", "./models/llama", fragment="does not exist"),
    cli("plan-model-missing-config", "plan", "nodir/config.json", fragment="does not exist"),
    cli("plan-model-missing-gguf", "plan", "missing.gguf", fragment="missing.gguf"),
    cli("plan-model-not-gguf", "plan", "notgguf.gguf", fragment="not a readable GGUF"),
    cli("plan-model-unknown-name", "plan", "llama-9", fragment="unknown model"),
    # -- compress
    cli("compress-samples-zero", "compress", "-o", "out", "--calibration-samples", "0",
        fragment="--calibration-samples"),
    cli("compress-samples-nan", "compress", "-o", "out", "--calibration-samples", "nan",
        fragment="must be an integer"),
    cli("compress-seq-negative", "compress", "-o", "out", "--max-seq-length", "-5",
        fragment="--max-seq-length"),
    cli("compress-seed-negative", "compress", "-o", "out", "--seed", "-1", fragment="--seed"),
    cli("compress-output-under-file", "compress", "-o", "file/out", fragment="is a file"),
    cli("compress-model-missing", "compress", "missing-model", "-o", "out",
        fragment="does not exist"),
    cli("compress-scheme-unknown", "compress", "-s", "w3a99", "-o", "out",
        fragment="w3a99"),
    cli("compress-no-output", "compress", fragment="--output", code=2),
    # -- eval
    cli("eval-candidate-missing", "eval", "missing.gguf", fragment="does not exist", code=2),
    cli("eval-windows-zero", *E, "--windows", "0", fragment="--windows"),
    cli("eval-window-tokens-nan", *E, "--window-tokens", "nan", fragment="--window-tokens"),
    cli("eval-prompts-negative", *E, "--prompts", "-3", fragment="--prompts"),
    cli("eval-seed-fraction", *E, "--seed", "1.5", fragment="--seed"),
    cli("eval-lm-eval-limit-zero", *E, "--lm-eval-limit", "0", fragment="--lm-eval-limit"),
    cli("eval-answer-tokens-over", *E, "--answer-tokens", "100", fragment="cannot exceed"),
    cli("eval-dataset-missing", *E, "--dataset", "missing.jsonl", fragment="does not exist"),
    cli("eval-dataset-malformed", *E, "--dataset", "notjson.jsonl",
        fragment="is not valid JSON"),
    cli("eval-dataset-binary", *E, "--dataset", "binary.jsonl", fragment="cannot be read"),
    cli("eval-dataset-unknown", *E, "--dataset", "wikitext", fragment="unknown dataset"),
    cli("eval-lm-eval-on-gguf", *E, "--lm-eval", "shakespeare_cloze",
        fragment="transformers checkpoints"),
    # -- optimize: budget flags and settings, before any work
    cli("optimize-max-kld-nan", *OPT, "--max-kld", "nan", fragment="--max-kld"),
    cli("optimize-max-kld-inf", *OPT, "--max-kld", "inf", fragment="--max-kld"),
    cli("optimize-max-kld-negative", *OPT, "--max-kld", "-0.1", fragment=">= 0"),
    cli("optimize-ppl-nan", *OPT, "--max-ppl-increase", "nan", fragment="--max-ppl-increase"),
    cli("optimize-agreement-over-1", *OPT, "--min-answer-agreement", "1.5", fragment="<= 1"),
    cli("optimize-cpu-price-zero", *OPT, "--cpu-price", "0", fragment="--cpu-price"),
    cli("optimize-windows-zero", *OPT, "--windows", "0", fragment="--windows"),
    cli("optimize-samples-nan", *OPT, "--calibration-samples", "nan",
        fragment="--calibration-samples"),
    cli("optimize-output-under-file", "optimize", "--scheme", "w4a16", "-o", "file/run",
        fragment="is a file"),
    cli("optimize-workload-missing", *OPT, "--workload", "missing.yaml",
        fragment="does not exist"),
    cli("optimize-gpu-unknown", "optimize", "--gpu", "H100-SXN", "-o", "out",
        fragment="unknown GPU"),
    cli("optimize-model-missing", "optimize", "missing-model", "--scheme", "w4a16", "-o", "out",
        fragment="does not exist"),
    # -- report
    cli("report-missing", "report", "missing.json", fragment="does not exist", code=2),
    cli("report-not-json", "report", "notjson.json", "-o", "r.html",
        fragment="is not a JSON file"),
    cli("report-bench-result", "report", "bench.json", "-o", "r.html",
        fragment="is a `tokenomy bench` result"),
    cli("report-eval-result", "report", "eval.json", "-o", "r.html",
        fragment="is a `tokenomy eval` result"),
    cli("report-json-list", "report", "list.json", "-o", "r.html",
        fragment="not a `tokenomy optimize` result"),
    cli("report-wrong-shape", "report", "results-bad.json", "-o", "r.html",
        fragment="not a valid `tokenomy optimize` result"),
    cli("report-output-under-file", "report", "bench.json", "-o", "file/r.html",
        fragment="does not exist"),
    cli("report-output-is-dir", "report", "bench.json", "-o", "nodir",
        fragment="is a directory"),
    # -- bench
    cli("bench-concurrency-zero", *B, "--concurrency", "0", fragment="--concurrency"),
    cli("bench-rate-nan", *B, "--rate", "nan", fragment="--rate"),
    cli("bench-rate-negative", *B, "--rate", "-2", fragment="> 0"),
    cli("bench-max-concurrency-zero", *B, "--max-concurrency", "0",
        fragment="--max-concurrency"),
    cli("bench-requests-zero", *B, "--requests", "0", fragment="--requests"),
    cli("bench-duration-inf", *B, "--duration", "inf", fragment="--duration"),
    cli("bench-timeout-negative", *B, "--timeout", "-5", fragment="--timeout"),
    cli("bench-slo-ttft-nan", *B, "--slo-ttft", "nan", fragment="--slo-ttft"),
    cli("bench-slo-tpot-zero", *B, "--slo-tpot", "0", fragment="--slo-tpot"),
    cli("bench-usd-per-hour-nan", *B, "--usd-per-hour", "nan", fragment="--usd-per-hour"),
    cli("bench-max-input-zero", *B, "--max-input-tokens", "0", fragment="--max-input-tokens"),
    cli("bench-seed-negative", *B, "--seed", "-1", fragment="--seed"),
    cli("bench-synthetic-zero", *B, "--synthetic", "0:5", fragment="--synthetic"),
    cli("bench-synthetic-text", *B, "--synthetic", "a:b", fragment="must be an integer"),
    cli("bench-synthetic-shape", *B, "--synthetic", "5", fragment="IN:OUT"),
    cli("bench-two-profiles", *B, "--rate", "1", "--concurrency", "2",
        fragment="one load profile"),
    cli("bench-target-not-url", "bench", "localhost:8000", fragment="TARGET"),
    cli("bench-out-under-file", *B, "--out", "file/run", fragment="is a file"),
    cli("bench-dataset-missing", *B, "--dataset", "missing.jsonl", fragment="does not exist"),
    cli("bench-dataset-malformed", *B, "--dataset", "notjson.jsonl",
        fragment="is not valid JSON"),
    cli("bench-model-missing", "bench", "--model", "missing.gguf", fragment="does not exist",
        code=2),
    cli("bench-hardware-unknown", *B, "--hardware", "H100-SXN", fragment="unknown GPU"),
    # -- keys
    cli("keys-budget-nan", "keys", "create", "a", "--budget", "nan", fragment="--budget"),
    cli("keys-budget-inf", "keys", "create", "a", "--budget", "inf", fragment="--budget"),
    cli("keys-budget-negative", "keys", "create", "a", "--budget", "-1", fragment=">= 0"),
    cli("keys-budget-huge", "keys", "create", "a", "--budget", "1e308", fragment="<= "),
    cli("keys-budget-text", "keys", "create", "a", "--budget", "lots", fragment="got 'lots'"),
    cli("keys-rpm-zero", "keys", "create", "a", "--rpm", "0", fragment="--rpm"),
    cli("keys-rpm-fraction", "keys", "create", "a", "--rpm", "1.5",
        fragment="must be an integer"),
    cli("keys-update-budget-nan", "keys", "update", "key_x", "--budget", "nan",
        fragment="--budget"),
    cli("keys-update-nothing", "keys", "update", "key_x", fragment="nothing to update"),
    cli("keys-list-missing-db", "keys", "list", "--db", MISSING_DB, fragment="does not exist"),
    cli("keys-revoke-missing-db", "keys", "revoke", "key_x", "--db", MISSING_DB,
        fragment="does not exist"),
    cli("keys-list-unsupported-url", "keys", "list", "--db", "mysql://u@h/db",
        fragment="unsupported database URL"),
    cli("keys-create-not-a-url", "keys", "create", "a", "--db", "usage.db",
        fragment="unsupported database URL"),
    cli("keys-list-not-sqlite", "keys", "list", "--db", "sqlite:///text.db",
        fragment="not a SQLite database"),
    cli("keys-list-foreign-db", "keys", "list", "--db", "sqlite:///foreign.db",
        fragment="not a tokenomy ledger"),
    cli("keys-create-db-under-file", "keys", "create", "a", "--db", "sqlite:///file/x.db",
        fragment="cannot create the usage database"),
    cli("keys-create-config-missing", "keys", "create", "a", "--config", "missing.yaml",
        fragment="does not exist"),
    cli("keys-create-config-list", "keys", "create", "a", "--config", "gw-list.yaml",
        fragment="must be a YAML mapping"),
    # -- usage
    cli("usage-since-nan", "usage", "--since", "nan", fragment="--since"),
    cli("usage-since-inf", "usage", "--since", "inf", fragment="--since"),
    cli("usage-since-negative", "usage", "--since", "-1", fragment="> 0"),
    cli("usage-since-text", "usage", "--since", "yesterday", fragment="got 'yesterday'"),
    cli("usage-missing-db", "usage", "--db", MISSING_DB, fragment="does not exist"),
    cli("usage-unsupported-url", "usage", "--db", "mysql://u@h/db",
        fragment="unsupported database URL"),
    cli("usage-foreign-db", "usage", "--db", "sqlite:///foreign.db",
        fragment="not a tokenomy ledger"),
    cli("usage-config-malformed", "usage", "--config", "bad.yaml", fragment="not valid YAML"),
    cli("usage-by-unknown", "usage", "--by", "nope", fragment="--by", code=2),
    # -- serve: numbers, the port, files the config names
    cli("serve-port-zero", "serve", "--port", "0", fragment="--port"),
    cli("serve-port-huge", "serve", "--port", "70000", fragment="<= 65,535"),
    cli("serve-port-nan", "serve", "--port", "nan", fragment="must be an integer"),
    cli("serve-port-in-use", "serve", "--port", "{busy_port}", fragment="cannot listen"),
    cli("serve-config-missing", *S, "--config", "missing.yaml", fragment="does not exist"),
    cli("serve-config-malformed", *S, "--config", "bad.yaml", fragment="not valid YAML"),
    cli("serve-config-list", *S, "--config", "list.yaml", fragment="must be a YAML mapping"),
    cli("serve-config-secret-line", *S, "--config", "gw-secret-yaml.yaml",
        fragment="not valid YAML"),
    cli("serve-gguf-corrupt", *S, "--config", "gw-corrupt.yaml", fragment="corrupt"),
    cli("serve-gguf-not-gguf", *S, "--config", "gw-notgguf.yaml", fragment="not a GGUF file"),
    cli("serve-gguf-missing", *S, "--config", "gw-nomodel.yaml", fragment="does not exist"),
    cli("serve-calibration-secrets", *S, "--config", "gw-secrets.yaml",
        fragment="router.calibration"),
    cli("serve-bench-of-another-kind", *S, "--config", "gw-bench-kind.yaml",
        fragment="model_info.bench"),
    cli("serve-price-nan", *S, "--config", "gw-nan-price.yaml", fragment="usd_per_hour"),
    cli("serve-cost-inf", *S, "--config", "gw-inf-cost.yaml",
        fragment="input_cost_per_token"),
    cli("serve-cost-negative", *S, "--config", "gw-neg-cost.yaml",
        fragment="output_cost_per_token"),
    cli("serve-timeout-negative", *S, "--config", "gw-timeout.yaml", fragment="timeout_s"),
    cli("serve-retries-fraction", *S, "--config", "gw-retries.yaml", fragment="max_retries"),
    cli("serve-general-port", *S, "--config", "gw-port.yaml", fragment="general.port"),
    cli("serve-body-limit-zero", *S, "--config", "gw-body.yaml",
        fragment="general.max_body_bytes"),
    cli("serve-drain-inf", *S, "--config", "gw-drain.yaml", fragment="drain_timeout_s"),
    cli("serve-cache-threshold-nan", *S, "--config", "gw-cache.yaml",
        fragment="cache.threshold"),
    cli("serve-cache-ttl-negative", *S, "--config", "gw-ttl.yaml", fragment="cache.ttl_s"),
    cli("serve-router-target", *S, "--config", "gw-router.yaml",
        fragment="router.target_quality"),
    cli("serve-gpus-zero", *S, "--config", "gw-gpus.yaml", fragment="gpus"),
    cli("serve-db-unsupported", *S, "--db", "mysql://u@h/db",
        fragment="unsupported database URL"),
    cli("serve-db-under-file", *S, "--db", "sqlite:///file/x.db",
        fragment="cannot create the usage database"),
    # -- the gateway's API fields and keys (HTTP)
    http("api-temperature-nan", "POST", "/v1/chat/completions",
         '{"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
         status=400, fragment="temperature: must be a finite number >= 0 and <= 2"),
    http("api-temperature-inf", "POST", "/v1/chat/completions",
         '{"model": "m", "messages": [{"role": "user", "content": "hi"}], '
         '"temperature": Infinity}', status=400, fragment="temperature"),
    http("api-temperature-high", "POST", "/v1/chat/completions", chat(temperature=3),
         status=400, fragment="temperature"),
    http("api-max-tokens-zero", "POST", "/v1/chat/completions", chat(max_tokens=0),
         status=400, fragment="max_tokens: must be an integer >= 1"),
    http("api-max-tokens-negative", "POST", "/v1/completions",
         {"model": "m", "prompt": "hi", "max_tokens": -1}, status=400, fragment="max_tokens"),
    http("api-max-tokens-fraction", "POST", "/v1/chat/completions", chat(max_tokens=1.5),
         status=400, fragment="max_tokens"),
    http("api-max-tokens-huge", "POST", "/v1/chat/completions", chat(max_tokens=10**12),
         status=400, fragment="max_tokens"),
    http("api-max-completion-tokens-zero", "POST", "/v1/chat/completions",
         chat(max_completion_tokens=0), status=400, fragment="max_completion_tokens"),
    http("api-top-p-high", "POST", "/v1/chat/completions", chat(top_p=1.5), status=400,
         fragment="top_p"),
    http("api-penalty-low", "POST", "/v1/chat/completions", chat(presence_penalty=-3),
         status=400, fragment="presence_penalty"),
    http("api-n-two", "POST", "/v1/chat/completions", chat(n=2), status=400, fragment="n:"),
    http("api-seed-huge", "POST", "/v1/chat/completions", chat(seed=10**30), status=400,
         fragment="seed"),
    http("api-extra-nan", "POST", "/v1/chat/completions",
         '{"model": "m", "messages": [{"role": "user", "content": "hi"}], '
         '"logit_bias": {"50256": NaN}}', status=400, fragment="logit_bias"),
    http("api-messages-empty", "POST", "/v1/chat/completions",
         {"model": "m", "messages": []}, status=400, fragment="messages"),
    http("api-model-empty", "POST", "/v1/chat/completions", chat(model=""), status=400,
         fragment="model"),
    http("api-role-unknown", "POST", "/v1/chat/completions",
         {"model": "m", "messages": [{"role": "wizard", "content": "hi"}]}, status=400,
         fragment="role"),
    http("api-body-not-json", "POST", "/v1/chat/completions", "{nope", status=400,
         fragment="not valid JSON"),
    http("api-model-unknown", "POST", "/v1/chat/completions", chat(model="gpt-9"),
         status=404, fragment="not served here"),
    http("api-key-missing", "POST", "/v1/chat/completions", chat(), status=401,
         fragment="requires an API key", keyed=True),
    http("api-key-basic-scheme", "POST", "/v1/chat/completions", chat(), status=401,
         fragment="requires an API key", headers={"Authorization": "Basic eHl6"},
         keyed=True),
    http("api-key-unknown", "POST", "/v1/chat/completions", chat(), status=401,
         fragment="invalid or revoked", headers={"Authorization": "bearer sk-nope"},
         keyed=True),
    http("api-models-need-key", "GET", "/v1/models", status=401,
         fragment="requires an API key", keyed=True),
    http("api-docs-need-key", "GET", "/docs", status=401, fragment="requires an API key",
         keyed=True),
    http("api-openapi-needs-key", "GET", "/openapi.json", status=401,
         fragment="requires an API key", keyed=True),
]


def _snapshot(root: Path) -> dict[str, tuple]:
    """Every file and folder under `root` with its content hash and mode. SQLite's -wal and
    -shm files come and go with connections: the database's rows are compared instead."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if rel.endswith(("-wal", "-shm", "-journal")) or "__pycache__" in rel:
            continue
        st = path.stat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        out[rel] = (digest, stat.S_IMODE(st.st_mode))
        if path.suffix == ".db" and path.is_file() and path.read_bytes()[:6] == b"SQLite":
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
                tables = [r[0] for r in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
                out[rel + "#rows"] = tuple(
                    (t, tuple(conn.execute(f"SELECT * FROM {t}").fetchall())) for t in tables)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_refused(output: str, fragment: str) -> None:
    """The one shared check of a CLI refusal's output."""
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, output
    assert fragment in errors[0], f"{fragment!r} not in {errors[0]!r}"
    assert SECRET not in output, f"a file's secret content is echoed: {output}"


@pytest.fixture
def work(tmp_path, monkeypatch):
    root = tmp_path / "work"
    root.mkdir()
    _write(root)
    monkeypatch.chdir(root)
    return root


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, work, tmp_path, start_gateway, start_upstream):
    if case.request is not None:
        _http_case(case, tmp_path, start_gateway, start_upstream)
        return
    with BusyPort() as busy:
        args = [a.replace("{free_port}", str(_free_port()))
                 .replace("{busy_port}", str(busy)) for a in case.args]
        before = _snapshot(tmp_path)
        result = CliRunner().invoke(CLI, args)
        after = _snapshot(tmp_path)
    output = result.output  # stdout and stderr, as a user sees them
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception  # a traceback: show it whole
    assert result.exit_code == case.expect, output
    assert_refused(output, case.fragment)
    assert after == before, f"written or changed: {set(after.items()) ^ set(before.items())}"


class BusyPort:
    """A port something listens on, for the port-in-use row."""

    def __enter__(self) -> int:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        return self.sock.getsockname()[1]

    def __exit__(self, *exc) -> None:
        self.sock.close()


def _http_case(case: Case, tmp_path: Path, start_gateway, start_upstream) -> None:
    upstream = start_upstream()
    gw = start_gateway(deployment("m", upstream.url), general=case.gateway)
    method, path, body, headers = case.request
    before = _snapshot(tmp_path)
    rows_before = gw.ledger.rows()
    kwargs = {"content": body} if isinstance(body, str) else {"json": body}
    if body is None:
        kwargs = {}
    r = httpx.request(method, gw.url + path, headers={"Content-Type": "application/json",
                                                      **headers}, timeout=30, **kwargs)
    assert r.status_code == case.expect, r.text
    assert "Traceback" not in r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert case.fragment in err["message"], err["message"]
    assert "\n" not in err["message"], err["message"]
    assert gw.ledger.rows() == rows_before  # nothing metered, nothing reserved
    keys = gw.ledger.keys()
    assert all(k.reserved_usd == 0 and k.spent_usd == 0 for k in keys)
    assert _snapshot(tmp_path) == before


def test_the_table_covers_every_verb():
    verbs = {c.id.split("-")[0] for c in CASES}
    assert {"plan", "compress", "eval", "optimize", "report", "bench", "keys", "usage",
            "serve", "api"} <= verbs
    assert len(CASES) >= 80 and len({c.id for c in CASES}) == len(CASES)


# -- what must still work, beside the refusals --------------------------------------------
def test_bearer_scheme_is_case_insensitive_and_keys_open_models(start_gateway, start_upstream):
    upstream = start_upstream()
    gw = start_gateway(deployment("m", upstream.url), general={"require_api_key": True})
    _key_id, secret = gw.ledger.create_key("t")
    for scheme in ("Bearer", "bearer", "BEARER"):
        r = httpx.get(gw.url + "/v1/models", headers={"Authorization": f"{scheme} {secret}"})
        assert r.status_code == 200, r.text
    r = httpx.post(gw.url + "/v1/chat/completions", json=chat(max_tokens=4),
                   headers={"Authorization": f"bearer {secret}"}, timeout=30)
    assert r.status_code == 200, r.text
    assert httpx.get(gw.url + "/openapi.json",
                     headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    # /metrics (spend by key and model) is keyed too; probes stay open
    assert httpx.get(gw.url + "/metrics").status_code == 401
    metrics = httpx.get(gw.url + "/metrics", headers={"Authorization": f"Bearer {secret}"})
    assert metrics.status_code == 200 and "tokenomy_" in metrics.text
    assert httpx.get(gw.url + "/health").status_code == 200


def test_missing_database_is_not_created(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(CLI, ["usage", "--db", f"sqlite:///{tmp_path}/typo/sub/u.db"])
    assert r.exit_code == 1 and "does not exist" in r.output
    assert not (tmp_path / "typo").exists()


# -- file modes -------------------------------------------------------------------------
@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_home_ledger_and_logs_are_private(tmp_path, monkeypatch):
    from tokenomy.home import cache_dir, home, open_private
    from tokenomy.serve.ledger import Ledger

    monkeypatch.setenv("TOKENOMY_HOME", str(tmp_path / "home"))
    old = os.umask(0o022)  # the usual umask: files 0644 unless created private
    try:
        logs = cache_dir("engine-logs")
        with open_private(logs / "engine.log") as f:
            f.write(b"prompt text")
        ledger = Ledger(f"sqlite:///{home() / 'usage.db'}")
        ledger.create_key("k", budget_usd=1.0)
        ledger.close()
        own = Ledger(f"sqlite:///{tmp_path / 'new-dir' / 'keys.db'}")
        own.close()
    finally:
        os.umask(old)

    def mode(p: Path) -> int:
        return stat.S_IMODE(p.stat().st_mode)

    assert mode(home()) == 0o700, oct(mode(home()))
    assert mode(logs) == 0o700
    assert mode(logs / "engine.log") == 0o600
    for db in (home() / "usage.db", tmp_path / "new-dir" / "keys.db"):
        assert mode(db) == 0o600, f"{db}: {oct(mode(db))}"
        for side in (db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
            if side.exists():
                assert mode(side) == 0o600, f"{side}: {oct(mode(side))}"
    assert mode(tmp_path / "new-dir") == 0o700


def test_existing_home_is_tightened(tmp_path, monkeypatch):
    from tokenomy.home import cache_dir

    root = tmp_path / "home"
    root.mkdir(mode=0o755)
    root.chmod(0o755)
    monkeypatch.setenv("TOKENOMY_HOME", str(root))
    cache_dir("results")
    assert stat.S_IMODE(root.stat().st_mode) == 0o700


# -- an engine that dies at start-up, a server that is not OpenAI's --------------------
def test_engine_failing_to_start_is_one_line_naming_engine_cause_and_log(tmp_path, work):
    """`serve` with an engine that exits while starting: exit 1, one line with the
    engine, the cause from its log and the log's path; no process left behind."""
    fake_python = tmp_path / "venv" / "bin" / "python"
    fake_python.parent.mkdir(parents=True)
    fake_python.write_text("#!/bin/sh\necho 'starting the engine' >&2\n"
                           "echo 'RuntimeError: not enough memory for the KV cache' >&2\nexit 3\n")
    fake_python.chmod(0o755)
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text(json.dumps({"architectures": ["X"]}))
    config = tmp_path / "gw-dies.yaml"
    config.write_text(yaml.safe_dump({
        "model_list": [{"model_name": "dies", "params": {
            "engine": "vllm", "model": str(checkpoint), "python": str(fake_python)}}],
        "database_url": f"sqlite:///{tmp_path / 'u.db'}"}))
    result = CliRunner().invoke(CLI, ["serve", "--config", str(config), "--port",
                                      str(_free_port())])
    assert result.exit_code == 1
    assert_refused(result.output, "vllm engine for 'dies' exited with code 3")
    line = next(ln for ln in result.output.splitlines() if ln.startswith("Error:"))
    assert "not enough memory for the KV cache" in line and "engine-logs" in line


def test_a_server_that_is_not_openai_compatible(tmp_path, work):
    """bench against an HTTP server that answers HTML: one line saying so, nothing kept."""
    import http.server
    import threading

    class Html(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(b"<html>a web page</html>")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Html)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        before = _snapshot(tmp_path)
        result = CliRunner().invoke(CLI, ["bench", f"http://127.0.0.1:{server.server_port}/v1",
                                          "--requests", "1", "-o", str(tmp_path / "out")])
        assert _snapshot(tmp_path) == before
    finally:
        server.shutdown()
    assert result.exit_code == 1
    assert_refused(result.output, "listed no model")
