"""optimize --student on tiny models: a pruned student of a GGUF teacher is compressed
with the same schemes, every KLD measured against the teacher, priced on GPUs and on this
CPU beside the quantize-only options, and the verdict says which wins."""

from __future__ import annotations

import pytest

from tiny import write_jsonl
from tiny_llama_gguf import write_llama_gguf
from tokenomy.distill import PruneConfig, prune
from tokenomy.errors import InvalidInputError
from tokenomy.evaluate import EvalConfig
from tokenomy.optimize import Budget, Settings, optimize, reselect
from tokenomy.optimize.search import Option
from tokenomy.optimize.students import labels, verdicts
from tokenomy.report.html import render


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("home")


@pytest.fixture(autouse=True)
def _home(home, monkeypatch):
    monkeypatch.setenv("TOKENOMY_HOME", str(home))


def _settings(data):
    return Settings(eval=EvalConfig(dataset=str(data), windows=2, window_tokens=32, prompts=2,
                                    answer_tokens=4, max_new_tokens=8, max_prompt_tokens=400,
                                    topk=16),
                    calibration=str(data), calibration_samples=4, max_seq_length=64)


@pytest.fixture(scope="module")
def run(tmp_path_factory, home):
    import os

    os.environ["TOKENOMY_HOME"] = str(home)
    root = tmp_path_factory.mktemp("students")
    teacher = write_llama_gguf(root / "teacher.gguf", layers=4, context=4096)
    data = write_jsonl(root / "data.jsonl", n=400)
    prune(teacher, root / "small",
          PruneConfig(dataset=str(data), windows=2, window_tokens=32, drop=1))
    seen = []
    result = optimize(str(teacher), ["chat"], ["L4"], ["w8a16", "gguf-q8_0"],
                      settings=_settings(data), students=[str(root / "small")],
                      done=lambda r: seen.append((r.scheme, r.cached)))
    return result, seen, root, teacher, data


def test_the_student_is_measured_against_the_teacher_with_every_scheme(run):
    result, seen, *_ = run
    assert [s for s, _ in seen] == ["w8a16", "gguf-q8_0", "small/w8a16", "small/gguf-q8_0",
                                    "small"]
    (st,) = result.students
    assert (st.label, st.layers, st.teacher_layers) == ("small", 3, 4)
    assert st.params < result.model["params"]
    assert st.base.quality is not None and st.base.error is None
    # a block gone costs something against the teacher; the teacher's own w8a16 far less
    assert st.base.quality.kld_mean > 0.005
    teacher_w8 = next(r for r in result.records if r.scheme == "w8a16").quality.kld_mean
    for rec in st.records:
        assert rec.error is None, rec.error
        assert rec.quality.kld_mean > teacher_w8
    assert st.base.cpu_speed is not None  # its F16 GGUF timed on this CPU


def test_student_options_sit_beside_the_quantize_only_ones(run):
    result, *_ = run
    by = {(o.scheme, o.kind): o for o in result.options}
    assert {("small", "gpu"), ("small/w8a16", "gpu"), ("small/gguf-q8_0", "cpu"),
            ("small", "cpu"), ("base", "gpu"), ("w8a16", "gpu")} <= set(by)
    assert by[("small/w8a16", "gpu")].model == "small" and by[("w8a16", "gpu")].model == ""
    assert by[("small", "gpu")].kld == result.students[0].base.quality.kld_mean
    assert by[("small/gguf-q8_0", "cpu")].cost_measured
    # a CPU figure names the load it was measured at: timings at other loads do not compare
    assert "/core before it started" in by[("small/gguf-q8_0", "cpu")].cost_basis
    # fewer layers, fewer bytes: never dearer than the teacher at the same scheme
    assert by[("small/w8a16", "gpu")].weights_gb < by[("w8a16", "gpu")].weights_gb
    (line,) = result.student_verdicts
    assert line.startswith("[chat]") and " wins: " in line


def test_the_verdict_follows_the_budget(run, tmp_path):
    result, *_ = run
    tight = reselect(result, Budget(max_kld=1e-9, max_ppl_increase_pct=1e9))
    assert "no student option meets the quality budget" in tight.student_verdicts[0]
    assert "KLD" in tight.student_verdicts[0]  # the closest student is named with its KLD
    loose = reselect(result, Budget(max_kld=100, max_ppl_increase_pct=1e9))
    cheapest = min(loose.options, key=lambda o: o.usd_per_m_output)
    expect = "a student wins" if cheapest.model else "the model itself (quantized or not) wins"
    assert expect in loose.student_verdicts[0]
    page = render(loose)
    assert "Students against quantizing alone" in page and "small/gguf-q8_0" in page


def test_a_rerun_recomputes_nothing(run):
    _, _, root, teacher, data = run
    seen = []
    optimize(str(teacher), ["chat"], ["L4"], ["w8a16", "gguf-q8_0"], settings=_settings(data),
             students=[str(root / "small")], done=lambda r: seen.append(r.cached))
    assert all(seen) and len(seen) == 5


def _opt(scheme, cost, kld, model=""):
    return Option(scheme=scheme, target="L4", workload="chat", kind="gpu", kld=kld,
                  usd_per_m_output=cost, usd_per_m_input=cost, quality_measured=True,
                  cost_measured=False, model=model)


def test_verdicts_name_the_winner_and_the_margin():
    budget = Budget(max_kld=0.1)
    both = [_opt("w4a16", 1.0, 0.05), _opt("s/w4a16", 0.6, 0.08, "s")]
    assert verdicts(both, budget, ["chat"]) == [
        "[chat] a student wins: s/w4a16 on L4 at $0.6000/1M output (estimated), KLD 0.0800, "
        "40% below w4a16 on L4 at $1.0000/1M output (estimated), KLD 0.0500"]
    over = [_opt("w4a16", 1.0, 0.05), _opt("s/w4a16", 0.6, 0.5, "s")]
    assert verdicts(over, budget, ["chat"])[0].startswith(
        "[chat] the model itself (quantized or not) wins: w4a16")
    assert labels(["a/x", "b/x", "c.gguf"]) == ["x", "x-2", "c"]


def test_bad_students_are_refused(run):
    _, _, root, teacher, data = run
    with pytest.raises(InvalidInputError, match="itself"):
        optimize(str(teacher), ["chat"], ["L4"], ["w8a16"], settings=_settings(data),
                 students=[str(teacher)])
    with pytest.raises(InvalidInputError, match="catalog name"):
        optimize("llama-3.1-8b", ["chat"], ["L4"], ["w8a16"], students=[str(root / "small")])


def test_auto_is_a_candidate_allocated_under_the_budget(run):
    """`auto` in optimize: built under the budget's max KLD, timed on this CPU like any
    GGUF; another budget is another allocation (not the cached one)."""
    import json
    from pathlib import Path

    _, _, _, teacher, data = run
    seen = []
    result = optimize(str(teacher), ["chat"], ["L4"], ["auto"], Budget(max_kld=0.05),
                      _settings(data), done=lambda r: seen.append(r.cached))
    (rec,) = result.records
    assert rec.error is None, rec.error
    manifest = json.loads((Path(rec.artifact) / "tokenomy.json").read_text())
    assert manifest["auto"]["max_kld"] == 0.05
    assert rec.cpu_speed is not None
    assert any(o.scheme == "auto" and o.kind == "cpu" for o in result.options)
    again = optimize(str(teacher), ["chat"], ["L4"], ["auto"], Budget(max_kld=0.5),
                     _settings(data), done=lambda r: seen.append(r.cached))
    assert seen == [False, False] and again.records[0].key != rec.key
    tail = optimize(str(teacher), ["chat"], ["L4"], ["auto"],
                    Budget(max_kld=0.5, max_kld_p99=0.5), _settings(data))
    (p99,) = tail.records
    manifest = json.loads((Path(p99.artifact) / "tokenomy.json").read_text())
    assert p99.key not in (rec.key, again.records[0].key), "the p99 line is in the key"
    assert manifest["auto"]["max_kld_p99"] == 0.5 >= manifest["auto"]["measured_kld_p99"]
