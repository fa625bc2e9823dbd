"""The optimize report's per-tensor allocation section, from a result built by hand (no
compression): a layers x kind map per auto record coloured by type, a size vs KLD figure
over every measured record, and a note instead of a map when the artifact is elsewhere."""

from __future__ import annotations

import re

import pytest

from tokenomy.compress import get_scheme
from tokenomy.compress.artifact import Manifest, SourceInfo, write_manifest
from tokenomy.evaluate.runner import EvalConfig, EvalResult, ModelQuality
from tokenomy.optimize import optimize
from tokenomy.optimize.measure import Record
from tokenomy.report import allocation
from tokenomy.report.html import render

LAYERS = 3
GGUF_TYPES = {"token_embd.weight": "Q5_1", "output.weight": "Q8_0",
              **{f"blk.{i}.attn_norm.weight": "F32" for i in range(LAYERS)},
              **{f"blk.{i}.{k}.weight": ("Q8_0" if i == 1 and k == "ffn_down" else "Q4_1")
                 for i in range(LAYERS) for k in ("attn_q", "attn_v", "ffn_down")}}
LLMC_TYPES = {f"model.layers.{i}.{k}": ("BF16" if i == 0 and k.endswith("q_proj") else
                                        "W8A16" if k.endswith("down_proj") else "W4A16")
              for i in range(LAYERS) for k in ("self_attn.q_proj", "mlp.down_proj")}


def _artifact(path, scheme: str, types: dict[str, str]) -> str:
    path.mkdir()
    write_manifest(path, Manifest(
        created_at="2026-11-01T00:00:00+00:00",
        source=SourceInfo(path="/m", kind="hf", name="m", sha256="0" * 64, size_bytes=1),
        scheme=get_scheme(scheme), output_format="gguf", recipe="", tool_versions={},
        wall_time_s=1.0, peak_rss_bytes=1, estimated_peak_bytes=1, size_on_disk_bytes=1,
        files=[], verified="test", tensor_types=types))
    return str(path)


def _quality(kld: float) -> EvalResult:
    model = ModelQuality(path="/m", engine="transformers", perplexity=10.0,
                         degenerate_answers=0, disk_bytes=1, loaded_bytes=1, seconds=1.0)
    return EvalResult(config=EvalConfig(), tokens=100, base=model, candidate=model,
                      perplexity_change_pct=1.0, kld_mean=kld, kld_p99=kld * 5,
                      top1_agreement=0.9, answer_agreement=0.8, answer_prefix_tokens=4.0,
                      answers=4, verdict="small loss", sample_answers=[],
                      conditions="by hand")


def _record(scheme: str, mb: float, kld: float, artifact: str | None) -> Record:
    return Record(scheme=scheme, key=scheme, artifact=artifact, size_on_disk_bytes=int(mb * 1e6),
                  quality=_quality(kld))


@pytest.fixture(scope="module")
def skeleton():
    """A real result (a catalog model, estimated only) whose records the tests replace."""
    return optimize("llama-3.1-70b", ["chat"], ["H100-SXM"], ["w4a16"])


def _result(skeleton, records):
    return skeleton.model_copy(update={"records": records})


def test_maps_and_frontier_for_each_auto_record(skeleton, tmp_path):
    records = [_record("gguf-q4_0", 91.7, 0.23, None), _record("gguf-q8_0", 145.0, 0.003, None),
               _record("auto", 89.5, 0.0074, _artifact(tmp_path / "a", "auto", GGUF_TYPES)),
               _record("auto:llmcompressor", 132.2, 0.085,
                       _artifact(tmp_path / "b", "auto:llmcompressor", LLMC_TYPES))]
    page = render(_result(skeleton, records))
    assert page.count("<svg") == 4 and 'id="auto-frontier"' in page
    gguf_map = re.search(r'id="map-auto">(.*?)</table>', page, re.S).group(1)
    assert gguf_map.count("<tr>") == 1 + LAYERS, "a header and a row per layer"
    assert all(f"<th>{k}</th>" in gguf_map for k in ("attn_q", "attn_v", "ffn_down"))
    assert "norm" not in gguf_map, "1-D norms (F32) are not allocated: left out"
    q8 = allocation.TYPE_COLORS["Q8_0"]
    assert f'background:{q8};text-align:center" title="layer 1 ffn_down">Q8_0' in gguf_map
    assert gguf_map.count(">Q4_1</td>") == 3 * LAYERS - 1
    assert "<th>token_embd</th>" in page and "<th>output</th>" in page
    llmc_map = re.search(r'id="map-auto:llmcompressor">(.*?)</table>', page, re.S).group(1)
    assert "<th>q_proj</th><th>down_proj</th>" in llmc_map
    assert llmc_map.count(">W8A16</td>") == LAYERS and llmc_map.count(">BF16</td>") == 1
    assert "Tensors per type: 2 W4A16, 3 W8A16, 1 BF16." in page
    figure = page[page.index('id="auto-frontier"'):]
    for name in ("gguf-q4_0", "gguf-q8_0", "auto", "auto:llmcompressor"):
        assert f">{name}<" in figure or f"<!-- {name} -->" in figure, name
    assert "<script" not in page and 'src="http' not in page


def test_a_missing_artifact_is_a_note_not_an_error(skeleton, tmp_path):
    gone = str(tmp_path / "elsewhere" / "auto")
    records = [_record("w4a16", 113.2, 0.39, None), _record("auto", 89.5, 0.0074, gone)]
    page = render(_result(skeleton, records))
    assert f"No per-layer map for auto: its artifact {gone} is not on this machine" in page
    assert 'id="map-auto"' not in page and 'id="auto-frontier"' in page


def test_no_auto_record_adds_nothing(skeleton):
    page = render(_result(skeleton, [_record("w4a16", 113.2, 0.39, None)]))
    assert "Per-tensor allocation" not in page and page.count("<svg") == 3


def test_layer_grid_reads_gguf_and_transformers_names():
    grid, kinds, outside = allocation.layer_grid(
        {"blk.10.ffn_up.weight": "Q5_0", "model.layers.2.mlp.up_proj": "W4A16",
         "blk.0.attn_norm.weight": "F32", "token_embd.weight": "Q8_0"})
    assert grid == {10: {"ffn_up": "Q5_0"}, 2: {"up_proj": "W4A16"}}
    assert kinds == ["ffn_up", "up_proj"] and outside == {"token_embd": "Q8_0"}
