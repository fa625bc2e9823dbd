"""Every bad input a user can give, in one table (`bad_input_cases`): the CLI verbs
through click's CliRunner, the gateway through HTTP. Each row: the command or request, the
expected exit code or HTTP status, and a fragment of the one-line message. One shared
assertion checks: no traceback, a single `Error:` line (or one OpenAI error object), no
secret echoed, and nothing written or changed under the test's temporary directory.

Rows are fast by design: every one is refused before a model loads or an engine starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import stat
from pathlib import Path

import httpx
import pytest
import yaml
from click.testing import CliRunner

from bad_input_cases import API, CASES, CLI, GPU, Case, chat
from gateway_harness import deployment

SECRET = "sk-live-SECRET-0123456789"  # in files the configs point at; never in a message


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
