"""Speculative decoding and prefix caching in the planner (plan/levers.py): the expected
tokens per step, where speculation pays and where it stops, what a draft model costs,
what a prefix-cache hit saves, and the CLI's one-line refusals. Expectations are worked
out by hand from the catalog's H100-SXM and vLLM figures, the arithmetic beside them."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from tokenomy import plan
from tokenomy.catalog import Catalog
from tokenomy.cli import commands
from tokenomy.plan.cost import operating_point
from tokenomy.plan.levers import Lever, Levers, expected_tokens
from tokenomy.plan.memory import weight_bytes, weights_read_per_step
from tokenomy.plan.perf import Hardware

CAT = Catalog.load()
CLI = commands()
H100 = CAT.gpu("H100-SXM")
VLLM = CAT.engine("vllm")
BF16 = CAT.scheme("bf16")


def _one(model="llama-3.1-8b", workload="chat", **levers):
    """The single row of `model` in bf16 on one H100 node type."""
    return plan(model, workload, gpus=["H100-SXM"], schemes=["bf16"], **levers).rows[0]


@pytest.mark.parametrize(("alpha", "k", "expected"), [
    (0.8, 4, 3.3616),  # (1 - 0.8^5) / 0.2 = (1 - 0.32768) / 0.2 = 0.67232 / 0.2
    (0.7, 4, 2.7731),  # (1 - 0.16807) / 0.3 = 0.83193 / 0.3
    (0.5, 1, 1.5),     # one proposal: 1 + a
])
def test_expected_tokens_per_step(alpha, k, expected):
    assert expected_tokens(alpha, k) == pytest.approx(expected, abs=1e-4)


def test_levers_off_leave_the_plan_as_it_was():
    plain = plan("llama-3.1-8b", gpus=["H100-SXM"], schemes=["bf16", "w4a16"])
    zero = plan("llama-3.1-8b", gpus=["H100-SXM"], schemes=["bf16", "w4a16"],
                prefix_cache_hit=0.0)
    assert zero.levers is None and zero.rows == plain.rows


@pytest.mark.parametrize("batch", [1, 16, 256])
def test_a_lever_that_does_nothing_reproduces_operating_point(batch):
    """levers.py re-derives perf's operating point; with E = 1 and H = 0 it must agree."""
    spec, wl = CAT.model("llama-3.1-8b"), CAT.workload("chat")
    w, hw = weight_bytes(spec, BF16), Hardware(H100, VLLM)
    lever = Lever(Levers())
    prefill = lever.prefill_s(spec, BF16, w, hw, wl.input_tokens, 16)
    assert lever.point(spec, BF16, w, hw, wl, batch, 16, prefill) == \
        operating_point(spec, BF16, w, hw, wl, batch, 16)


def test_ngram_at_batch_one_cuts_tpot_by_e():
    """Batch 1, llama-3.1-8b bf16 on H100: the step streams ~15.0 GB of weights (16.06 GB
    less the 1.05 GB embedding table, gathered not streamed) at 3350 GB/s x 0.786 = 5.70 ms,
    while 1 + 4 proposed + 7 prompt tokens are 12 x 2 x 7.5e9 = 0.18 TFLOP, 0.33 ms at
    989 x 0.559 TFLOP/s: memory-bound, so verifying 5 tokens costs what decoding 1 does
    and TPOT falls by E = 3.3616. Plain TPOT: 5.70 ms + 640 tokens of KV x 128 KiB = 84 MB
    (0.03 ms) + 1 ms a step + 30 us a sequence = 6.76 ms."""
    e = _one(spec_decode="ngram", acceptance=0.8).levers
    assert e.batch1_plain_tpot_ms == pytest.approx(5.70 + 0.03 + 1.0 + 0.03, rel=0.01)
    ratio = e.batch1_plain_tpot_ms / e.batch1_tpot_ms
    assert ratio == pytest.approx(3.3616, rel=0.005), ratio


def test_speculation_stops_paying_at_the_offline_throughput_batch():
    """Offline at the throughput peak the step is compute-bound. Per sequence a step
    computes 1 + 2 tokens without speculation (its answer token and in/out = 2 prompt
    tokens) for 1 output token; with it k + 1 + 2E = 5 + 5.55 tokens for E = 2.77: 3.80
    FLOP-tokens an output token against 3.00, 27% more. Only the per-sequence overhead,
    paid once a step, is spread over E tokens: throughput stays within a few %."""
    row = _one(workload="batch", spec_decode="ngram", acceptance=0.7)
    e = row.levers
    assert row.point.bound == "compute"
    gain = row.point.output_tokens_per_s / e.without_point.output_tokens_per_s
    assert 0.95 < gain < 1.03, gain
    assert e.batch1_plain_tpot_ms / e.batch1_tpot_ms > 2.7  # yet at batch 1: ~E = 2.77


def test_at_max_batch_speculation_loses_and_says_where_it_stops():
    """Chat at vLLM's 256 sequences: speculation's TPOT is above the plain one at the same
    batch, and the row names the largest batch where it still helps (below 256)."""
    row = _one(spec_decode="ngram", acceptance=0.7)
    e = row.levers
    assert row.point.batch == 256
    assert row.point.tpot_ms > e.same_batch_tpot_ms
    assert 16 <= e.spec_pays_up_to_batch < 256
    # with a prefix cache too, speculation is judged against the cache alone: the cache's
    # own TPOT gain (half the chunked prefill) does not make speculation look better
    both = _one(spec_decode="ngram", acceptance=0.7, prefix_cache_hit=0.5)
    assert both.point.tpot_ms < both.levers.same_batch_tpot_ms  # both levers vs none
    assert both.levers.spec_pays_up_to_batch < 256


def test_a_draft_model_costs_memory_and_time():
    """qwen2.5-0.5b drafting for qwen2.5-7b: its 0.99 GB of bf16 weights come out of the
    KV room, each sequence also holds the draft's KV, and k = 4 draft passes (each
    streaming ~0.99 GB at 3350 x 0.786 GB/s = 0.38 ms) make a step slower than n-gram's."""
    draft, ngram, plain = (_one("qwen2.5-7b", spec_decode="draft:qwen2.5-0.5b",
                                acceptance=0.7),
                           _one("qwen2.5-7b", spec_decode="ngram", acceptance=0.7),
                           _one("qwen2.5-7b"))
    draft_bytes = weight_bytes(CAT.model("qwen2.5-0.5b"), BF16).total
    assert draft.levers.draft_gb_per_gpu == pytest.approx(draft_bytes / 1e9)
    assert plain.deployment.kv_room - draft.deployment.kv_room == pytest.approx(draft_bytes)
    assert draft.deployment.kv_per_sequence > plain.deployment.kv_per_sequence
    assert draft.deployment.max_sequences < plain.deployment.max_sequences

    spec, small = CAT.model("qwen2.5-7b"), CAT.model("qwen2.5-0.5b")
    lever = Lever(Levers(spec_decode="draft:qwen2.5-0.5b", acceptance=0.7, spec_tokens=4,
                         tokens_per_step=expected_tokens(0.7, 4)), small)
    _, draft_s = lever.step(spec, BF16, weight_bytes(spec, BF16), Hardware(H100, VLLM),
                            1, 640, 0, 0, 16)
    one_pass = weights_read_per_step(small, weight_bytes(small, BF16), 1) / (3350e9 * 0.7861)
    assert draft_s == pytest.approx(4 * one_pass, rel=0.05), (draft_s, one_pass)
    # at batch 1 the draft still pays, less than n-gram's free proposals at equal acceptance
    e = draft.levers
    assert ngram.levers.batch1_tpot_ms < e.batch1_tpot_ms < e.batch1_plain_tpot_ms
    assert e.draft_ms > 0 and ngram.levers.draft_ms == 0


def test_prefix_cache_hit_halves_prefill_and_lowers_input_dollars():
    """An 8192-token prompt prefills in one 8192-token chunk, compute-bound:
    linear 2 x 7.504e9 x 8192 = 1.2295e14 FLOPs / (989e12 x 0.5587) = 222.5 ms, attention
    2 x 32 heads x 256 x 8192 x 32 layers x 4096 = 1.759e13 -> 31.8 ms, +1 ms: 255.3 ms.
    With H = 0.5: half the linear work, 111.2 ms, and 4096 queries over 6144 tokens on
    average, 1.319e13 -> 23.9 ms, +1 ms: 136.1 ms, 0.533 of it. TTFT drops, $/1M input
    roughly halves, and the freed prefill lets the TPOT target admit a larger batch,
    which is the only way output tokens get cheaper."""
    row = _one(input_tokens=8192, prefix_cache_hit=0.5)
    e, p, c = row.levers, row.point, row.cost
    assert e.same_layout_prefill_ms == pytest.approx(255.3, rel=0.01)
    assert e.prefill_ms == pytest.approx(136.1, rel=0.01)
    assert p.ttft_s < e.without_point.ttft_s
    assert c.usd_per_m_input < 0.6 * e.without_cost.usd_per_m_input
    assert p.batch > e.without_point.batch and row.batch_limit == "TPOT target"
    assert c.usd_per_m_output < e.without_cost.usd_per_m_output
    chat = _one(prefix_cache_hit=0.5)  # same batch (256) both ways: output $ unchanged
    assert chat.point.batch == chat.levers.without_point.batch
    assert chat.cost.usd_per_m_output == pytest.approx(chat.levers.without_cost.usd_per_m_output)


@pytest.mark.parametrize("levers", [
    {"spec_decode": "ngram", "acceptance": 0.7},
    {"spec_decode": "draft:qwen2.5-0.5b", "acceptance": 0.6, "prefix_cache_hit": 0.3},
], ids=["ngram", "draft+prefix"])
def test_error_bands_contain_the_levered_point(levers):
    result = plan("qwen2.5-7b", "chat", gpus=["H100-SXM", "L4"], schemes=["bf16", "w4a16"],
                  **levers)
    for r in (r for r in result.rows if r.feasible):
        g, p, c = r.ranges, r.point, r.cost
        for (lo, hi), x in ((g.tpot_ms, p.tpot_ms), (g.ttft_s, p.ttft_s),
                            (g.tokens_per_s, p.output_tokens_per_s),
                            (g.usd_per_m_output, c.usd_per_m_output),
                            (g.usd_per_m_input, c.usd_per_m_input)):
            assert lo <= x <= hi, (r.scheme, r.gpu, lo, x, hi)


def test_cli_shows_with_and_without_and_the_formulas():
    args = ["plan", "llama-3.1-8b", "--gpu", "H100-SXM", "--scheme", "bf16",
            "--spec-decode", "ngram", "--acceptance", "0.7", "--prefix-cache-hit", "0.5"]
    r = CliRunner(env={"COLUMNS": "250"}).invoke(CLI, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    for fragment in ("Without -> with spec decode ngram (acceptance 0.7, k=4, E=2.77) + prefix "
                     "cache hit 50%", "TPOT@1 ms", "spec pays to batch",
                     "(1 - 0.7^5) / (1 - 0.7) = 2.773", "TPOT = step / E",
                     "prefill (1 - H) x 512 = 256 tokens after 256 cached",
                     "$/1M out = $/h x (1 - input share)", "estimated"):
        assert fragment in r.output, fragment
    j = CliRunner().invoke(CLI, [*args, "--json"], catch_exceptions=False)
    data = json.loads(j.output)
    assert data["levers"]["acceptance"] == 0.7 and data["levers"]["spec_tokens"] == 4
    assert data["levers"]["prefix_cache_hit"] == 0.5
    assert math.isclose(data["levers"]["tokens_per_step"], 2.77309, rel_tol=1e-4)
    row = data["rows"][0]
    assert row["point"]["tpot_ms"] > 0 and row["levers"]["without_point"]["tpot_ms"] > 0
    assert row["levers"]["without_cost"]["usd_per_m_input"] > row["cost"]["usd_per_m_input"]


BASE = ["plan", "llama-3.1-8b", "--gpu", "H100-SXM", "--scheme", "bf16"]


@pytest.mark.parametrize(("extra", "message"), [
    (["--spec-decode", "ngram"], "needs --acceptance A"),
    (["--spec-decode", "ngram", "--acceptance", "1"],
     "--acceptance must be a finite number > 0 and < 1, got 1"),
    (["--spec-decode", "ngram", "--acceptance", "0"], "--acceptance must be"),
    (["--spec-decode", "ngram", "--acceptance", "nan"], "--acceptance must be"),
    (["--acceptance", "0.7"], "applies only with speculative decoding: add --spec-decode"),
    (["--spec-tokens", "3"], "applies only with speculative decoding"),
    (["--spec-decode", "ngram", "--acceptance", "0.7", "--spec-tokens", "0"],
     "--spec-tokens must be an integer >= 1"),
    (["--prefix-cache-hit", "1"], "--prefix-cache-hit must be a finite number >= 0 and < 1"),
    (["--prefix-cache-hit", "-0.1"], "--prefix-cache-hit must be"),
    (["--spec-decode", "eagle", "--acceptance", "0.7"], "'ngram' or 'draft:MODEL'"),
    (["--spec-decode", "draft:", "--acceptance", "0.7"], "'ngram' or 'draft:MODEL'"),
    (["--spec-decode", "draft:llama-9b", "--acceptance", "0.7"],
     "unknown model 'llama-9b'"),
    (["--spec-decode", "draft:./no/such/dir", "--acceptance", "0.7"], "does not exist"),
    (["--spec-decode", "draft:llama-3.1-70b", "--acceptance", "0.7"],
     "is not smaller than llama-3.1-8b"),
    (["--spec-decode", "draft:llama-3-8b", "--acceptance", "0.7"], "not smaller"),
], ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_bad_lever_inputs_are_one_line_errors(extra, message):
    r = CliRunner().invoke(CLI, [*BASE, *extra])
    assert r.exit_code == 1, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.output
    assert message in lines[0], lines[0]
    assert "Traceback" not in r.output
