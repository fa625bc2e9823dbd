"""`bench --engine A --engine B` / `--compare`: the engine to run at each load is chosen
from the measurements by a stated rule, and bad input is one clear line."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tokenomy.bench.compare import MIN_GOODPUT, compare
from tokenomy.bench.result import BenchResult, BenchRun
from tokenomy.cli import commands
from tokenomy.errors import InvalidInputError


def _run(c: int, tok_s: float, usd: float | None, goodput: float = 1.0, failed: int = 0):
    return BenchRun.model_construct(concurrency=c, output_tokens_per_s=tok_s,
                                    usd_per_1m_output=usd, goodput_fraction=goodput,
                                    requests_failed=failed, requests_ok=8 - failed)


def _result(engine: str, runs, hardware: str = "cpu", startup: float | None = 1.0):
    return BenchResult.model_construct(engine=engine, runs=runs, hardware=hardware,
                                       model="m", startup_s=startup,
                                       slo={"ttft_s": 2.0, "tpot_s": 0.2})


def test_the_cheapest_engine_meeting_the_slos_wins_at_each_level():
    llama = _result("llama.cpp server", [_run(1, 50, 0.40), _run(16, 70, 0.30)], startup=1.9)
    ov = _result("openvino", [_run(1, 46, 0.55), _run(16, 190, 0.06)], startup=9.0)
    c = compare([llama, ov])
    assert c.levels == [1, 16]
    assert [(p.concurrency, p.engine) for p in c.picks] == [(1, "llama.cpp server"),
                                                          (16, "openvino")]
    assert all(p.meets_slo for p in c.picks)
    assert c.startup_s == {"llama.cpp server": 1.9, "openvino": 9.0}


def test_a_cheaper_engine_that_misses_the_slos_or_fails_is_not_picked():
    cheap_but_slow = _result("a", [_run(1, 10, 0.10, goodput=MIN_GOODPUT - 0.01)])
    cheap_but_failing = _result("b", [_run(1, 10, 0.05, failed=1)])
    dear = _result("c", [_run(1, 10, 0.90)])
    pick = compare([cheap_but_slow, cheap_but_failing, dear]).picks[0]
    assert pick.engine == "c" and pick.meets_slo
    assert "89% within the SLOs" in pick.reason and "requests failed" in pick.reason


def test_when_no_engine_meets_the_slos_the_best_goodput_is_flagged():
    a = _result("a", [_run(50, 10, 0.1, goodput=0.2)])
    b = _result("b", [_run(50, 10, 0.5, goodput=0.6)])
    pick = compare([a, b]).picks[0]
    assert pick.engine == "b" and not pick.meets_slo and "no engine kept" in pick.reason


def test_levels_an_engine_did_not_run_stay_blank():
    c = compare([_result("a", [_run(1, 10, 0.2)]), _result("b", [_run(16, 10, 0.1)])])
    assert c.levels == [1, 16] and 16 not in c.cells["a"]
    assert [p.engine for p in c.picks] == ["a", "b"]


def test_two_results_of_one_engine_get_distinct_names():
    c = compare([_result("x", [_run(1, 10, 0.2)]), _result("x", [_run(1, 10, 0.1)])])
    assert c.engines == ["x", "x #2"] and c.picks[0].engine == "x #2"


@pytest.mark.parametrize("results,message", [
    ([_result("a", [_run(1, 1, 1)])], "two or more"),
    ([_result("a", [_run(1, 1, 1)]), _result("b", [_run(1, 1, 1)], hardware="H100-SXM")],
     "different hardware"),
    ([_result("a", [_run(None, 1, 1)]), _result("b", [_run(1, 1, 1)])], "open-loop"),
])
def test_results_that_cannot_be_lined_up_are_refused(results, message):
    with pytest.raises(InvalidInputError, match=message):
        compare(results)


@pytest.mark.parametrize("args,message", [
    (["--levels", "1,x"], "--levels"),
    (["--levels", "1,4", "--sweep"], "choose one load profile"),
    (["http://127.0.0.1:9/v1", "--engine", "openvino"], "--engine starts an engine"),
])
def test_bad_bench_options_are_one_line(args, message):
    result = CliRunner().invoke(commands(), ["bench", *args])
    assert result.exit_code != 0 and message in result.output
    assert "Traceback" not in result.output


@pytest.mark.integration
@pytest.mark.slow
def test_both_cpu_engines_measured_in_one_run_with_a_pick_per_level(tmp_path):
    pytest.importorskip("openvino_genai")
    out = tmp_path / "b"
    result = CliRunner().invoke(commands(), [
        "bench", "--engine", "llamacpp", "--engine", "openvino", "--levels", "1,2",
        "--synthetic", "16:8", "--requests", "4", "-o", str(out)])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "compare.json").read_text())
    assert saved["engines"] == ["llama.cpp server", "openvino"] and saved["levels"] == [1, 2]
    assert all(v is not None and v > 0 for v in saved["startup_s"].values())
    assert [p["concurrency"] for p in saved["picks"]] == [1, 2]
    assert (out / "llamacpp" / "result.json").is_file()
    assert (out / "openvino" / "result.json").is_file()
    assert "Engine to run at each load" in result.output


def _option(engine: str, scheme: str, usd: float, kld: float | None = 0.01,
            workload: str = "chat"):
    from tokenomy.optimize.search import Option

    kind = "gpu" if engine == "L4" else "cpu"
    target = "L4" if kind == "gpu" else f"cpu {engine}: Xeon x2"
    return Option(scheme=scheme, target=target, workload=workload, kind=kind, kld=kld,
                  usd_per_m_output=usd, usd_per_m_input=usd / 4, quality_measured=True,
                  cost_measured=kind == "cpu")


def test_optimize_names_the_cpu_engine_per_workload_inside_the_budget():
    from tokenomy.catalog import Workload
    from tokenomy.optimize.search import Budget, cpu_selections

    options = [_option("L4", "fp8-dynamic", 0.02),  # a GPU is cheaper: not a CPU pick
               _option("llamacpp", "gguf-q4_k_m", 0.3, kld=0.5),  # outside the budget
               _option("llamacpp", "base", 1.1), _option("openvino", "base", 0.9),
               _option("llamacpp", "base", 0.9, workload="batch"),
               _option("openvino", "base", 0.25, workload="batch")]
    wls = [Workload(name=n, description=n, input_tokens=512, output_tokens=128, mode=m)
           for n, m in (("chat", "online"), ("batch", "offline"))]
    picks = {s.workload: s for s in cpu_selections(options, Budget(), wls)}
    assert picks["chat"].chosen.target.startswith("cpu openvino")
    assert picks["batch"].chosen.usd_per_m_output == 0.25
    assert any("best on llamacpp: base $1.1000/1M" in r for r in picks["chat"].reasons)
    assert cpu_selections([options[0]], Budget(), wls) == []
