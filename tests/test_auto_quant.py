"""--scheme auto's pieces on tiny GGUFs: the block packer (byte-identical to gguf.quants),
the Fisher estimate, the allocation, the mixed GGUF in llama.cpp, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

from tokenomy.compress.auto import blocks
from tokenomy.compress.auto.allocate import choose, fill, frontier
from tokenomy.compress.auto.table import SensitivityConfig, Table, TensorRow
from tokenomy.errors import InvalidInputError

DAMAGED = "blk.1.attn_v.weight"


def _weights(seed=0, shape=(96, 128)):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal(shape) * 0.05).astype(np.float32)
    w[0, :32] = 0.0  # an all-zero block
    w[1, :32] = 0.25  # a constant block
    w[2, 5] = 3.0  # an outlier
    return w


@pytest.mark.parametrize("qtype", blocks.BLOCK_TYPES)
def test_rtn_packing_is_byte_identical_to_gguf(qtype):
    from gguf.quants import quantize

    w = _weights()
    mine = blocks.quantize(w, qtype)
    ref = quantize(w, blocks.ggml_type(qtype))
    assert mine.shape == ref.shape and mine.dtype == ref.dtype
    assert np.array_equal(mine, ref), f"{qtype}: {np.sum(mine != ref)} bytes differ"
    assert mine.nbytes == blocks.tensor_bytes(qtype, w.shape)


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q5_0", "Q5_1"])
def test_importance_lowers_the_weighted_error(qtype):
    w = _weights(1)
    imp = np.random.default_rng(2).gamma(0.5, size=w.shape[1]).astype(np.float32)
    plain = blocks.round_trip(w, qtype)
    weighted = blocks.round_trip(w, qtype, imp)  # gguf's dequantizer reads our bytes
    e_plain = float((imp * (w - plain) ** 2).sum())
    e_weighted = float((imp * (w - weighted) ** 2).sum())
    assert e_weighted < 0.95 * e_plain, f"{qtype}: {e_weighted} vs RTN {e_plain}"


def test_importance_from_another_model_is_refused():
    with pytest.raises(InvalidInputError, match="another model"):
        blocks.quantize(_weights(), "Q4_0", np.ones(64, np.float32))


def _table(rows) -> Table:
    return Table(model_sha256="x", config=SensitivityConfig(), tokens=100, rows=[
        TensorRow(name=n, shape=(32, 64), kld=k,
                  bytes={t: blocks.tensor_bytes(t, (32, 64)) for t in k}) for n, k in rows])


def test_allocation_meets_a_budget_and_refuses_an_impossible_one():
    table = _table([
        ("a", {"Q4_0": 0.02, "Q4_1": 0.015, "Q5_0": 0.004, "Q8_0": 1e-4, "F16": 0.0}),
        ("b", {"Q4_0": 0.001, "Q4_1": 0.0008, "Q5_0": 0.0003, "Q8_0": 1e-5, "F16": 0.0}),
    ])
    front = frontier(table, other_bytes=1000)
    sizes = [p.bytes for p in front.points]
    klds = [p.kld for p in front.points]
    assert sizes == sorted(sizes) and klds == sorted(klds, reverse=True)
    pick = choose(front, max_kld=0.006)
    assert pick.kld <= 0.006
    types = front.types_at(pick.step)
    assert types["a"] != "Q4_0" and types["b"] == "Q4_0", types  # the sensitive one first
    assert all(p.kld > 0.006 for p in front.points[: pick.step]), "not the cheapest"
    with pytest.raises(InvalidInputError, match=r"best reachable .* 0 at"):
        choose(front, max_kld=-1.0)
    small = choose(front, size_bytes=sizes[0] + 200)
    assert small.bytes <= sizes[0] + 200
    topped = fill(front, small, sizes[0] + 200)
    assert small.bytes <= topped.bytes <= sizes[0] + 200 and topped.kld <= small.kld
    with pytest.raises(InvalidInputError, match="smallest reachable"):
        choose(front, size_bytes=sizes[0] - 1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tiny import write_jsonl
    from tiny_llama_gguf import write_llama_gguf

    root = tmp_path_factory.mktemp("auto")
    (root / "src").mkdir()
    return (write_llama_gguf(root / "src" / "tiny.gguf", damage=DAMAGED),
            write_jsonl(root / "data.jsonl", n=80))


def _config(data) -> SensitivityConfig:
    return SensitivityConfig(dataset=str(data), windows=4, window_tokens=64)


def test_fisher_ranks_the_damaged_tensor_first(tiny):
    from tokenomy.compress.auto import sensitivity_table
    from tokenomy.sources import resolve_source

    gguf_file, data = tiny
    table, importance = sensitivity_table(resolve_source(gguf_file), _config(data))
    assert len(table.rows) == 15 and set(importance) >= {DAMAGED, "token_embd.weight"}
    for qtype in ("Q4_0", "Q5_0"):
        ranked = sorted(table.rows, key=lambda r: -r.kld[qtype])
        assert ranked[0].name == DAMAGED, [(r.name, r.kld[qtype]) for r in ranked[:3]]
    for row in table.rows:  # more bits, less estimated loss
        assert row.kld["Q8_0"] < row.kld["Q5_0"] < row.kld["Q4_0"], row


def _logits(path, text=b"To be, or not to be, that is the question"):
    from tokenomy.compress.gguf_backend import load_llama

    llm = load_llama(path, n_ctx=64, logits_all=True)
    ids = llm.tokenize(text, add_bos=False)
    llm.eval(ids)
    return np.asarray(llm.scores[: len(ids)])


def test_mixed_gguf_loads_in_llama_cpp_close_to_the_source(tiny, tmp_path):
    from gguf import GGUFReader

    from tokenomy.compress.auto.writer import dequantized, write_mixed

    gguf_file, _ = tiny
    cycle = ["Q8_0", "Q5_1", "F16", "Q8_0", "Q5_0"]
    names = [t.name for t in GGUFReader(str(gguf_file)).tensors if len(t.shape) == 2]
    types = {n: cycle[i % len(cycle)] for i, n in enumerate(names)}
    out = write_mixed(gguf_file, tmp_path / "mixed.gguf", types)
    reader, source = GGUFReader(str(tmp_path / "mixed.gguf")), GGUFReader(str(gguf_file))
    assert {t.name: t.tensor_type.name for t in reader.tensors} == out
    assert all(out[n] == t for n, t in types.items()) and out["output_norm.weight"] == "F32"
    keys = set(source.fields) - {"general.file_type"}
    assert keys <= set(reader.fields)
    assert reader.fields["tokenizer.ggml.tokens"].contents() == \
        source.fields["tokenizer.ggml.tokens"].contents()
    src = {t.name: t for t in source.tensors}
    for t in reader.tensors:  # what llama.cpp reads is exactly the type's round trip
        if t.name in types:
            expect = blocks.round_trip(dequantized(src[t.name]), types[t.name])
            assert np.array_equal(dequantized(t), expect), t.name
    base, mixed = _logits(gguf_file), _logits(tmp_path / "mixed.gguf")
    assert np.isfinite(mixed).all()
    err = np.abs(base - mixed).max() / np.abs(base).max()
    assert err < 0.1, f"mixed logits differ from the source by {err:.3f} (relative)"
