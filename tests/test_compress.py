"""compress on tiny random-weight models: artifacts, manifests, refusals."""

from __future__ import annotations

import json

import pytest

from tiny import logits_of, make_model_dir, write_jsonl
from tokenomy.compress import compress, get_scheme
from tokenomy.compress.artifact import read_manifest
from tokenomy.compress.budget import check_fits
from tokenomy.compress.schemes import SCHEMES, choose_group_size
from tokenomy.errors import InvalidInputError, NotFoundError, TokenomyError


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("tiny") / "base")


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENOMY_HOME", str(tmp_path / "home"))


def _quant_config(out):
    cfg = json.loads((out / "config.json").read_text())
    return cfg.get("quantization_config") or cfg.get("compression_config")


# logits cosine against the base after a reload (seen: 0.88, 0.999, 0.985; another
# random model scores ~0.00)
@pytest.mark.parametrize("scheme,min_cosine", [("w4a16", 0.8), ("w8a16", 0.99),
                                               ("fp8-dynamic", 0.95)])
def test_data_free_schemes_write_reloadable_checkpoints(tiny_model, tmp_path, scheme,
                                                        min_cosine):
    out = tmp_path / scheme
    manifest = compress(tiny_model, scheme, out)
    assert _quant_config(out), f"{scheme}: no quantization config in config.json"
    assert read_manifest(out) == manifest
    # reloaded in plain transformers, the checkpoint still computes the base model
    base, reloaded = logits_of(tiny_model), logits_of(out)
    similarity = float((base * reloaded).sum() / (base.norm() * reloaded.norm()))
    assert similarity > min_cosine, f"{scheme}: logits cosine {similarity:.3f} against the base"
    assert manifest.source.sha256 and len(manifest.source.sha256) == 64
    assert manifest.size_on_disk_bytes > 0 and manifest.wall_time_s > 0
    assert "llmcompressor" in manifest.tool_versions
    assert manifest.calibration is None
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir()), "partial dir left"


def test_group_size_is_chosen_from_the_shapes(tiny_model, tmp_path):
    manifest = compress(tiny_model, "w4a16", tmp_path / "out")
    # hidden 64 / intermediate 128: 128 does not divide 64, so 64
    assert manifest.group_size == 64, manifest.group_size_reason
    assert "64" in manifest.group_size_reason
    weights = _quant_config(tmp_path / "out")["config_groups"]["group_0"]["weights"]
    assert weights["group_size"] == 64 and weights["num_bits"] == 4


def test_choose_group_size():
    assert choose_group_size({"a": 4096, "b": 14336}) == (
        128, "group size 128: divides every input width ([4096, 14336])")
    size, why = choose_group_size({"q": 576, "down": 1536})
    assert size == 64 and "576" in why
    with pytest.raises(InvalidInputError, match="per-channel"):
        choose_group_size({"odd": 100})


def test_gptq_uses_calibration_data(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "calib.jsonl", n=40)
    manifest = compress(tiny_model, "w4a16-gptq", tmp_path / "out", calibration=str(data),
                        calibration_samples=4, max_seq_length=64)
    assert manifest.calibration is not None
    assert manifest.calibration.dataset == str(data)
    assert 1 <= manifest.calibration.samples <= 4
    assert manifest.calibration.tokens > 0
    assert "GPTQModifier" in manifest.recipe


def test_refuses_to_overwrite(tiny_model, tmp_path):
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(InvalidInputError, match="already exists"):
        compress(tiny_model, "w4a16", out)
    assert (out / "keep.txt").read_text() == "mine"


def test_refuses_output_inside_source(tiny_model):
    with pytest.raises(InvalidInputError, match="inside the source"):
        compress(tiny_model, "w4a16", tiny_model / "sub")
    assert not (tiny_model / "sub").exists()


def test_unknown_scheme_lists_close_names(tiny_model, tmp_path):
    with pytest.raises(NotFoundError, match="w4a16"):
        compress(tiny_model, "w4a61", tmp_path / "out")


def test_missing_path(tmp_path):
    with pytest.raises(InvalidInputError, match="does not exist"):
        compress(tmp_path / "nope", "w4a16", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_corrupt_safetensors_gives_clear_error(tiny_model, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(TokenomyError, match="not a valid safetensors"):
        compress(broken, "w4a16", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / ".out.partial").exists()


def test_gguf_scheme_needs_gguf_source(tiny_model, tmp_path):
    with pytest.raises(InvalidInputError, match="convert_hf_to_gguf"):
        compress(tiny_model, "gguf-q8_0", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_memory_budget_refuses_with_numbers():
    with pytest.raises(InvalidInputError, match=r"10\.0 GiB.*1\.0 GiB"):
        check_fits(10 * 2**30, available=2**30)
    check_fits(2**20, available=2**30)


def test_registry_covers_the_issue():
    wanted = {"w8a16", "w4a16", "w4a16-gptq", "w4a16-awq", "w8a8-int8", "fp8-dynamic",
              "nvfp4a16", "sparse-2of4", "gguf-q8_0", "gguf-q6_k", "gguf-q4_k_m"}
    assert wanted <= set(SCHEMES)
    for scheme in SCHEMES.values():
        assert scheme.description
        assert type(scheme).model_validate_json(scheme.model_dump_json()) == scheme
    assert get_scheme("GGUF_Q8_0").name == "gguf-q8_0"
