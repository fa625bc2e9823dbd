"""The real packaged SmolLM2-135M-Instruct, small settings. Marked `integration`."""

from __future__ import annotations

import pytest

from tokenomy.compress import compress
from tokenomy.evaluate import EvalConfig, evaluate
from tokenomy.sources import load_transformers, resolve_source

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def shared_home(tmp_path_factory):
    """One cache for the module: the GGUF -> transformers conversion is done once."""
    return tmp_path_factory.mktemp("home")


@pytest.fixture(autouse=True)
def _home(shared_home, monkeypatch):
    monkeypatch.setenv("TOKENOMY_HOME", str(shared_home))


def test_gguf_pitfalls_are_mended(tmp_path):
    model, tokenizer = load_transformers(resolve_source(None))
    assert tokenizer.eos_token == "<|im_end|>", tokenizer.eos_token
    assert model.generation_config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.save_pretrained(tmp_path / "saved")  # refused while the GGUF quantizer is set
    assert (tmp_path / "saved" / "config.json").is_file()


def test_perplexity_agrees_with_llama_cpp():
    """transformers (dequantized GGUF) vs llama.cpp on the same Hamlet tokens."""
    gguf = resolve_source(None).path
    r = evaluate(gguf, None, EvalConfig(dataset="shakespeare:hamlet", windows=6, prompts=1,
                                        max_new_tokens=16, answer_tokens=8))
    assert abs(r.perplexity_change_pct) < 1.0, (
        f"transformers {r.base.perplexity:.3f} vs llama.cpp {r.candidate.perplexity:.3f}"
    )
    assert r.kld_mean < 0.01, f"KLD {r.kld_mean}"
    assert r.candidate.engine == "llama.cpp" and r.base.engine == "transformers"


@pytest.mark.parametrize("scheme,max_kld", [("gguf-q8_0", 0.02), ("w8a16", 0.02)])
def test_compress_and_evaluate(tmp_path, scheme, max_kld):
    out = tmp_path / scheme
    manifest = compress(None, scheme, out)
    assert manifest.source.name == "SmolLM2-135M-Instruct"
    r = evaluate(out, None, EvalConfig(windows=2, prompts=2, max_new_tokens=16,
                                       answer_tokens=8))
    assert r.kld_mean < max_kld, f"{scheme}: KLD {r.kld_mean}"
    assert r.top1_agreement > 0.9, f"{scheme}: top-1 {r.top1_agreement}"
    assert abs(r.perplexity_change_pct) < 5, f"{scheme}: PPL {r.perplexity_change_pct:+.2f}%"
