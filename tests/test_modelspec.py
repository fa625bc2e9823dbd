"""ModelSpec from config.json and GGUF metadata; KV-cache geometry."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tokenomy.catalog import Catalog
from tokenomy.errors import ModelSpecError
from tokenomy.modelspec import ModelSpec

CAT = Catalog.load()

LLAMA_31_8B = {
    "model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32,
    "intermediate_size": 14336, "num_attention_heads": 32, "num_key_value_heads": 8,
    "vocab_size": 128256, "max_position_embeddings": 131072, "tie_word_embeddings": False,
}
MIXTRAL = {
    "model_type": "mixtral", "hidden_size": 4096, "num_hidden_layers": 32,
    "intermediate_size": 14336, "num_attention_heads": 32, "num_key_value_heads": 8,
    "vocab_size": 32000, "max_position_embeddings": 32768, "num_local_experts": 8,
    "num_experts_per_tok": 2,
}
DEEPSEEK_V3 = {
    "model_type": "deepseek_v3", "hidden_size": 7168, "num_hidden_layers": 61,
    "intermediate_size": 18432, "moe_intermediate_size": 2048, "num_attention_heads": 128,
    "num_key_value_heads": 128, "vocab_size": 129280, "max_position_embeddings": 163840,
    "q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
    "v_head_dim": 128, "n_routed_experts": 256, "num_experts_per_tok": 8,
    "n_shared_experts": 1, "first_k_dense_replace": 3,
}
GEMMA3 = {
    "model_type": "gemma3", "vision_config": {"hidden_size": 1152, "num_hidden_layers": 27,
                                              "intermediate_size": 4304},
    "text_config": {
        "model_type": "gemma3_text", "hidden_size": 5376, "num_hidden_layers": 62,
        "intermediate_size": 21504, "num_attention_heads": 32, "num_key_value_heads": 16,
        "head_dim": 128, "vocab_size": 262208, "max_position_embeddings": 131072,
        "sliding_window": 1024,
        "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 10
        + ["sliding_attention"] * 2,
    },
    "tie_word_embeddings": True,
}
QWEN3_MOE = {
    "model_type": "qwen3_moe", "hidden_size": 4096, "num_hidden_layers": 94,
    "intermediate_size": 12288, "moe_intermediate_size": 1536, "num_attention_heads": 64,
    "num_key_value_heads": 4, "head_dim": 128, "vocab_size": 151936,
    "max_position_embeddings": 40960, "num_experts": 128, "num_experts_per_tok": 8,
    "sliding_window": None, "use_sliding_window": False,
}


def _write(tmp_path, cfg, name="model"):
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))
    return d


@pytest.mark.parametrize("cfg,catalog_name", [
    (LLAMA_31_8B, "llama-3.1-8b"),
    (MIXTRAL, "mixtral-8x7b"),
    (DEEPSEEK_V3, "deepseek-v3"),
    (QWEN3_MOE, "qwen3-235b-a22b"),
])
def test_config_json_gives_catalog_params(tmp_path, cfg, catalog_name):
    spec = ModelSpec.from_hf_config(_write(tmp_path, cfg))
    known = CAT.model(catalog_name)
    assert spec.total_params == pytest.approx(known.total_params, rel=1e-3), catalog_name
    assert spec.active_params == pytest.approx(known.active_params, rel=1e-3)


def test_mla_and_moe_fields(tmp_path):
    spec = ModelSpec.from_hf_config(_write(tmp_path, DEEPSEEK_V3) / "config.json")
    assert spec.attention.kind == "mla" and spec.attention.kv_lora_rank == 512
    assert spec.moe.first_dense_layers == 3 and spec.num_moe_layers == 58
    # MLA caches one latent (+ rope key) per layer, the same on every TP rank
    assert spec.kv_elements_per_layer_token(1) == 512 + 64
    assert spec.kv_elements_per_layer_token(8) == 512 + 64


def test_gemma3_nested_text_config_and_windows(tmp_path):
    spec = ModelSpec.from_hf_config(_write(tmp_path, GEMMA3))
    assert spec.attention.sliding_window == 1024 and spec.attention.full_attention_every == 6
    assert spec.vision is not None and spec.tie_embeddings
    assert spec.total_params == pytest.approx(CAT.model("gemma-3-27b").total_params, rel=0.01)
    full_kv = spec.kv_elements_per_layer_token() * spec.num_layers * 100_000
    assert spec.kv_elements(100_000) < 0.25 * full_kv, "sliding layers must cap at the window"


def test_gqa_kv_scales_with_kv_heads_and_replicates_beyond():
    spec = CAT.model("llama-3.1-70b")  # 8 KV heads
    assert spec.kv_elements_per_layer_token(1) == 2 * 8 * 128
    assert spec.kv_elements_per_layer_token(8) == 2 * 1 * 128
    qwen = CAT.model("qwen3-235b-a22b")  # 4 KV heads: TP=8 replicates each twice
    assert qwen.kv_elements_per_layer_token(8) == qwen.kv_elements_per_layer_token(4)


@pytest.mark.parametrize("content,match", [
    (None, "no config.json"),
    ("{not json", "not valid JSON"),
    (json.dumps({"model_type": "bert", "hidden_size": 8}), "decoder"),
])
def test_bad_config_json(tmp_path, content, match):
    d = tmp_path / "m"
    d.mkdir()
    if content is not None:
        (d / "config.json").write_text(content)
    with pytest.raises(ModelSpecError, match=match):
        ModelSpec.from_hf_config(d)


def test_gguf_metadata(tmp_path):
    import gguf

    path = tmp_path / "tiny.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(4)
    w.add_embedding_length(256)
    w.add_feed_forward_length(512)
    w.add_head_count(8)
    w.add_head_count_kv(2)
    w.add_context_length(2048)
    w.add_vocab_size(1000)
    w.add_tensor("token_embd.weight", np.zeros((1000, 256), dtype=np.float32))
    w.add_tensor("blk.0.ffn_gate.weight", np.zeros((512, 256), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    spec = ModelSpec.from_gguf(path)
    assert (spec.num_layers, spec.hidden_size, spec.intermediate_size) == (4, 256, 512)
    assert (spec.attention.num_heads, spec.attention.num_kv_heads) == (8, 2)
    assert spec.vocab_size == 1000 and spec.max_context == 2048
    assert spec.tie_embeddings, "no output.weight tensor: tied"
    assert spec.ffn_matrices == 3


def test_not_a_gguf(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"nope" * 10)
    with pytest.raises(ModelSpecError):
        ModelSpec.from_gguf(bad)
