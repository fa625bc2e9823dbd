"""`--imatrix FILE`: a llama-imatrix file (legacy .dat or GGUF) used instead of the
computed importance matrix, giving the same bytes as computing it; and one clear error,
with nothing written, for a file that is not an imatrix or was made for another model."""

from __future__ import annotations

import hashlib
import json
import struct

import numpy as np
import pytest
from click.testing import CliRunner

from tokenomy.cli import commands
from tokenomy.compress import compress
from tokenomy.compress.auto.imatrix_file import read_imatrix
from tokenomy.compress.auto.table import SensitivityConfig, sensitivity_table
from tokenomy.sources import resolve_source


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tiny import write_jsonl
    from tiny_llama_gguf import write_llama_gguf

    root = tmp_path_factory.mktemp("imatrix-file")
    (root / "src").mkdir()
    (root / "other").mkdir()
    return (write_llama_gguf(root / "src" / "tiny.gguf", damage="blk.1.attn_v.weight"),
            write_jsonl(root / "data.jsonl", n=400),
            write_llama_gguf(root / "other" / "wide.gguf", hidden=96, ffn=160, seed=1))


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("home")


@pytest.fixture(autouse=True)
def _shared_home(home, monkeypatch):
    monkeypatch.setenv("TOKENOMY_HOME", str(home))


def _config(data) -> SensitivityConfig:
    return SensitivityConfig(dataset=str(data), windows=4, window_tokens=64)


@pytest.fixture(scope="module")
def computed(tiny, home):
    """tokenomy's own importance matrix of the tiny model (name -> [in])."""
    mp = pytest.MonkeyPatch()
    mp.setenv("TOKENOMY_HOME", str(home))
    try:
        return sensitivity_table(resolve_source(tiny[0]), _config(tiny[1]))[1]
    finally:
        mp.undo()


def write_dat(path, importance: dict, ncall: int = 4, dataset: str = "calib.txt"):
    """The legacy format as llama-imatrix writes it: values stored as mean * ncall."""
    out = struct.pack("<i", len(importance))
    for name in sorted(importance):
        v = np.asarray(importance[name], np.float32)
        out += struct.pack("<i", len(name)) + name.encode() + struct.pack("<ii", ncall, len(v))
        out += (v * np.float32(ncall)).astype("<f4").tobytes()
    out += struct.pack("<ii", ncall, len(dataset)) + dataset.encode()
    path.write_bytes(out)
    return path


def write_gguf_imatrix(path, importance: dict, tokens: int = 256):
    """The GGUF format as llama-imatrix writes it: <name>.in_sum2 [in, 1], <name>.counts."""
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_type("imatrix")
    w.add_array("imatrix.datasets", ["calib.txt"])
    w.add_uint32("imatrix.chunk_count", 4)
    w.add_uint32("imatrix.chunk_size", tokens // 4)
    for name in sorted(importance):
        v = np.asarray(importance[name], np.float32)
        w.add_tensor(f"{name}.in_sum2", (v * np.float32(tokens))[None, :])
        w.add_tensor(f"{name}.counts", np.full((1, 1), tokens, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _tensor_bytes(directory) -> dict[str, bytes]:
    from gguf import GGUFReader

    file = next(directory.glob("*.gguf"))
    return {t.name: bytes(t.data.tobytes()) for t in GGUFReader(str(file)).tensors}


@pytest.fixture(scope="module")
def q4_0_computed(tiny, home, tmp_path_factory):
    out = tmp_path_factory.mktemp("q4") / "computed"
    mp = pytest.MonkeyPatch()
    mp.setenv("TOKENOMY_HOME", str(home))
    try:
        compress(tiny[0], "gguf-q4_0+imatrix", out, sensitivity=_config(tiny[1]))
    finally:
        mp.undo()
    return _tensor_bytes(out)


@pytest.mark.parametrize("fmt", ["dat", "gguf"])
def test_a_written_imatrix_gives_the_same_bytes_as_computing_it(tiny, computed, q4_0_computed,
                                                                 tmp_path, fmt):
    writer = write_dat if fmt == "dat" else write_gguf_imatrix
    file = writer(tmp_path / f"imatrix.{fmt}", computed)
    got = read_imatrix(file)
    assert got.format == fmt and set(got.importance) == set(computed)
    for name, v in computed.items():
        np.testing.assert_array_equal(got.importance[name], v, err_msg=name)
    m = compress(tiny[0], "gguf-q4_0+imatrix", tmp_path / "out", imatrix=file)
    assert _tensor_bytes(tmp_path / "out") == q4_0_computed
    assert m.imatrix["sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()
    assert m.imatrix["path"] == str(file.resolve()) and m.imatrix["format"] == fmt
    assert m.calibration is None and any("your file" in n for n in m.notes), m.notes
    saved = json.loads((tmp_path / "out" / "tokenomy.json").read_text())
    assert saved["imatrix"]["sha256"] == m.imatrix["sha256"]


def test_auto_with_an_imatrix_file_matches_auto_computing_it(tiny, computed, tmp_path):
    gguf_file, data = tiny[:2]
    own = compress(gguf_file, "auto", tmp_path / "own", max_kld=0.01, sensitivity=_config(data))
    file = write_dat(tmp_path / "imatrix.dat", computed)
    user = compress(gguf_file, "auto", tmp_path / "user", max_kld=0.01,
                    sensitivity=_config(data), imatrix=file)
    assert user.tensor_types == own.tensor_types
    assert _tensor_bytes(tmp_path / "user") == _tensor_bytes(tmp_path / "own")
    assert user.imatrix["format"] == "dat" and own.imatrix is None


@pytest.mark.parametrize("fmt", ["gguf", "dat"])
def test_sensitivity_saves_an_imatrix_that_reads_back(tiny, computed, tmp_path, fmt):
    file = tmp_path / f"saved.{fmt}"
    result = CliRunner().invoke(commands(), [
        "sensitivity", str(tiny[0]), "--calibration", str(tiny[1]), "--windows", "4",
        "--window-tokens", "64", "--swaps", "0", "-o", str(tmp_path / "s"),
        "--save-imatrix", str(file)])
    assert result.exit_code == 0, result.output
    got = read_imatrix(file)
    assert got.format == fmt and got.chunks == 4
    for name, v in computed.items():
        np.testing.assert_array_equal(got.importance[name], v, err_msg=name)


def _edited(computed, tmp_path, case: str):
    imp = dict(computed)
    if case == "renamed":
        imp["blk.7.attn_q.weight"] = imp.pop("blk.0.attn_q.weight")
    elif case == "short":
        imp["blk.1.ffn_up.weight"] = imp["blk.1.ffn_up.weight"][:32]
    elif case == "partial":
        del imp["blk.1.ffn_down.weight"]
    return write_dat(tmp_path / f"{case}.dat", imp)


def _truncated(computed, tmp_path):
    full = write_dat(tmp_path / "full.dat", computed).read_bytes()
    (tmp_path / "cut.dat").write_bytes(full[:len(full) // 2])
    return tmp_path / "cut.dat"


def _other_model(tiny, home, tmp_path):
    """A real imatrix of another model (hidden 96): tokenomy's own, saved as GGUF."""
    _, imp = sensitivity_table(resolve_source(tiny[2]), _config(tiny[1]))
    return write_gguf_imatrix(tmp_path / "wide.imatrix.gguf", imp)


@pytest.mark.parametrize("scheme,case,fragment", [
    ("gguf-q4_0+imatrix", "renamed", "not in tiny.gguf (first: blk.7.attn_q.weight)"),
    ("gguf-q4_0+imatrix", "short", "blk.1.ffn_up.weight has 32 values, tiny.gguf's "
                                   "blk.1.ffn_up.weight has input width 64"),
    ("auto", "partial", "no entry for 1 of tiny.gguf's block weights "
                        "(first: blk.1.ffn_down.weight)"),
    ("auto", "other-model", "has 96 values, tiny.gguf's blk.0.attn_k.weight has input "
                            "width 64"),
    ("gguf-q4_0+imatrix", "text", "is not an importance matrix"),
    ("gguf-q4_0+imatrix", "model", "is it the model itself?"),
    ("auto", "truncated", "is not an importance matrix (it ends inside"),
    ("gguf-q4_0+imatrix", "missing", "no such file"),
    ("gguf-q4_0", "plain-scheme", "--imatrix applies to --scheme auto"),
], ids=["unknown-names", "other-lengths", "partial", "other-model", "text-file", "model-file",
        "truncated", "missing-file", "plain-scheme"])
def test_a_wrong_imatrix_is_one_clear_error_and_nothing_written(tiny, computed, home, tmp_path,
                                                                scheme, case, fragment):
    files = {"text": lambda: _text(tmp_path), "model": lambda: tiny[0],
             "truncated": lambda: _truncated(computed, tmp_path),
             "missing": lambda: tmp_path / "nope.dat",
             "other-model": lambda: _other_model(tiny, home, tmp_path)}
    file = files.get(case, lambda: _edited(computed, tmp_path, case))()
    out = tmp_path / "out"
    budget = ["--max-kld", "0.01"] if scheme == "auto" else []
    result = CliRunner().invoke(commands(), [
        "compress", str(tiny[0]), "--scheme", scheme, *budget, "--imatrix", str(file),
        "-o", str(out), "--calibration", str(tiny[1])])
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert fragment in text and "Traceback" not in text, text
    if case not in ("text", "model", "truncated", "missing", "plain-scheme"):
        assert "made for another model" in text and "llama-imatrix" in text, text
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def _text(tmp_path):
    (tmp_path / "notes.txt").write_text("this is not an importance matrix\n" * 4)
    return tmp_path / "notes.txt"


def test_sensitivity_refuses_an_imatrix_of_another_model(tiny, computed, tmp_path):
    imp = dict(computed)
    imp["blk.0.attn_v.weight"] = np.ones(96, np.float32)
    file = write_dat(tmp_path / "bad.dat", imp)
    out = tmp_path / "s"
    result = CliRunner().invoke(commands(), [
        "sensitivity", str(tiny[0]), "--calibration", str(tiny[1]), "--windows", "4",
        "--window-tokens", "64", "--swaps", "0", "-o", str(out), "--imatrix", str(file)])
    assert result.exit_code == 1 and "made for another model" in result.output, result.output
    assert not out.exists()
