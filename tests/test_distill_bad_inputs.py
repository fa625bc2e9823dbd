"""distill's bad inputs, one table: each row the command line, and a fragment of the one
`Error:` line; the shared check: exit code 1, no traceback, nothing written."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tiny import make_model_dir, make_tokenizer, write_jsonl
from tokenomy.cli import commands
from tokenomy.errors import InvalidInputError

CLI = commands()
D = ["distill"]
TRAIN = [*D, "train", "teacher", "--teacher", "teacher", "--dataset", "data.jsonl",
         "--window-tokens", "16"]
CASES = [  # (id, args, fragment)
    ("prune-drop-0", [*D, "prune", "teacher", "--drop", "0", "-o", "new"],
     "leaves 4 of the model's 4 layers"),
    ("prune-drop-all", [*D, "prune", "teacher", "--drop", "4", "-o", "new"],
     "keep between 1 and 3"),
    ("prune-drop-beyond", [*D, "prune", "teacher", "--drop", "7", "-o", "new"],
     "keep between 1 and 3"),
    ("prune-keep-0", [*D, "prune", "teacher", "--keep-layers", "0", "-o", "new"],
     "leaves 0 of the model's 4"),
    ("prune-keep-all", [*D, "prune", "teacher", "--keep-layers", "4", "-o", "new"],
     "keep between 1 and 3"),
    ("prune-keep-beyond", [*D, "prune", "teacher", "--keep-layers", "9", "-o", "new"],
     "keep between 1 and 3"),
    ("prune-negative", [*D, "prune", "teacher", "--drop", "-1", "-o", "new"], "--drop"),
    ("prune-both", [*D, "prune", "teacher", "--drop", "1", "--keep-layers", "2", "-o", "new"],
     "exactly one of --drop N or --keep-layers N"),
    ("prune-neither", [*D, "prune", "teacher", "-o", "new"], "exactly one of --drop"),
    ("prune-output-exists", [*D, "prune", "teacher", "--drop", "1", "-o", "existing"],
     "never overwrites"),
    ("prune-not-decoder", [*D, "prune", "bert", "--drop", "1", "-o", "new"],
     "not a decoder-only causal language model"),
    ("prune-missing-model", [*D, "prune", "nowhere", "--drop", "1", "-o", "new"],
     "does not exist"),
    ("train-unbounded", [*TRAIN, "-o", "new"], "give --tokens N or --minutes M"),
    ("train-vocab-mismatch", [*D, "train", "othervocab", "--teacher", "teacher", "--tokens",
                              "64", "--dataset", "data.jsonl", "-o", "new"],
     "vocabulary (384 tokens) differs from the teacher's"),
    ("train-blank-dataset", [*TRAIN, "--tokens", "64", "--dataset", "blank.jsonl", "-o",
                             "new"], "no usable text"),
    ("train-no-records", [*TRAIN, "--tokens", "64", "--dataset", "junk.jsonl", "-o", "new"],
     "holds no usable records"),
    ("train-output-exists", [*TRAIN, "--tokens", "64", "-o", "existing"], "never overwrites"),
    ("train-resume-nothing", [*TRAIN, "--resume", "-o", "existing"], "nothing to resume"),
    ("train-not-decoder", [*D, "train", "bert", "--teacher", "teacher", "--tokens", "64",
                           "-o", "new"], "not a decoder-only"),
    ("train-no-teacher", [*D, "train", "teacher", "--tokens", "64", "-o", "new"],
     "give --teacher MODEL"),
    ("train-zero-tokens", [*TRAIN, "--tokens", "0", "-o", "new"], "--tokens"),
    ("train-bad-objective", [*TRAIN, "--tokens", "64", "--objective", "mse", "-o", "new"],
     "mse"),
]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    import torch
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("distill-bad")
    make_model_dir(root / "teacher", layers=4)
    tok = make_tokenizer()
    other = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4,
                                         num_key_value_heads=2, vocab_size=384))
    other.save_pretrained(root / "othervocab")
    tok.save_pretrained(root / "othervocab")
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, vocab_size=len(tok))).save_pretrained(
        root / "bert")
    write_jsonl(root / "data.jsonl", n=40)
    (root / "blank.jsonl").write_text("\n".join(json.dumps({"text": " \n "}) for _ in range(40)))
    (root / "junk.jsonl").write_text('{"foo": 1}\n[1, 2]\n')
    (root / "existing").mkdir()
    return root


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            if p.is_file() else "dir" for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize(("args", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(args, fragment, models, monkeypatch):
    monkeypatch.chdir(models)
    before = _snapshot(models)
    result = CliRunner().invoke(CLI, args)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception  # a traceback: show it whole
    output = result.output
    assert result.exit_code in (1, 2), output
    errors = [line for line in output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "Traceback" not in output, output
    assert fragment in output, f"{fragment!r} not in {output!r}"
    assert _snapshot(models) == before, "a refused command wrote something"


@pytest.mark.parametrize(("disk", "ram", "fragment"), [
    (2**62, 0, "not enough disk for distill"), (0, 2**62, "not enough memory for distill")],
    ids=["disk", "ram"])
def test_not_enough_disk_or_memory_is_refused_with_the_numbers(tmp_path, disk, ram, fragment):
    from tokenomy.distill.cache import check_resources

    with pytest.raises(InvalidInputError, match=fragment) as e:
        check_resources(tmp_path / "out", disk, ram, "the teacher cache")
    assert "GiB" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()
