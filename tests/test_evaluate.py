"""evaluate on tiny random-weight models, metrics on known distributions, data splits."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from pydantic import ValidationError

from tiny import make_model_dir, write_jsonl
from tokenomy.compress import compress
from tokenomy.errors import InvalidInputError
from tokenomy.evaluate import EvalConfig, evaluate, metrics
from tokenomy.evaluate.data import Conversation, _iter_json_array, conversations, split_of


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    base = make_model_dir(root / "base", seed=0)
    other = make_model_dir(root / "other", seed=1)  # same tokenizer, different weights
    return base, other, write_jsonl(root / "data.jsonl", n=80)


@pytest.fixture
def config(models):
    return EvalConfig(dataset=str(models[2]), windows=2, window_tokens=32, prompts=2,
                      answer_tokens=4, max_new_tokens=8, max_prompt_tokens=64, topk=16)


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENOMY_HOME", str(tmp_path / "home"))


def test_model_against_itself_is_lossless(models, config):
    base = models[0]
    r = evaluate(base, base, config)
    assert r.kld_mean < 1e-6, f"KLD {r.kld_mean}"
    assert r.top1_agreement == 1.0
    assert r.answer_agreement == 1.0
    assert abs(r.perplexity_change_pct) < 1e-6
    assert r.tokens == config.windows * (config.window_tokens - 1)
    assert r.verdict == "near-lossless"


def test_different_model_is_flagged(models, config):
    base, other, _ = models
    r = evaluate(other, base, config)
    assert r.kld_mean > 0.01, f"KLD {r.kld_mean}"
    assert r.top1_agreement < 1.0
    assert r.verdict != "near-lossless"
    assert r.kld_p99 >= r.kld_mean


def test_quantized_candidate_and_reference_cache(models, config, tmp_path):
    base = models[0]
    out = tmp_path / "w8"
    compress(base, "w8a16", out)
    steps: list[str] = []
    first = evaluate(out, base, config, step=steps.append)
    assert "base reference: cached" not in steps
    steps.clear()
    second = evaluate(out, base, config, step=steps.append)
    assert "base reference: cached" in steps, steps
    assert second.kld_mean == pytest.approx(first.kld_mean)
    assert 0 <= first.kld_mean < 0.05, f"8-bit weights: KLD {first.kld_mean}"
    assert first.candidate.disk_bytes > 0


def test_result_round_trips(models, config):
    r = evaluate(models[0], models[0], config)
    assert type(r).model_validate_json(r.model_dump_json()) == r
    assert "held-out tokens" in r.conditions


def test_bad_config(models):
    with pytest.raises(ValidationError, match=r"(?s)windows.*must be an integer >= 1"):
        EvalConfig(windows=0)  # refused where it enters: the config, before any model loads
    with pytest.raises(InvalidInputError, match="cannot exceed"):
        evaluate(models[0], models[0], EvalConfig(answer_tokens=80))
    with pytest.raises(InvalidInputError, match="fewer"):
        evaluate(models[0], models[0], EvalConfig(dataset=str(models[2]), windows=500,
                                                  window_tokens=512, prompts=1))


def test_kld_matches_exact_when_topk_covers_everything():
    rng = np.random.default_rng(0)
    p_logits, q_logits = rng.normal(size=(5, 10)), rng.normal(size=(5, 10))
    p, q = metrics.log_softmax(p_logits), metrics.log_softmax(q_logits)
    targets = rng.integers(0, 10, size=5)
    ref = metrics.reference_from_logp(p, targets, k=9)
    exact = (np.exp(p) * (p - q)).sum(-1)
    approx = metrics.compare(ref, q, targets).kld
    # one bucket for the 10th token: a lower bound, close to exact
    assert np.all(approx <= exact + 1e-5)  # top-k log-probs are stored as float32
    assert np.allclose(approx, exact, atol=0.05)
    same = metrics.compare(ref, p, targets)
    assert np.allclose(same.kld, 0, atol=1e-9) and same.top1_match.all()


@pytest.mark.parametrize("text,expected", [
    ("1. 1. 1. 2. 3. 4. 5. 6. 7. 8. 9. 10. 11. 12. 13. 14. 15. 16. 17.", True),
    ("A$500,000, A$500,000, A$500,000, A$500,000, A$500,000, A$500,000", True),
    ("|  |  |  |  |  |  |  |  |  |  |  |  |  |  |  |  |  |  |  |  |  |  |", True),
    ("Quantization trades a little quality for a lot of memory; measure both before "
     "you ship, and keep the base model's answers as the reference.", False),
    ("Short answer.", False),
    ("1. What is the least number of words in a palindrome?\n2. What is the least number "
     "of words in a palindrome?\n3. W", True),
    ("1. 1.\n\nGreedy Algorithm:\n\nA greedy algorithm makes the best decision based on "
     "available resources, step by step.\n\n2. 2", False),
    # emptiness is not quality: a candidate answering 64 newlines was judged "0/2"
    ("", True),
    ("\n" * 64, True),
    (" \t \n ", True),
    ("...\n\n!!", True),
    ("42", False),
])
def test_degenerate_detector(text, expected):
    assert metrics.degenerate(text) is expected


def test_truncated_json_array_is_stream_parsed():
    text = '[{"id": "a", "x": 1}, {"id": "b", "x": 2}, {"id": "c", "x": '
    assert [r["id"] for r in _iter_json_array(text)] == ["a", "b"]


def test_splits_follow_the_id_hash_and_never_overlap(tmp_path):
    convs = [Conversation(id=f"id-{i}", messages=(("user", "hi"),)) for i in range(2000)]
    evals = [c.id for c in convs if split_of(c) == "evaluation"]
    # a fixed rule, so a cached reference never meets a calibration conversation: the first
    # byte of sha256(id) below 10% of 256 -> evaluation
    assert evals == [c.id for c in convs if hashlib.sha256(c.id.encode()).digest()[0] < 25.6]
    assert len(evals) == 176 and evals[:3] == ["id-18", "id-30", "id-45"]
    # what calibration and evaluation draw from one file: disjoint, and all of it together
    data = write_jsonl(tmp_path / "data.jsonl", n=80)
    calibration = {c.id for c in conversations(data, "calibration", 1000)}
    evaluation = {c.id for c in conversations(data, "evaluation", 1000)}
    assert evaluation and not calibration & evaluation
    assert len(calibration | evaluation) == 80


def test_loop_verdict_needs_more_than_chance():
    from tokenomy.evaluate.metrics import loops_beyond_noise, verdict

    # GGUF Q8_0 on 16 prompts: 5 loops against the base's 3 is within chance
    assert not loops_beyond_noise(5, 3, 16)
    assert verdict(0.0035, 5, 3, 16) == "near-lossless"
    # NVFP4A16: 10 against 3 is not
    assert loops_beyond_noise(10, 3, 16)
    assert verdict(0.19, 10, 3, 16).startswith("broken answers")
    # a base that never loops: 2 new loops in 16 are enough, 1 is not
    assert loops_beyond_noise(2, 0, 16) and not loops_beyond_noise(1, 0, 16)


def test_lm_eval_shakespeare_cloze_runs_after_install(tmp_path):
    """The documented `--lm-eval shakespeare_cloze` works on what `make install` installs:
    lm-evaluation-harness on the packaged local task, offline, on a tiny checkpoint."""
    pytest.importorskip("lm_eval", reason="lm_eval is part of tokenomy[compress]")
    from tiny import make_model_dir
    from tokenomy.evaluate.lm_eval_tasks import check_tasks, run_lm_eval

    check_tasks(["shakespeare_cloze"])
    scores = run_lm_eval(make_model_dir(tmp_path / "tiny"), ["shakespeare_cloze"], limit=4)
    (task,) = scores
    assert task == "shakespeare_cloze"
    accuracy = next(v for k, v in scores[task].items() if k.startswith("acc"))
    assert 0.0 <= accuracy <= 1.0


def test_a_candidate_of_another_architecture_is_named_before_any_verdict(tmp_path):
    from tiny import make_model_dir
    from tokenomy.evaluate import evaluate

    base = make_model_dir(tmp_path / "base", hidden=64)
    other = make_model_dir(tmp_path / "other", hidden=96)
    with pytest.raises(InvalidInputError, match="different architecture"):
        evaluate(other, base)


def test_eval_command_end_to_end(models):
    """`tokenomy eval` as a user runs it: JSON that round-trips, and the table."""
    import json

    from click.testing import CliRunner

    from tokenomy.cli import commands

    base, other, data = models
    args = ["eval", str(other), "--base", str(base), "--dataset", str(data), "--windows", "2",
            "--window-tokens", "32", "--prompts", "2", "--answer-tokens", "4"]
    r = CliRunner().invoke(commands(), [*args, "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    result = json.loads(r.output[r.output.index("{"):])
    assert result["kld_mean"] > 0.01, "another model's weights must lose something"
    table = CliRunner().invoke(commands(), args, catch_exceptions=False)
    assert table.exit_code == 0 and "Quality vs base (measured" in table.output
    assert f"{result['kld_mean']:.4f}"[:5] in table.output
