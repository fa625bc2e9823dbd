"""The OpenVINO IR schemes (ov-int8, ov-int4: optimum-intel's export, NNCF weights) on a
tiny random-weight model: the IR is what `engine: openvino` loads, it still computes the
base model, `eval` measures it with OpenVINO's runtime, and bad input writes nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tiny import logits_of, make_model_dir
from tokenomy.compress import compress
from tokenomy.compress.artifact import read_manifest
from tokenomy.errors import InvalidInputError
from tokenomy.sources import resolve_source

pytest.importorskip("openvino")
pytestmark = pytest.mark.slow  # optimum-intel's export: ~20 s each, mostly imports


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("tiny") / "base")  # hidden 64, ffn 128


@pytest.fixture(scope="module")
def exported(tiny_model, tmp_path_factory):
    from tokenomy.compress.openvino_backend import export_path

    try:
        export_path()
    except InvalidInputError as e:
        pytest.skip(str(e))
    root = tmp_path_factory.mktemp("ov")
    done = {}

    def make(scheme: str):
        if scheme not in done:
            done[scheme] = root / scheme, compress(tiny_model, scheme, root / scheme)
        return done[scheme]

    return make


def _ov_logits(out, ids) -> np.ndarray:
    from tokenomy.evaluate.ov_scorer import OpenVINOScorer

    return OpenVINOScorer(out)._forward(ids, 0)


def _cosine(a, b) -> float:
    return float((a * b).sum() / ((a * a).sum() ** 0.5 * (b * b).sum() ** 0.5))


# cosine of the IR's logits against the base's in transformers (seen here: ov-int8 0.9999,
# ov-int4 0.89; another random model scores ~0.0)
@pytest.mark.parametrize("scheme,min_cosine,bits", [("ov-int8", 0.995, "8"),
                                                    ("ov-int4", 0.8, "4")])
def test_exports_an_ir_that_computes_the_base_model(tiny_model, exported, scheme, min_cosine,
                                                    bits):
    out, manifest = exported(scheme)
    assert read_manifest(out) == manifest and manifest.output_format == "openvino-ir"
    for name in ("openvino_model.xml", "openvino_model.bin", "openvino_tokenizer.xml",
                 "openvino_detokenizer.xml"):
        assert (out / name).is_file(), name
    assert manifest.verified.startswith("OpenVINO runtime")
    assert resolve_source(out).kind == "openvino"
    assert f"int{bits}" in json.loads(manifest.recipe)["optimum-cli export openvino"]
    if bits == "4":  # 64 divides the hidden (64) and FFN (128) widths, 128 does not
        assert manifest.group_size == 64
    xml = (out / "openvino_model.xml").read_text()
    assert f'element_type="u{bits}"' in xml or f'element_type="i{bits}"' in xml
    similarity = _cosine(logits_of(tiny_model)[0].numpy(), _ov_logits(out, list(range(1, 33))))
    assert similarity > min_cosine, f"{scheme}: logits cosine {similarity:.4f}"


def test_eval_measures_the_ir_with_openvino(tiny_model, exported, tmp_path):
    from tiny import write_jsonl
    from tokenomy.evaluate import EvalConfig, evaluate

    out, _ = exported("ov-int8")
    data = write_jsonl(tmp_path / "d.jsonl", n=12)
    result = evaluate(out, tiny_model, EvalConfig(dataset=str(data), windows=2,
                                                  window_tokens=32, prompts=2,
                                                  answer_tokens=4, max_new_tokens=4))
    assert result.candidate.engine == "openvino"
    assert 0 <= result.kld_mean < 0.05


def test_an_ir_is_not_compressed_again(exported, tmp_path):
    out, _ = exported("ov-int8")
    with pytest.raises(InvalidInputError, match="OpenVINO IR, compressed already"):
        compress(out, "ov-int4", tmp_path / "again")
    assert not (tmp_path / "again").exists()


def test_missing_optimum_intel_says_how_to_install_and_writes_nothing(tiny_model, tmp_path,
                                                                      monkeypatch):
    monkeypatch.setenv("TOKENOMY_OPTIMUM_INTEL", str(tmp_path / "nowhere"))
    with pytest.raises(InvalidInputError, match="make install"):
        compress(tiny_model, "ov-int4", tmp_path / "out")
    assert not any(p.name.endswith("out") or "partial" in p.name for p in tmp_path.iterdir())


def test_engine_openvino_serves_the_ir_through_the_gateway(exported, tmp_path):
    """`engine: openvino` loads the exported directory (not a GGUF) and answers the official
    client through the gateway, streaming and not, with usage in the ledger."""
    pytest.importorskip("openvino_genai")
    import openai

    from fake_upstream import ServerThread
    from tokenomy.serve.app import GatewayState, Upstream, create_app
    from tokenomy.serve.config import Deployment, GatewayConfig
    from tokenomy.serve.engines import Engine

    out, _ = exported("ov-int8")
    deployment = Deployment.model_validate({
        "model_name": "tiny-ov", "params": {"engine": "openvino", "model": str(out),
                                            "parallel": 2},
        "model_info": {"input_cost_per_token": 1e-7, "output_cost_per_token": 2e-7}})
    engine = Engine(deployment, log_dir=tmp_path / "logs")
    engine.start()
    try:
        engine.wait_healthy(120)
        config = GatewayConfig(model_list=[deployment], cache={"exact": False},
                               database_url=f"sqlite:///{tmp_path / 'usage.db'}")
        state = GatewayState(config, {deployment.id: Upstream(deployment, engine.base_url,
                                                              engine.model_id)})
        with ServerThread(create_app(state)) as server:
            client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="any")
            reply = client.chat.completions.create(
                model="tiny-ov", max_tokens=6, temperature=0,
                messages=[{"role": "user", "content": "To be, or not to be"}])
            assert reply.usage.prompt_tokens > 3 and reply.usage.completion_tokens > 0
            chunks = list(client.chat.completions.create(
                model="tiny-ov", max_tokens=6, temperature=0, stream=True,
                messages=[{"role": "user", "content": [{"type": "text", "text": "The quick"}]}],
                stream_options={"include_usage": True}))
            assert chunks[-1].usage.completion_tokens > 0
        rows = state.ledger.rows()
    finally:
        engine.stop()
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert all(r["cost_usd"] > 0 for r in rows)
