"""`compress --scheme auto` and `+imatrix` end to end on a tiny GGUF, `tokenomy
sensitivity`, and one clear error each for bad input, with nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from tokenomy.cli import commands
from tokenomy.compress import compress
from tokenomy.compress.auto.table import SensitivityConfig
from tokenomy.errors import InvalidInputError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tiny import write_jsonl
    from tiny_llama_gguf import write_llama_gguf

    root = tmp_path_factory.mktemp("auto-compress")
    (root / "src").mkdir()
    return (write_llama_gguf(root / "src" / "tiny.gguf", damage="blk.1.attn_v.weight"),
            write_jsonl(root / "data.jsonl", n=400))


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """One cache for the module: the sensitivity table is computed once."""
    return tmp_path_factory.mktemp("home")


@pytest.fixture(autouse=True)
def _shared_home(home, monkeypatch):
    monkeypatch.setenv("TOKENOMY_HOME", str(home))


def _config(data) -> SensitivityConfig:
    return SensitivityConfig(dataset=str(data), windows=4, window_tokens=64)


def test_auto_meets_a_measured_budget_and_lists_every_tensor(tiny, tmp_path):
    from gguf import GGUFReader

    gguf_file, data = tiny
    m = compress(gguf_file, "auto", tmp_path / "out", max_kld=0.01,
                 sensitivity=_config(data))
    written = next((tmp_path / "out").glob("*.gguf"))
    types = {t.name: t.tensor_type.name for t in GGUFReader(str(written)).tensors}
    assert m.tensor_types == types and len(types) == 20
    assert m.auto["measured_kld"] <= 0.01, m.auto
    assert m.auto["predicted_kld"] <= 0.01 and m.auto["tries"], m.auto
    assert abs(m.size_on_disk_bytes - written.stat().st_size) < 10_000
    assert "finite logits" in m.verified
    assert m.calibration.split == "calibration" and m.calibration.tokens == 4 * 63
    saved = json.loads((tmp_path / "out" / "tokenomy.json").read_text())
    assert saved["auto"]["measured_kld"] == m.auto["measured_kld"]


def test_auto_by_size_and_a_looser_budget_is_smaller(tiny, tmp_path):
    gguf_file, data = tiny
    tight = compress(gguf_file, "auto", tmp_path / "a", max_kld=0.003,
                     sensitivity=_config(data))
    loose = compress(gguf_file, "auto", tmp_path / "b", max_kld=0.05,
                     sensitivity=_config(data))
    assert loose.auto["predicted_bytes"] < tight.auto["predicted_bytes"]
    assert tight.auto["measured_kld"] < loose.auto["measured_kld"]
    sized = compress(gguf_file, "auto", tmp_path / "c", size_mb=loose.auto[
        "predicted_bytes"] / 1e6, sensitivity=_config(data))
    assert sized.auto["predicted_bytes"] <= loose.auto["predicted_bytes"]


def test_a_p99_budget_is_met_by_measurement_alone_or_with_the_mean(tiny, tmp_path):
    gguf_file, data = tiny
    mean_only = compress(gguf_file, "auto", tmp_path / "a", max_kld=0.05,
                         sensitivity=_config(data))
    p99 = mean_only.auto["measured_kld_p99"]
    assert p99 > mean_only.auto["measured_kld"] > 0, mean_only.auto
    tighter = p99 / 3  # the mean budget alone does not hold the tail there
    both = compress(gguf_file, "auto", tmp_path / "b", max_kld=0.05, max_kld_p99=tighter,
                    sensitivity=_config(data))
    assert both.auto["measured_kld_p99"] <= tighter and both.auto["measured_kld"] <= 0.05
    assert both.auto["predicted_bytes"] > mean_only.auto["predicted_bytes"], both.auto
    assert both.auto["max_kld_p99"] == tighter
    assert all("measured_kld_p99" in t for t in both.auto["tries"])
    alone = compress(gguf_file, "auto", tmp_path / "c", max_kld_p99=tighter,
                     sensitivity=_config(data))
    assert alone.auto["measured_kld_p99"] <= tighter and alone.auto["max_kld"] is None
    assert any("p99" in n for n in alone.notes)
    first, *later = alone.auto["tries"]  # then only cheaper files, kept while they hold
    assert all(t["bytes"] < first["bytes"] for t in later), alone.auto["tries"]
    assert alone.auto["predicted_bytes"] <= first["bytes"]


@pytest.fixture
def inverted_estimate(monkeypatch):
    """A wrong estimate on purpose: every type's KLD grows with its bytes (scaled by the
    value passed), so every upgrade looks harmful and the frontier cannot move."""
    import importlib

    auto = importlib.import_module("tokenomy.compress.auto")
    real = auto.sensitivity_table

    def install(scale: float) -> None:
        def inverted(*args, **kw):
            table, importance = real(*args, **kw)
            for row in table.rows:
                row.kld = {t: row.bytes[t] * scale for t in row.kld}
            return table, importance

        monkeypatch.setattr(auto, "sensitivity_table", inverted)

    return install


def test_a_wrong_estimate_is_overruled_by_measuring_the_uniform_type(tiny, tmp_path,
                                                                     inverted_estimate):
    """By size, the largest uniform type that fits is measured too and kept where it
    measures better: with the estimate inverted the allocation stays at the cheapest
    type, and all-F16 must win."""
    inverted_estimate(1e-9)
    gguf_file, data = tiny
    m = compress(gguf_file, "auto", tmp_path / "out", size_mb=1000, sensitivity=_config(data))
    check = m.auto["uniform_check"]
    assert check["type"] == "F16" and check["kept_uniform"], check
    assert check["measured_kld"] < check["allocation_measured_kld"]
    assert m.auto["measured_kld"] == check["measured_kld"]
    assert {t for t in m.tensor_types.values() if t != "F32"} == {"F16"}
    assert any("the estimate was wrong" in n for n in m.notes)
    assert sorted(p.name for p in (tmp_path / "out").glob("*.gguf")) == [
        next((tmp_path / "out").glob("*.gguf")).name]  # the loser's file is gone


def test_a_budget_missed_by_a_wrong_estimate_is_met_by_a_uniform_type(tiny, tmp_path,
                                                                       inverted_estimate):
    """By budget: when the measured loop misses --max-kld, the uniform types are measured
    smallest first and the first inside the budget is written (with the estimate
    inverted the loop cannot move)."""
    inverted_estimate(1e-12)
    gguf_file, data = tiny
    m = compress(gguf_file, "auto", tmp_path / "out", max_kld=0.003,
                 sensitivity=_config(data))
    check = m.auto["uniform_check"]
    assert check["kept_uniform"] and m.auto["measured_kld"] <= 0.003, m.auto
    assert {t for t in m.tensor_types.values() if t != "F32"} == {check["type"]}
    assert check["type"] not in ("Q4_0", "Q4_1")  # the cheapest types miss this budget


def test_types_restrict_the_allocation_and_are_recorded(tiny, tmp_path):
    gguf_file, data = tiny
    result = CliRunner().invoke(commands(), [
        "compress", str(gguf_file), "--scheme", "auto", "--max-kld", "0.05", "--types",
        "Q8_0,f16", "--calibration", str(data), "-o", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "out" / "tokenomy.json").read_text())
    assert saved["auto"]["allowed_types"] == ["Q8_0", "F16"], saved["auto"]
    quantized = {t for t in saved["tensor_types"].values() if t != "F32"}  # norms stay F32
    assert quantized <= {"Q8_0", "F16"} and "Q8_0" in quantized, saved["tensor_types"]


def test_imatrix_variant_has_llama_cpps_types_and_less_kld(tiny, tmp_path):
    from tokenomy.compress.auto.loop import Meter, eval_config
    from tokenomy.sources import resolve_source

    gguf_file, data = tiny
    compress(gguf_file, "gguf-q4_0", tmp_path / "plain")
    imat = compress(gguf_file, "gguf-q4_0+imatrix", tmp_path / "imat",
                    sensitivity=_config(data))
    plain_file = next((tmp_path / "plain").glob("*.gguf"))
    imat_file = next((tmp_path / "imat").glob("*.gguf"))
    assert abs(plain_file.stat().st_size - imat_file.stat().st_size) < 1024
    meter = Meter(resolve_source(gguf_file), eval_config(str(data), 4, 64))
    k_plain = meter.window_klds(plain_file).mean()
    k_imat = meter.window_klds(imat_file).mean()
    assert np.isfinite(k_imat) and k_imat < k_plain, (k_imat, k_plain)
    assert imat.tensor_types["blk.0.ffn_up.weight"] == "Q4_0"


def _no_quantizable(path):
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_tensor("blk.0.attn_norm.weight", np.ones(48, np.float32))
    w.add_tensor("blk.0.attn_q.weight", np.zeros((48, 48), np.float32))  # 48: not /32
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("args,fragment", [
    (["--scheme", "auto"], "needs a quality budget"),
    (["--scheme", "auto", "--max-kld", "0"], "max-kld"),
    (["--scheme", "gguf-q4_0", "--max-kld", "0.01"], "has a fixed size"),
    (["--scheme", "auto", "--max-kld", "1e-12"], "best reachable"),
    (["--scheme", "auto", "--size-mb", "0.001"], "smallest reachable"),
    (["--scheme", "auto", "--max-kld-p99", "1e-9"], "no allocation met --max-kld-p99 1e-09 "
     "when measured: the best reachable was a mean KLD of"),
    (["--scheme", "gguf-q4_0", "--max-kld-p99", "0.5"], "has a fixed size"),
    (["--scheme", "auto", "--max-kld", "0.01", "@hf"], "convert_hf_to_gguf"),
    (["--scheme", "auto", "--max-kld", "0.01", "@empty"], "no quantizable layers"),
    (["--scheme", "auto", "--max-kld", "0.01", "--types", "q4_0,w4a16"],
     "--types w4a16: not a type of --scheme auto; choose from q4_0,q4_1,q5_0,q5_1,q8_0,f16"),
    (["--scheme", "auto", "--max-kld", "0.01", "--types", ","], "--types ,: not a type"),
    (["--scheme", "gguf-q4_0", "--types", "q4_0"], "gguf-q4_0 has fixed types"),
], ids=["no-budget", "zero-budget", "budget-on-uniform", "impossible-budget",
        "impossible-size", "impossible-p99", "p99-on-uniform", "hf-source",
        "no-quantizable-layers", "unknown-type", "no-type", "types-on-uniform"])
def test_bad_input_is_one_clear_error_and_nothing_written(tiny, tmp_path, args, fragment):
    from tiny import make_model_dir

    gguf_file, data = tiny
    model = str(gguf_file)
    if "@hf" in args:
        model = str(make_model_dir(tmp_path / "hf"))
    if "@empty" in args:
        (tmp_path / "e").mkdir()
        model = str(_no_quantizable(tmp_path / "e" / "empty.gguf"))
    args = [a for a in args if not a.startswith("@")]
    out = tmp_path / "out"
    result = CliRunner().invoke(commands(), ["compress", model, *args, "-o", str(out),
                                             "--calibration", str(data)])
    assert result.exit_code == 1, result.output
    assert fragment in result.output and "Traceback" not in result.output, result.output
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_sensitivity_cli_writes_heatmap_and_json(tiny, tmp_path):
    gguf_file, data = tiny
    out = tmp_path / "sens"
    result = CliRunner().invoke(commands(), [
        "sensitivity", str(gguf_file), "--calibration", str(data), "--windows", "4",
        "--window-tokens", "64", "--swaps", "6", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "blk.1.attn_v.weight" in result.output and "Spearman" in result.output
    saved = json.loads((out / "sensitivity.json").read_text())
    assert len(saved["swaps"]) == 6 and saved["spearman"] > 0.5, saved["swaps"]
    assert (out / "sensitivity.png").read_bytes()[:4] == b"\x89PNG"


def test_sensitivity_refuses_an_unknown_type(tiny):
    from tokenomy.sensitivity import sensitivity

    with pytest.raises(InvalidInputError, match="swap-type"):
        sensitivity(tiny[0], swap_type="Q3_K")
