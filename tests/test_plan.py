"""The planner: memory per scheme, deployable layouts, speed regimes, cost, risk."""

from __future__ import annotations

import pytest

from tokenomy import PlanResult, plan
from tokenomy.catalog import Catalog, Workload
from tokenomy.errors import InvalidInputError, NotFoundError
from tokenomy.plan.memory import tp_problem, weight_bytes, weights_read_per_step
from tokenomy.plan.perf import Hardware, step_time
from tokenomy.plan.risk import precision_risk

CAT = Catalog.load()


def _row(result, scheme, gpu=None):
    return next(r for r in result.rows if r.scheme == scheme and (gpu is None or r.gpu == gpu))


def test_scout_on_h100_memory():
    r = plan("llama-4-scout", gpus=["H100-SXM"], schemes=["bf16", "w8a8-int8", "w4a16"])
    bf16, int8, int4 = (_row(r, s) for s in ("bf16", "w8a8-int8", "w4a16"))
    assert 214 <= bf16.weights_gb <= 222, bf16.weights_gb
    assert 105 <= int8.weights_gb <= 113, int8.weights_gb
    assert 55 <= int4.weights_gb <= 61, int4.weights_gb  # group scales included
    # napkin: 3 GPUs hold the BF16 weights, but TP=3 does not split 40 heads: TP=4
    assert bf16.min_gpus_for_weights == 3
    assert (bf16.deployment.tp, bf16.deployment.pp) == (4, 1)
    for row in (bf16, int8, int4):
        d = row.deployment
        assert 40 % d.tp == 0 and d.max_sequences >= 1, row.scheme


def test_maverick_bf16_needs_ten_a100s_and_pipeline():
    row = plan("llama-4-maverick", gpus=["A100-80GB"], schemes=["bf16"]).rows[0]
    assert row.min_gpus_for_weights >= 10
    d = row.deployment
    assert d.num_gpus >= 10 and d.tp <= 8 and d.pp >= 2, (d.tp, d.pp)


@pytest.mark.parametrize("scheme", sorted(CAT.schemes))
def test_every_scheme_plans(scheme):
    row = plan("llama-3.1-8b", gpus=["H100-SXM"], schemes=[scheme]).rows[0]
    assert row.feasible, f"{scheme}: {row.batch_limit}"
    assert row.point.output_tokens_per_s > 0 and row.cost.usd_per_m_output > 0


def test_fewer_bits_fewer_bytes():
    spec = CAT.model("llama-3.1-70b")
    schemes = sorted(CAT.schemes.values(), key=lambda s: s.bits_per_linear_weight)
    sizes = [weight_bytes(spec, s).linear for s in schemes]
    assert sizes == sorted(sizes)


def test_mla_moe_model_fits_and_moe_reads_more_experts_with_batch():
    row = plan("deepseek-v3", gpus=["H200"], schemes=["fp8"]).rows[0]
    assert row.feasible and row.deployment.num_gpus == 8
    spec = CAT.model("qwen3-235b-a22b")
    w = weight_bytes(spec, CAT.scheme("bf16"))
    one, many = weights_read_per_step(spec, w, 1), weights_read_per_step(spec, w, 4096)
    assert one < 0.2 * w.total < many
    assert many == pytest.approx(w.total - w.embedding, rel=0.01)


def test_group_size_limits_tp():
    row = plan("qwen3-235b-a22b", gpus=["H100-SXM"], schemes=["w4a16"]).rows[0]
    assert any("TP=8" in n and "128" in n for n in row.layout_notes), row.layout_notes


@pytest.mark.parametrize("model,tp,ok", [
    ("llama-3.1-8b", 8, True), ("smollm2-135m", 2, False), ("llama-4-scout", 8, True),
    ("qwen3-235b-a22b", 8, True),
])
def test_tp_validity(model, tp, ok):
    assert (tp_problem(CAT.model(model), CAT.scheme("bf16"), tp) is None) is ok


def test_decode_regimes():
    spec, gpu = CAT.model("llama-3.1-8b"), CAT.gpu("H100-SXM")
    scheme = CAT.scheme("bf16")
    hw = Hardware(gpu, CAT.engine("vllm"))
    w = weight_bytes(spec, scheme)
    assert step_time(spec, scheme, w, hw, decode_seqs=1, context=512).bound == "memory"
    assert step_time(spec, scheme, w, hw, decode_seqs=1, context=512,
                     prefill_tokens=4096, prefill_context=256).bound == "compute"


@pytest.mark.parametrize("workload", ["chat", "rag", "batch"])
def test_workloads(workload):
    r = plan("llama-3.1-8b", workload=workload, gpus=["H100-SXM"], schemes=["fp8"])
    row, w = r.rows[0], r.workload
    assert row.feasible
    if w.mode == "online":
        assert row.point.tpot_ms <= w.tpot_target_ms and row.point.ttft_s <= w.ttft_target_s
    assert r.recommendation is not None


def test_workload_file(tmp_path):
    f = tmp_path / "support.yaml"
    f.write_text("input_tokens: 1800\noutput_tokens: 300\nmode: online\n"
                 "ttft_target_s: 2\ntpot_target_ms: 40\nrequests_per_s: 3\n")
    r = plan("qwen3-8b", workload=f, gpus=["L40S"], schemes=["fp8"])
    assert r.workload.name == "support" and r.workload.input_tokens == 1800


def test_advice_emerges_from_the_numbers():
    schemes = ["bf16", "fp8", "w8a8-int8", "w8a16", "w4a16"]
    offline = plan("llama-3.1-70b", workload="batch", gpus=["H100-SXM"], schemes=schemes)
    assert offline.recommendation.scheme in ("fp8", "w8a8-int8"), offline.recommendation
    online = plan("llama-4-scout", workload="chat", gpus=["H100-SXM"], schemes=schemes)
    assert CAT.scheme(online.recommendation.scheme).weight_only, online.recommendation


@pytest.mark.parametrize("model,scheme,level", [
    ("smollm2-135m", "w4a16", "high"), ("llama-3.1-8b", "w4a16", "high"),
    ("llama-2-7b", "w4a16", "moderate"), ("llama-3.1-8b", "fp8", "low"),
    ("deepseek-v3", "fp8", "low"),
])
def test_precision_risk(model, scheme, level):
    risk = precision_risk(CAT.model(model), CAT.scheme(scheme))
    assert risk.level == level, risk.reason


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(rate=-1), InvalidInputError, "> 0"),
    (dict(input_tokens=0), InvalidInputError, ">= 1"),
    (dict(model="llama-2-7b", input_tokens=8000), InvalidInputError, "maximum context"),
    (dict(gpus=["H100-SXN"]), NotFoundError, "h100"),
    (dict(model="llama-9"), NotFoundError, "unknown model"),
    (dict(schemes=["int3"]), NotFoundError, "scheme"),
    (dict(prices={"H100-SXM": -2}), InvalidInputError, "> 0"),
])
def test_bad_input(kwargs, error, match):
    kwargs = {"model": "llama-3.1-8b", "gpus": ["H100-SXM"], **kwargs}
    with pytest.raises(error, match=match):
        plan(**kwargs)


def test_price_override_scales_cost():
    base = plan("llama-3.1-8b", gpus=["H100-SXM"], schemes=["fp8"]).rows[0]
    half = plan("llama-3.1-8b", gpus=["H100-SXM"], schemes=["fp8"],
                prices={"h100": base.usd_per_gpu_hour / 2}).rows[0]
    assert half.cost.usd_per_m_output == pytest.approx(base.cost.usd_per_m_output / 2)


def test_result_round_trips():
    r = plan("mixtral-8x7b", gpus=["A100-80GB"], schemes=["fp8", "w4a16"])
    assert PlanResult.model_validate_json(r.model_dump_json()) == r


def test_embedded_default_model():
    r = plan(gpus=["L4"], schemes=["bf16"])
    assert r.model.name == "smollm2-135m"
    assert r.model.total_params == pytest.approx(134.5e6, rel=0.02)


def test_online_vs_offline_batches_differ():
    wl = Workload(name="strict", description="x", input_tokens=512, output_tokens=256,
                  mode="online", ttft_target_s=1, tpot_target_ms=12)
    online = plan("llama-3.1-70b", workload=wl, gpus=["H100-SXM"], schemes=["fp8"]).rows[0]
    offline = plan("llama-3.1-70b", workload="batch", gpus=["H100-SXM"], schemes=["fp8"]).rows[0]
    assert online.point.batch < offline.point.batch
