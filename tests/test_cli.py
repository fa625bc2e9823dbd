"""The CLI through click's CliRunner, and the no-torch import guarantee in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from tokenomy.cli import commands

CLI = commands()


def run(*args):
    return CliRunner().invoke(CLI, list(args), catch_exceptions=False)


def test_plan_table():
    r = run("plan", "llama-4-scout", "--gpu", "H100-SXM")
    assert r.exit_code == 0, r.output
    assert "estimated" in r.output and "Recommendation" in r.output
    assert "TP=4" in r.output  # BF16 deployable layout


def test_plan_json():
    r = run("plan", "llama-3.1-8b", "--gpu", "L4", "--scheme", "fp8", "--json",
            "--price", "L4=0.5", "--rate", "2")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["rows"][0]["usd_per_gpu_hour"] == 0.5
    assert data["workload"]["requests_per_s"] == 2
    # the method names the engine profile each row used and what its band rests on
    assert data["method"].startswith("estimated, not measured")
    assert "vllm: 10th-90th percentile" in data["method"], data["method"]


@pytest.mark.parametrize("args,match", [
    (["plan", "nosuchmodel"], "unknown model"),
    (["plan", "llama-3.1-8b", "--rate", "-1"], "> 0"),
    (["plan", "llama-3.1-8b", "--price", "H100-SXM=abc"], "USD per GPU-hour"),
    (["plan", "llama-3.1-8b", "--gpu", "H100-SXN"], "Did you mean"),
])
def test_plan_errors_are_one_line(args, match):
    r = CliRunner().invoke(CLI, args)
    assert r.exit_code == 1, r.output
    assert r.output.startswith("Error:") and match in r.output
    assert "Traceback" not in r.output


@pytest.mark.parametrize("kind", ["gpus", "models", "schemes", "workloads"])
def test_catalog(kind):
    r = run("catalog", kind)
    assert r.exit_code == 0, r.output
    r = run("catalog", kind, "--json")
    assert isinstance(json.loads(r.output), list)


def test_catalog_cpu_shows_what_auto_llmcompressor_writes():
    r = run("catalog", "cpu", "--json")
    assert r.exit_code == 0, r.output
    vllm = {v["kind"]: v for v in json.loads(r.output)["engines"] if v["engine"] == "vllm"}
    assert "mixed:dense+wna16-int4" in vllm  # runs where wna16-int4 does: AVX-512 only
    assert vllm["mixed:dense+wna16-int4"]["ok"] == vllm["wna16-int4"]["ok"]
    w8 = vllm["mixed:dense+wna16-int4+wna16-int8"]
    assert not w8["ok"], w8  # no W8A16 kernel on any CPU
    if vllm["wna16-int4"]["ok"]:  # else the 4-bit modules fail first, with their advice
        assert "--types w4a16,bf16" in w8["instead"], w8


def test_compress_list_and_errors(tmp_path):
    r = run("compress", "--list")
    assert r.exit_code == 0 and "gguf-q4_k_m" in r.output
    r = CliRunner().invoke(CLI, ["compress", str(tmp_path / "none"), "-o", str(tmp_path / "o")])
    assert r.exit_code == 1 and "does not exist" in r.output


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ}, timeout=120)


def test_import_and_plan_do_not_import_torch():
    code = (
        "import sys, tokenomy\n"
        "assert 'torch' not in sys.modules, 'import tokenomy'\n"
        "from click.testing import CliRunner\n"
        "from tokenomy.cli import commands\n"
        "r = CliRunner().invoke(commands(), ['plan', 'llama-3.1-8b', '--gpu', 'H100-SXM'])\n"
        "assert r.exit_code == 0, r.output\n"
        "assert 'torch' not in sys.modules, 'tokenomy plan'\n"
        "assert 'transformers' not in sys.modules\n"
        "tokenomy.compress, tokenomy.evaluate, tokenomy.optimize\n"
        "assert 'torch' not in sys.modules, 'the lazy API'\n"
    )
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr


def test_api_is_pinned():
    import tokenomy

    assert tokenomy.__all__ == ["ModelSpec", "PlanResult", "TokenomyError", "compress",
                                "evaluate", "optimize", "plan"]
    for name in tokenomy.__all__:
        assert callable(getattr(tokenomy, name)) or isinstance(getattr(tokenomy, name), type)


@pytest.mark.slow
def test_other_libraries_output_goes_to_a_named_log(tmp_path):
    """compress as a user runs it: tokenomy's progress and summary on the terminal; the
    libraries' bars, INFO lines and warnings in a log file the output names."""
    from tiny import make_model_dir

    model = make_model_dir(tmp_path / "base")
    env = {**os.environ, "TOKENOMY_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "tokenomy", "compress", str(model),
                           "--scheme", "w8a16", "-o", str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    terminal = done.stdout + done.stderr
    assert "Wrote" in done.stdout and "finite logits" in done.stdout
    for noise in ("Compressing model", "INFO", "it/s", "UserWarning"):
        assert noise not in terminal, f"{noise!r} reached the terminal:\n{terminal}"
    (log,) = (tmp_path / "home" / "logs").iterdir()
    assert str(log) in done.stderr
    assert "Compressing model" in log.read_text()
    assert log.stat().st_mode & 0o777 == 0o600
