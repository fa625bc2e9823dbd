"""Every scheme that runs on a CPU, compressed once on a tiny random-weight model and
reloaded: the artifact is the format the scheme names, and it still computes the base
model (issue 16). w4a16, w8a16, fp8-dynamic and w4a16-gptq are in test_compress.py."""

from __future__ import annotations

import json

import pytest

from tiny import logits_of, make_model_dir, make_tokenizer, write_jsonl
from tokenomy.compress import compress
from tokenomy.compress.artifact import read_manifest

LINEARS = [f"model.layers.{i}.{block}.{proj}" for i in range(2)
           for block, projs in (("self_attn", ("q", "k", "v", "o")),
                                ("mlp", ("gate", "up", "down")))
           for proj in (f"{p}_proj" for p in projs)]  # every Linear a recipe targets
# a token calibration set (2 x 32 tokens): 4 x 64 doubles the time, same cosines
CALIBRATION = dict(calibration_samples=2, max_seq_length=32)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("tiny") / "base")  # hidden 64, ffn 128


@pytest.fixture(scope="module")
def compressed(tiny_model, tmp_path_factory):
    """scheme -> (output directory, manifest), each compressed once per module."""
    root = tmp_path_factory.mktemp("compressed")
    data = write_jsonl(root / "calib.jsonl", n=40)
    done = {}

    def make(scheme: str):
        if scheme not in done:
            manifest = compress(tiny_model, scheme, root / scheme, calibration=str(data),
                                **CALIBRATION)
            done[scheme] = root / scheme, manifest
        return done[scheme]

    return make


def _cosine(a, b) -> float:
    return float((a * b).sum() / ((a * a).sum() ** 0.5 * (b * b).sum() ** 0.5))


def _quant_config(out) -> dict | None:
    return json.loads((out / "config.json").read_text()).get("quantization_config")


def _tensors(out) -> dict:
    from safetensors.torch import load_file

    return load_file(out / "model.safetensors")


# -- llm-compressor schemes: reloaded in plain transformers on this CPU ---------------
# logits cosine against the base (seen on this model: w8a8-int8 0.997, nvfp4a16 0.899,
# w4a16-awq 0.868, sparse-2of4 0.287 -- half of every random weight is gone; another
# random model scores ~0.00)
SLOW = pytest.mark.slow  # SmoothQuant+GPTQ ~3 s, AWQ ~5 s here (SparseGPT ~1.5 s)


@pytest.mark.parametrize("scheme,min_cosine", [
    pytest.param("w8a8-int8", 0.98, marks=SLOW),
    ("nvfp4a16", 0.8),  # transformers decompresses NVFP4 to dense on a CPU
    pytest.param("w4a16-awq", 0.7, marks=SLOW),
    ("sparse-2of4", 0.15),
])
def test_reloads_and_computes_the_base_model(tiny_model, compressed, scheme, min_cosine):
    out, manifest = compressed(scheme)
    assert read_manifest(out) == manifest
    assert manifest.scheme.name == scheme and manifest.output_format == "compressed-tensors"
    assert manifest.verified.startswith("transformers")
    if manifest.scheme.calibration:
        assert manifest.calibration is not None and manifest.calibration.samples == 2
    similarity = _cosine(logits_of(tiny_model), logits_of(out))
    assert similarity > min_cosine, f"{scheme}: logits cosine {similarity:.3f} against the base"


@SLOW
def test_w8a8_int8_is_int8_weights_and_dynamic_per_token_int8_activations(compressed):
    import torch

    out, manifest = compressed("w8a8-int8")
    config = _quant_config(out)
    group = config["config_groups"]["group_0"]
    assert config["format"] == "int-quantized", config["format"]
    assert group["weights"].items() >= {"num_bits": 8, "type": "int", "symmetric": True,
                                        "strategy": "channel"}.items(), group["weights"]
    assert group["input_activations"].items() >= {"num_bits": 8, "type": "int",
                                                  "dynamic": True, "strategy": "token"}.items()
    assert "SmoothQuantModifier" in manifest.recipe and "GPTQModifier" in manifest.recipe
    tensors = _tensors(out)
    q = tensors["model.layers.0.self_attn.q_proj.weight"]
    assert q.dtype == torch.int8 and tuple(q.shape) == (64, 64), (q.dtype, q.shape)
    assert tuple(tensors["model.layers.0.self_attn.q_proj.weight_scale"].shape) == (64, 1)


def test_nvfp4a16_packs_two_fp4_weights_a_byte_with_fp8_scales_per_16(compressed):
    import torch

    out, _ = compressed("nvfp4a16")
    config = _quant_config(out)
    weights = config["config_groups"]["group_0"]["weights"]
    assert config["format"] == "nvfp4-pack-quantized", config["format"]
    assert weights.items() >= {"num_bits": 4, "type": "float", "group_size": 16,
                               "scale_dtype": "torch.float8_e4m3fn"}.items(), weights
    assert config["config_groups"]["group_0"]["input_activations"] is None  # a16
    tensors = _tensors(out)
    for prefix in LINEARS:
        packed, scale = tensors[f"{prefix}.weight_packed"], tensors[f"{prefix}.weight_scale"]
        width = 128 if prefix.endswith("down_proj") else 64  # the Linear's input width
        assert packed.dtype == torch.uint8 and f"{prefix}.weight" not in tensors, prefix
        assert packed.shape[1] == width // 2, (prefix, packed.shape)  # 2 x 4 bits a byte
        assert scale.dtype == torch.float8_e4m3fn, (prefix, scale.dtype)
        assert tuple(scale.shape) == (packed.shape[0], width // 16), (prefix, scale.shape)
        assert tensors[f"{prefix}.weight_global_scale"].dtype == torch.float32
    assert tensors["model.embed_tokens.weight"].dtype == torch.bfloat16  # not targeted


@SLOW
def test_w4a16_awq_is_int4_groups_from_awq(compressed):
    out, manifest = compressed("w4a16-awq")
    weights = _quant_config(out)["config_groups"]["group_0"]["weights"]
    assert weights["num_bits"] == 4 and weights["group_size"] == manifest.group_size == 64
    assert "AWQModifier" in manifest.recipe
    assert "model.layers.0.mlp.down_proj.weight_packed" in _tensors(out)


def test_sparse_2of4_zeroes_two_of_every_four_weights(compressed):
    out, manifest = compressed("sparse-2of4")
    # compressed-tensors 0.19 no longer writes sparse formats ("Sparse compression is no
    # longer supported"): the checkpoint is dense bf16 with no sparsity_config, and the
    # 2:4 structure is in the weights themselves and in recipe.yaml
    assert _quant_config(out) is None
    assert "SparseGPTModifier" in manifest.recipe and "mask_structure: '2:4'" in manifest.recipe
    tensors = _tensors(out)
    for prefix in LINEARS:
        weight = tensors[f"{prefix}.weight"]  # [out, in]: groups of 4 along the input
        zeros = (weight.reshape(-1, 4) == 0).sum(dim=1)
        assert int(zeros.min()) >= 2, f"{prefix}: a group of 4 with {int(zeros.min())} zeros"
    embedding = tensors["model.embed_tokens.weight"]  # the tied head is not pruned
    assert float((embedding == 0).float().mean()) < 0.01


# -- GGUF schemes: llama.cpp's quantizer, reloaded with llama-cpp-python ---------------
# A k-quant works on rows of 256; llama.cpp stores a tensor whose rows are not a multiple
# of 256 in a block-32 type instead (tensor_type_fallback in llama-quant.cpp). The tiny
# model's FFN width 384 sends both ffn_down tensors down that path.
FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0",
            "Q8_0": "Q8_0"}  # Q8_0 is block-32 already: nothing to fall back from
# scheme: (its main type, the types of its mix): the _M/_K mixes keep token_embd (the tied
# output) in Q6_K and raise attn_v/attn_output/ffn_down a step (seen on this model)
GGUF_TYPES = {"gguf-q2_k": ("Q2_K", {"Q2_K", "Q3_K", "Q6_K"}),
              "gguf-q3_k_m": ("Q3_K", {"Q3_K", "Q4_K", "Q5_K", "Q6_K"}),
              "gguf-q4_k_m": ("Q4_K", {"Q4_K", "Q6_K"}),
              "gguf-q6_k": ("Q6_K", {"Q6_K"}),
              "gguf-q8_0": ("Q8_0", {"Q8_0"})}


def write_llama_gguf(path, seed: int = 0, hidden: int = 256, ffn: int = 384, layers: int = 2):
    """A complete tiny llama GGUF in F32 (random weights, the tiny BPE tokenizer, tied
    output) that llama.cpp loads and quantizes; ~4 MB."""
    import gguf
    import numpy as np

    tok = make_tokenizer()
    vocab = sorted(tok.get_vocab(), key=tok.get_vocab().get)
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    heads, kv_heads, rng = 4, 2, np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    for add, value in ((w.add_block_count, layers), (w.add_context_length, 256),
                       (w.add_embedding_length, hidden), (w.add_feed_forward_length, ffn),
                       (w.add_head_count, heads), (w.add_head_count_kv, kv_heads),
                       (w.add_rope_dimension_count, hidden // heads),
                       (w.add_layer_norm_rms_eps, 1e-5), (w.add_vocab_size, len(vocab)),
                       (w.add_file_type, gguf.LlamaFileType.ALL_F32),
                       (w.add_tokenizer_model, "gpt2"), (w.add_tokenizer_pre, "default"),
                       (w.add_token_list, vocab),
                       (w.add_token_types, [gguf.TokenType.CONTROL if t in tok.all_special_tokens
                                            else gguf.TokenType.NORMAL for t in vocab]),
                       (w.add_token_merges, [m if isinstance(m, str) else " ".join(m)
                                             for m in merges]),
                       (w.add_bos_token_id, tok.bos_token_id),
                       (w.add_eos_token_id, tok.eos_token_id)):
        add(value)

    def matrix(rows, cols):  # [rows, cols]: cols is the input width
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    kv = hidden // heads * kv_heads
    w.add_tensor("token_embd.weight", matrix(len(vocab), hidden))
    w.add_tensor("output_norm.weight", np.ones(hidden, dtype=np.float32))
    for i in range(layers):
        for name, shape in (("attn_q", (hidden, hidden)), ("attn_k", (kv, hidden)),
                            ("attn_v", (kv, hidden)), ("attn_output", (hidden, hidden)),
                            ("ffn_gate", (ffn, hidden)), ("ffn_up", (ffn, hidden)),
                            ("ffn_down", (hidden, ffn))):
            w.add_tensor(f"blk.{i}.{name}.weight", matrix(*shape))
        for name in ("attn_norm", "ffn_norm"):
            w.add_tensor(f"blk.{i}.{name}.weight", np.ones(hidden, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    pytest.importorskip("llama_cpp")
    return write_llama_gguf(tmp_path_factory.mktemp("gguf-source") / "tiny.gguf")


def _gguflogits_of(path):
    import numpy as np

    from tokenomy.compress.gguf_backend import load_llama

    llm = load_llama(path, n_ctx=64, logits_all=True)
    tokens = llm.tokenize(b"The quick brown fox jumps over the lazy dog", add_bos=True)
    llm.eval(tokens)
    logits = np.asarray(llm.scores[:len(tokens)])  # [T, V]
    assert np.isfinite(logits).all(), f"{path}: NaN/inf logits"
    return logits


# logits cosine against the F32 source in llama.cpp (seen: Q2_K 0.781, Q3_K_M 0.949,
# Q4_K_M 0.976, Q6_K 0.9975, Q8_0 0.9997; another random model 0.0008)
@pytest.mark.parametrize("scheme,min_cosine", [
    ("gguf-q2_k", 0.65), ("gguf-q3_k_m", 0.9), ("gguf-q4_k_m", 0.93), ("gguf-q6_k", 0.99),
    ("gguf-q8_0", 0.995)])
def test_gguf_writes_the_named_types_and_reloads(tiny_gguf, tmp_path, scheme, min_cosine):
    import gguf

    out = tmp_path / scheme
    manifest = compress(tiny_gguf, scheme, out)
    gguf_type = manifest.scheme.gguf_type
    assert read_manifest(out) == manifest and manifest.output_format == "gguf"
    assert manifest.files == [f"tiny.{gguf_type}.gguf"]
    assert json.loads(manifest.recipe)["ftype"] == gguf_type
    assert manifest.verified.startswith("llama-cpp-python load + forward pass")

    main, mix = GGUF_TYPES[scheme]
    tensors = gguf.GGUFReader(str(out / manifest.files[0])).tensors
    norms = {t.tensor_type.name for t in tensors if len(t.shape) == 1}
    # shape[0] is a matrix's row (input) width
    wide = {t.name: t.tensor_type.name for t in tensors if len(t.shape) == 2
            and int(t.shape[0]) % 256 == 0}
    narrow = {t.name: t.tensor_type.name for t in tensors if len(t.shape) == 2
              and int(t.shape[0]) % 256}
    assert norms == {"F32"}, norms
    assert set(wide.values()) <= mix and main in wide.values(), wide
    assert set(narrow.values()) <= {FALLBACK[t] for t in mix}, narrow
    assert sorted(narrow) == ["blk.0.ffn_down.weight", "blk.1.ffn_down.weight"], narrow
    if main != "Q8_0":
        assert manifest.notes == ["llama.cpp fell back to another type for 2 of 20 tensor(s)"]

    similarity = _cosine(_gguflogits_of(tiny_gguf), _gguflogits_of(out / manifest.files[0]))
    assert similarity > min_cosine, f"{scheme}: logits cosine {similarity:.4f} against F32"
