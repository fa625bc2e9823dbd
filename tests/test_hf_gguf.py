"""A student of a GGUF teacher written as an F16 GGUF (compress/hf_gguf.py): transformers
and llama.cpp compute the same logits from it as transformers from the student's own
weights, the llama.cpp schemes and `--scheme auto` take the student, and an HF directory
with no GGUF teacher or a template of another vocabulary is refused in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tiny import make_model_dir, write_jsonl
from tiny_llama_gguf import write_llama_gguf
from tokenomy.compress import compress
from tokenomy.compress.hf_gguf import gguf_source, write_f16
from tokenomy.distill import PruneConfig, prune
from tokenomy.errors import InvalidInputError
from tokenomy.sources import resolve_source

IDS = list(range(5, 37))


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    root = tmp_path_factory.mktemp("hfgguf")
    teacher = write_llama_gguf(root / "teacher.gguf", layers=4, heads=4, kv_heads=2)
    write_jsonl(root / "data.jsonl", n=40)
    prune(teacher, root / "student",
          PruneConfig(dataset=str(root / "data.jsonl"), windows=2, window_tokens=32, drop=1))
    return root


def _hf_logits(directory, **kw) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, **kw).eval()
    with torch.no_grad():
        return model(torch.tensor([IDS])).logits[0].numpy()


def _llamacpp_logits(path) -> np.ndarray:
    from llama_cpp import Llama

    llm = Llama(str(path), n_ctx=64, logits_all=True, verbose=False, n_threads=1)
    llm.eval(IDS)
    out = np.array(llm.scores[: len(IDS)])
    llm.close()
    return out


def test_the_f16_gguf_computes_what_the_student_computes(student):
    import gguf

    src = gguf_source(resolve_source(student / "student"))
    reader = gguf.GGUFReader(str(src.path))
    assert reader.fields["llama.block_count"].contents() == 3
    assert "output.weight" not in {t.name for t in reader.tensors}  # tied, as the teacher
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == "F16" and types["blk.0.attn_norm.weight"] == "F32"
    assert reader.fields["tokenizer.ggml.tokens"].contents() == \
        gguf.GGUFReader(str(student / "teacher.gguf")).fields["tokenizer.ggml.tokens"].contents()
    want = _hf_logits(student / "student")
    via_transformers = _hf_logits(src.path.parent, gguf_file=src.path.name)
    assert np.abs(via_transformers - want).max() < 2e-2  # F16 rounding only
    # llama.cpp: the q/k rows in its rotary order, or attention (and the logits) differ
    assert np.abs(_llamacpp_logits(src.path) - want).max() < 5e-2
    assert gguf_source(resolve_source(student / "student")).path == src.path  # cached


def test_llama_cpp_schemes_and_auto_take_the_student(student, tmp_path):
    q = compress(student / "student", "gguf-q8_0", tmp_path / "q8")
    assert q.source.kind == "hf" and q.source.path == str((student / "student").resolve())
    made = next((tmp_path / "q8").glob("*.gguf"))
    assert np.abs(_llamacpp_logits(made) - _hf_logits(student / "student")).max() < 0.2


def test_an_hf_directory_without_a_gguf_teacher_is_refused(tmp_path):
    make_model_dir(tmp_path / "plain")
    with pytest.raises(InvalidInputError, match="convert_hf_to_gguf"):
        compress(tmp_path / "plain", "gguf-q8_0", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_template_of_another_vocabulary_is_refused(student, tmp_path):
    config = json.loads((student / "student" / "config.json").read_text())
    other = write_llama_gguf(tmp_path / "other.gguf", hidden=config["hidden_size"] * 2)
    with pytest.raises(InvalidInputError, match="embedding_length"):
        write_f16(student / "student", other, tmp_path / "x.gguf")
