"""Catalogs: schema-validated data with sources; parameter counts computed and checked."""

from __future__ import annotations

import pytest

from tokenomy.catalog import Catalog, default_catalog
from tokenomy.errors import CatalogError, NotFoundError

CAT = Catalog.load()
GPUS = ["A10G", "L4", "L40S", "A100-40GB", "A100-80GB", "H100-SXM", "H100-PCIe", "H200",
        "B200", "MI300X"]
MODELS = ["llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b", "llama-4-scout",
          "llama-4-maverick", "qwen3-8b", "qwen3-235b-a22b", "deepseek-v3", "mixtral-8x7b",
          "gemma-3-27b", "gpt-oss-120b", "mistral-7b", "smollm2-135m"]


@pytest.mark.parametrize("name", MODELS)
def test_required_models_present(name):
    assert CAT.model(name).name == name


@pytest.mark.parametrize("name", GPUS)
def test_required_gpus_present(name):
    gpu = CAT.gpu(name)
    assert gpu.memory_gib > 0 and gpu.bandwidth_gbs > 0 and gpu.tflops["bf16"] > 0
    assert gpu.price.usd_per_hour > 0 and gpu.price.source and gpu.price.as_of


@pytest.mark.parametrize("name", sorted(CAT.models))
def test_param_count_matches_published(name):
    m = CAT.model(name)
    assert m.published_params, f"{name} lacks published_params"
    ratio = m.total_params / m.published_params
    assert abs(ratio - 1) < 0.02, (
        f"{name}: computed {m.total_params:.4g} vs published {m.published_params:.4g}"
    )


@pytest.mark.parametrize("name", [n for n, m in CAT.models.items() if m.published_active_params])
def test_active_params_match_published(name):
    m = CAT.model(name)
    # gpt-oss publishes active parameters without the embedding table
    candidates = [m.active_params, m.active_params - m.params.embedding]
    best = min(abs(c / m.published_active_params - 1) for c in candidates)
    assert best < 0.03, f"{name}: active {m.active_params:.4g} vs {m.published_active_params:.4g}"


@pytest.mark.parametrize("kind", ["gpus", "models", "schemes", "engines", "workloads"])
def test_every_entry_cites_source_and_date(kind):
    for entry in getattr(CAT, kind).values():
        assert entry.source and entry.as_of, f"{kind} {entry.name} lacks source/as_of"


def test_lookup_is_case_and_alias_insensitive():
    assert CAT.gpu("h100").name == "H100-SXM"
    assert CAT.model("Llama4-Scout").name == "llama-4-scout"
    assert CAT.scheme("W4A16").name == "w4a16"


def test_unknown_name_lists_close_matches():
    with pytest.raises(NotFoundError, match="h100-sxm"):
        CAT.gpu("H100-SXN")
    with pytest.raises(NotFoundError, match=r"llama-3\.1-70b"):
        CAT.model("llama-3.1-71b")


USER_FILE = """
gpus:
  - name: H100-SXM
    vendor: nvidia
    memory_gib: 79.6
    bandwidth_gbs: 3350
    tflops: {bf16: 989, fp8: 1979, int8: 1979}
    interconnect: {kind: nvlink4, bandwidth_gbs: 450}
    price: {usd_per_hour: 1.23, provider: our contract, source: internal, as_of: 2026-11}
    source: internal
    as_of: 2026-11
  - name: RTX-9090
    vendor: nvidia
    memory_gib: 48
    bandwidth_gbs: 2000
    tflops: {bf16: 400}
    interconnect: {kind: pcie5, bandwidth_gbs: 64}
    price: {usd_per_hour: 0.9, provider: lab, source: internal, as_of: 2026-11}
    source: internal
    as_of: 2026-11
"""


def test_user_file_adds_and_overrides(tmp_path, monkeypatch):
    path = tmp_path / "mine.yaml"
    path.write_text(USER_FILE)
    cat = Catalog.load(extra=[path])
    assert cat.gpu("H100-SXM").price.usd_per_hour == 1.23
    assert cat.gpu("rtx-9090").memory_gib == 48
    monkeypatch.setenv("TOKENOMY_CATALOG", str(path))
    assert default_catalog().gpu("RTX-9090").tflops["bf16"] == 400


@pytest.mark.parametrize("text,match", [
    ("gpus: [\n  - name: x\n", "not valid YAML"),
    ("gadgets: []\n", "unknown section"),
    ("gpus:\n  - name: half\n    vendor: nvidia\n", "invalid"),
])
def test_bad_user_file_names_the_file(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(CatalogError, match=match) as e:
        Catalog.load(extra=[path])
    assert "bad.yaml" in str(e.value)
