"""distill on tiny random models: block ranking, greedy removal, the written student loads
in plain transformers and computes, KD loss decreases, and a run killed with SIGKILL after
a checkpoint resumes to the same loss as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tiny import logits_of, make_model_dir, write_jsonl
from tokenomy.distill import PruneConfig, prune
from tokenomy.distill import layers as L
from tokenomy.distill.train import TrainConfig, train

WINDOW = 32


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("distill")
    make_model_dir(root / "teacher", layers=4)
    write_jsonl(root / "data.jsonl", n=60)
    return root


def identity_blocks(src: Path, dst: Path, which: set[int]) -> Path:
    """A copy of `src` whose blocks in `which` add nothing to the residual stream."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src)
    with torch.no_grad():
        for i in which:
            model.model.layers[i].self_attn.o_proj.weight.zero_()
            model.model.layers[i].mlp.down_proj.weight.zero_()
    model.save_pretrained(dst)
    AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    return dst


def config(work, **kw) -> PruneConfig:
    return PruneConfig(dataset=str(work / "data.jsonl"), windows=2, window_tokens=WINDOW, **kw)


def test_an_identity_block_ranks_first_and_goes(work, tmp_path):
    teacher = identity_blocks(work / "teacher", tmp_path / "t", {2})
    m = prune(teacher, tmp_path / "s", config(work, drop=1))
    blocks = {b["index"]: b for b in m.calibration["all_blocks"]}
    assert [r.index for r in m.layers_removed] == [2]
    assert blocks[2]["kld_alone"] < 1e-6, blocks[2]
    assert blocks[2]["block_influence"] < 1e-6 and blocks[2]["angular_distance"] < 1e-3
    others = [blocks[i]["kld_alone"] for i in (0, 1, 3)]
    assert min(others) > 1e-3, f"random blocks should cost something: {others}"


def test_greedy_removal_takes_the_cheapest_pair(work, tmp_path):
    teacher = identity_blocks(work / "teacher", tmp_path / "t", {1, 3})
    m = prune(teacher, tmp_path / "s", config(work, keep_layers=2, candidates=3))
    assert sorted(r.index for r in m.layers_removed) == [1, 3]
    assert m.layers_removed[-1].kld_after < 1e-6, m.layers_removed
    assert m.layers == 2 and m.teacher.layers == 4 and m.tokens_seen == 0
    assert len(m.teacher.sha256) == 64


def test_written_student_loads_and_matches_the_teacher_without_those_blocks(work, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    m = prune(work / "teacher", tmp_path / "s", config(work, drop=2))
    gone = {r.index for r in m.layers_removed}
    cfg = json.loads((tmp_path / "s" / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 2
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "s")
    assert [b.self_attn.layer_idx for b in student.model.layers] == [0, 1]
    teacher = AutoModelForCausalLM.from_pretrained(work / "teacher")
    ids = torch.arange(1, 33)[None]
    with torch.no_grad(), L.without(teacher, gone):
        expected = teacher(ids).logits
    got = logits_of(tmp_path / "s")
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()
    with torch.no_grad():  # and it generates (KV cache slots renumbered)
        out = student.generate(ids[:, :8], max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 12)


def test_kd_loss_decreases(work, tmp_path):
    # a 2-layer student of other random weights (same tokenizer): far from the teacher
    make_model_dir(tmp_path / "s", layers=2, seed=1)
    m = train(tmp_path / "s", work / "teacher", tmp_path / "o", TrainConfig(
        tokens=WINDOW * 2 * 40, dataset=str(work / "data.jsonl"), window_tokens=WINDOW,
        batch_windows=2, lr=3e-3))
    curve = [loss for _, loss in m.runs[-1].loss_curve]
    first, last = sum(curve[:5]) / 5, sum(curve[-5:]) / 5
    assert last < 0.8 * first, f"KD loss {first:.4f} -> {last:.4f}"
    assert m.tokens_seen == WINDOW * 2 * 40 and m.objective == "kd"
    assert not (tmp_path / "o" / "checkpoint").exists()  # state removed after a finished run
    assert logits_of(tmp_path / "o").shape[1] == 32


def test_minutes_alone_plan_the_schedule_and_bound_the_run(work, tmp_path):
    make_model_dir(tmp_path / "s", layers=2, seed=1)
    m = train(tmp_path / "s", work / "teacher", tmp_path / "o", TrainConfig(
        objective="ce", minutes=0.05, dataset=str(work / "data.jsonl"), window_tokens=WINDOW,
        batch_windows=2))
    run = m.runs[-1]
    assert run.tokens > 0 and run.tokens % (WINDOW * 2) == 0
    assert run.config["tokens"] >= run.tokens  # the planned schedule bounds what ran
    assert run.seconds <= 0.05 * 60 + 10, run.seconds  # one step past the bound at most


def _cli_train(work, student: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "tokenomy", "distill", "train", str(student), "--tokens",
           str(WINDOW * 2 * 60), "--dataset", str(work / "data.jsonl"), "--window-tokens",
           str(WINDOW), "--batch-windows", "2", "--lr", "3e-3", "--checkpoint-steps", "5",
           "-o", str(out), "--json", *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_resume_after_sigkill_reaches_the_same_loss(work, tmp_path):
    prune(work / "teacher", tmp_path / "s", config(work, drop=2))
    whole = _cli_train(work, tmp_path / "s", tmp_path / "whole")
    killed = _cli_train(work, tmp_path / "s", tmp_path / "killed")
    state = tmp_path / "killed" / "checkpoint" / "state.pt"
    deadline = time.monotonic() + 120
    while not state.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (tmp_path / "killed" / "tokenomy.json").exists()
    resumed = subprocess.run(
        [sys.executable, "-m", "tokenomy", "distill", "train", str(tmp_path / "s"),
         "--resume", "-o", str(tmp_path / "killed"), "--json"],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert whole.wait() == 0, whole.stderr.read()[-2000:]
    a = json.loads((tmp_path / "whole" / "tokenomy.json").read_text())["runs"][-1]
    b = json.loads((tmp_path / "killed" / "tokenomy.json").read_text())["runs"][-1]
    assert a["tokens"] == b["tokens"] == WINDOW * 2 * 60
    final_a, final_b = a["loss_curve"][-1][1], b["loss_curve"][-1][1]
    assert abs(final_a - final_b) <= 1e-3 * max(1.0, abs(final_a)), (final_a, final_b)
    assert len(a["loss_curve"]) == len(b["loss_curve"])


def test_the_student_is_a_model_like_any_other(work, tmp_path):
    """eval measures a pruned student against its teacher (depth may differ), and compress
    quantizes it; the distill manifest is not mistaken for a compression manifest."""
    from tokenomy.compress import compress
    from tokenomy.evaluate import EvalConfig, evaluate

    m = prune(work / "teacher", tmp_path / "s", config(work, drop=1))
    cfg = EvalConfig(dataset=str(work / "data.jsonl"), windows=2, window_tokens=WINDOW,
                     prompts=2, answer_tokens=4, max_new_tokens=8, max_prompt_tokens=400,
                     topk=16)
    r = evaluate(tmp_path / "s", work / "teacher", cfg)
    assert r.kld_mean > 0.01, f"a block removed should cost something: {r.kld_mean}"
    assert abs(r.kld_mean - m.layers_removed[0].kld_alone) < 1.0
    same = evaluate(work / "teacher", work / "teacher", cfg)
    assert same.kld_mean < 1e-6, same.kld_mean
    q = compress(tmp_path / "s", "w8a16", tmp_path / "q")
    assert q.source.sha256 and (tmp_path / "q" / "tokenomy.json").is_file()
    assert logits_of(tmp_path / "q").shape == logits_of(tmp_path / "s").shape
