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
from tokenomy.plan.memory import weight_bytes
from tokenomy.plan.perf import Hardware

CAT = Catalog.load()
CLI = commands()
H100 = CAT.gpu("H100-SXM")
VLLM = CAT.engine("vllm")
BF16 = CAT.scheme("bf16")


def _one(model="llama-3.1-8b", workload="chat", **levers):
    """The single row of `model` in bf16 on one H100 node type."""
    return plan(model, workload, gpus=["H100-SXM"], schemes=["bf16"], **levers).rows[0]


# -- llama-3.1-8b in bf16 on one H100-SXM under vLLM, by hand ------------------------------
# gpus.yaml: 3350 GB/s, 989 TFLOP/s bf16. engine_fits.yaml, vllm: decode_bandwidth 0.8368,
# compute 0.5587, step_overhead_ms 0.9692, layer_overhead_us 19.6899, sequence_overhead_us 30
BANDWIDTH = 3350e9 * 0.8368  # bytes/s
RATE = 989e12 * 0.5587  # FLOP/s
STREAMED = 16_060_522_496 - 128256 * 4096 * 2  # less the embedding: gathered, not streamed
# linear layers (32 x (q, o 4096^2; k, v 4096 x 1024; FFN 3 x 4096 x 14336)) + LM head
MATMUL = 32 * (2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336) + 128256 * 4096
KV_TOKEN = 2 * 8 * 128 * 32 * 2  # K and V, 8 heads x 128, 32 layers, 2 bytes: 128 KiB
ATTN = 2 * 32 * 2 * 128 * 32  # FLOPs of QK^T and AV per query token per context token
FIXED_S = 0.9692e-3 + 32 * 19.6899e-6  # per step, and per layer: 1.599 ms
SEQ_S = 30e-6


def _step_s(tokens, seqs, context, pairs):
    """One step: the GEMMs over `tokens` (weights streamed vs math), then attention
    (`seqs` sequences' KV of `context` tokens read vs math over `pairs` query x context
    tokens), then the overheads."""
    gemms = max(STREAMED / BANDWIDTH, 2 * MATMUL * tokens / RATE)
    attention = max(seqs * context * KV_TOKEN / BANDWIDTH, ATTN * pairs / RATE)
    return gemms + attention + FIXED_S + seqs * SEQ_S


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
    less the 1.05 GB embedding table, gathered not streamed) at 3350 GB/s x 0.8368 =
    5.354 ms, while 1 + 4 proposed + 7 prompt tokens are 12 x 2 x 7.5e9 = 0.18 TFLOP,
    0.33 ms at 989 x 0.559 TFLOP/s: memory-bound, so verifying 5 tokens costs what
    decoding 1 does and TPOT falls by E = 3.3616. Plain TPOT: 5.354 ms + 640 tokens of KV
    x 128 KiB = 84 MB (0.030 ms) + 0.969 ms a step + 32 layers x 19.69 us (0.630 ms) +
    30 us a sequence = 7.014 ms."""
    e = _one(spec_decode="ngram", acceptance=0.8).levers
    assert e.batch1_plain_tpot_ms == pytest.approx(5.354 + 0.030 + 0.969 + 0.630 + 0.030,
                                                   rel=0.01)
    # exactly: 1 decode + ceil(512 / 256) = 2 prompt tokens (over 256), 640 tokens of KV;
    # with speculation 1 + 7 + 4 tokens, attention math over 640 + 7 x 256 + 4 x 640
    assert e.batch1_plain_tpot_ms == pytest.approx(
        _step_s(3, 1, 640, 640 + 2 * 256) * 1e3, rel=1e-9)
    assert e.batch1_tpot_ms == pytest.approx(
        _step_s(12, 1, 640, 640 + 7 * 256 + 4 * 640) / ((1 - 0.8**5) / 0.2) * 1e3, rel=1e-9)
    ratio = e.batch1_plain_tpot_ms / e.batch1_tpot_ms
    assert ratio == pytest.approx(3.3616, rel=0.005), ratio


def test_speculation_at_the_offline_throughput_batch():
    """Offline (1024 in, 256 out) at the throughput peak, batch 192 with and without
    speculation, the GEMMs are compute-bound. Per sequence a step computes 1 + 4 tokens
    without speculation (its answer token and in/out = 4 prompt tokens) for 1 output
    token; with it k + 1 + 4E = 5 + 11.09 tokens for E = 2.77: 5.80 FLOP-tokens an output
    token against 5.00, 16% more. But the attention kernel runs after the GEMMs, not under
    them: the KV read (192 x 1152 tokens x 128 KiB, 10.34 ms) and the overheads (7.36 ms)
    are paid once a step, spread over E tokens. Plain: 26.08 ms of GEMMs (960 tokens) +
    10.34 + 7.36 = 43.78 ms a token; with speculation 83.94 ms (3090 tokens) + 10.34 +
    7.36 = 101.64 ms for 2.77 tokens, 36.65 ms: 19% more throughput. (When one roofline
    hid the KV read under the GEMMs, speculation gained nothing here, within a few %.)"""
    row = _one(workload="batch", spec_decode="ngram", acceptance=0.7)
    e = row.levers
    assert (row.point.batch, e.without_point.batch) == (192, 192)
    assert row.point.bound == "compute"
    tokens_per_step = (1 - 0.7**5) / 0.3  # E = 2.7731
    prompt = 2130  # ceil(192 x 1024 x E / 256) = ceil(2129.74)
    assert math.ceil(192 * 1024 * tokens_per_step / 256) == prompt
    plain = _step_s(192 + 768, 192, 1152, 192 * 1152 + 768 * 512)
    spec = _step_s(192 + prompt + 4 * 192, 192, 1152,
                   192 * 1152 + prompt * 512 + 4 * 192 * 1152)
    assert (plain, spec) == pytest.approx((43.78e-3, 101.64e-3), rel=1e-3)
    assert e.without_point.tpot_ms == pytest.approx(plain * 1e3, rel=1e-9)
    assert row.point.tpot_ms == pytest.approx(spec / tokens_per_step * 1e3, rel=1e-9)
    gain = row.point.output_tokens_per_s / e.without_point.output_tokens_per_s
    assert gain == pytest.approx(plain / (spec / tokens_per_step), rel=1e-9)
    assert 1.19 < gain < 1.20, gain
    assert e.batch1_plain_tpot_ms / e.batch1_tpot_ms > 2.7  # and at batch 1: ~E = 2.77


def test_at_the_chosen_batch_speculation_loses_and_says_where_it_stops():
    """Chat (512 in, 256 out, TPOT <= 30 ms). Per sequence a step reads 640 tokens of KV
    (kv = 29.9 us) and pays o = 30 us of overhead, and each token's GEMMs take c = 27.2 us
    (2 x 7.5e9 FLOPs at 989 x 0.5587 TFLOP/s). Once the GEMMs are compute-bound, a
    sequence costs 3c + kv + o a step for 1 output token without speculation (its answer
    token and 2 prompt tokens) and (k + 1 + 2E) c + kv + o for E tokens with it:
    speculation loses at large batch where E < (5c + kv + o) / (c + kv + o) = 2.25. At
    acceptance 0.7 (E = 2.77) it pays at every batch up to vLLM's 256 (the KV read, no
    longer hidden under the GEMMs, is spread over E tokens); at 0.5 (E = 1.9375) it stops:
    batch 64 (plain GEMMs still memory-bound) 10.77 ms against 10.79, batch 96 15.74
    against 15.18. The row runs at 128, the largest batch within 30 ms (192: 30.65 ms),
    where speculation's TPOT (20.71 ms) is above the plain one (19.70 ms)."""
    c = 2 * MATMUL / RATE
    kv = 640 * KV_TOKEN / BANDWIDTH
    threshold = (5 * c + kv + SEQ_S) / (c + kv + SEQ_S)
    assert threshold == pytest.approx(2.2476, abs=1e-4)
    assert (1 - 0.5**5) / 0.5 == 1.9375 < threshold < (1 - 0.7**5) / 0.3
    assert _one(spec_decode="ngram", acceptance=0.7).levers.spec_pays_up_to_batch == 256

    def plain(b):  # b decode + 2b prompt tokens (over 256)
        return _step_s(3 * b, b, 640, b * 640 + 2 * b * 256)

    def spec(b):  # + ceil(2 E b) prompt tokens and 4b proposed ones (over 640)
        prompt = math.ceil(b * 512 * 1.9375 / 256)
        return _step_s(b + prompt + 4 * b, b, 640,
                       b * 640 + prompt * 256 + 4 * b * 640) / 1.9375

    assert [round(spec(b) * 1e3, 2) for b in (64, 96, 128, 192)] == [10.77, 15.74, 20.71,
                                                                     30.65]
    assert [round(plain(b) * 1e3, 2) for b in (64, 96, 128)] == [10.79, 15.18, 19.70]
    row = _one(spec_decode="ngram", acceptance=0.5)
    e = row.levers
    assert (row.point.batch, row.batch_limit) == (128, "TPOT target")
    assert spec(128) <= 30e-3 < spec(192)
    assert row.point.tpot_ms == pytest.approx(spec(128) * 1e3, rel=1e-9)
    assert e.same_batch_tpot_ms == pytest.approx(plain(128) * 1e3, rel=1e-9)
    assert row.point.tpot_ms > e.same_batch_tpot_ms
    assert spec(64) < plain(64) and spec(96) > plain(96)
    assert e.spec_pays_up_to_batch == 64
    assert 16 <= e.spec_pays_up_to_batch < row.point.batch
    # with a prefix cache too, speculation is judged against the cache alone: the cache's
    # own TPOT gain (half the chunked prefill) does not make speculation look better
    both = _one(spec_decode="ngram", acceptance=0.5, prefix_cache_hit=0.5)
    assert both.point.tpot_ms < both.levers.same_batch_tpot_ms  # both levers vs none
    assert both.levers.spec_pays_up_to_batch < 256


def test_a_verify_pass_reads_the_kv_once_and_computes_every_proposed_token():
    """Lever.step at batch 128, acceptance 0.5 (E = 1.9375: 496 prompt tokens): the GEMMs
    stream the weights once over 128 + 496 + 4 x 128 = 1136 tokens (30.86 ms); attention
    reads each sequence's 640 tokens of KV once (3.830 ms), while its math covers the
    decode tokens, the prompts (over 256) and the 512 proposed tokens (over 640 each):
    0.509 ms, under the read."""
    spec = CAT.model("llama-3.1-8b")
    lever = Lever(Levers(spec_decode="ngram", acceptance=0.5, spec_tokens=4,
                         tokens_per_step=1.9375))
    target, draft_s = lever.step(spec, BF16, weight_bytes(spec, BF16), Hardware(H100, VLLM),
                                 128, 640, 496, 256, 16)
    assert draft_s == 0.0  # n-gram proposals are free
    assert target.memory_s == pytest.approx(STREAMED / BANDWIDTH, rel=1e-9)
    assert target.compute_s == pytest.approx(2 * MATMUL * 1136 / RATE, rel=1e-9)
    assert target.attn_memory_s == pytest.approx(128 * 640 * KV_TOKEN / BANDWIDTH, rel=1e-9)
    assert target.attn_compute_s == pytest.approx(
        ATTN * (128 * 640 + 496 * 256 + 4 * 128 * 640) / RATE, rel=1e-9)
    assert target.comm_s == 0.0
    assert target.overhead_s == pytest.approx(FIXED_S + 128 * SEQ_S, rel=1e-9)
    assert (target.compute_s, target.attn_memory_s, target.attn_compute_s) == pytest.approx(
        (30.858e-3, 3.830e-3, 0.509e-3), rel=1e-3)
    assert target.total_s == pytest.approx(
        target.compute_s + target.attn_memory_s + FIXED_S + 128 * SEQ_S, rel=1e-9)


def test_a_draft_model_costs_memory_and_time():
    """qwen2.5-0.5b drafting for qwen2.5-7b: its 0.99 GB of bf16 weights come out of the
    KV room, each sequence also holds the draft's KV, and k = 4 draft passes (each
    streaming ~0.99 GB at 3350 x 0.8368 GB/s = 0.35 ms) make a step slower than n-gram's."""
    draft, ngram, plain = (_one("qwen2.5-7b", spec_decode="draft:qwen2.5-0.5b",
                                acceptance=0.7),
                           _one("qwen2.5-7b", spec_decode="ngram", acceptance=0.7),
                           _one("qwen2.5-7b"))
    # qwen2.5-0.5b in bf16: 24 layers of (q, o 896^2; k, v 896 x 128; FFN 3 x 896 x 4864),
    # the embedding (tied to the head), and 16-bit norms and q/k/v biases
    draft_bytes = 2 * (24 * (2 * 896 * 896 + 2 * 896 * 128 + 3 * 896 * 4864)
                       + 151936 * 896 + 24 * (2 * 896 + 896 + 128 + 128) + 896)
    assert draft_bytes == 988_065_536
    assert draft.levers.draft_gb_per_gpu == pytest.approx(draft_bytes / 1e9)
    assert plain.deployment.kv_room - draft.deployment.kv_room == pytest.approx(draft_bytes)
    assert draft.deployment.kv_per_sequence > plain.deployment.kv_per_sequence
    assert draft.deployment.max_sequences < plain.deployment.max_sequences

    spec, small = CAT.model("qwen2.5-7b"), CAT.model("qwen2.5-0.5b")
    lever = Lever(Levers(spec_decode="draft:qwen2.5-0.5b", acceptance=0.7, spec_tokens=4,
                         tokens_per_step=expected_tokens(0.7, 4)), small)
    _, draft_s = lever.step(spec, BF16, weight_bytes(spec, BF16), Hardware(H100, VLLM),
                            1, 640, 0, 0, 16)
    # a draft pass at batch 1: all its weights (the tied embedding is read as the head)
    # and 640 tokens of its KV cache (2 x 2 heads x 64 x 24 layers x 2 B = 12288 B a
    # token), each far above its math; no step or per-sequence overhead of its own (the
    # passes run inside the target's engine step), but each launches its 24 layers'
    # kernels: 24 x 19.6899 us
    one_pass = (draft_bytes + 640 * 12288) / BANDWIDTH + 24 * 19.6899e-6  # 0.828 ms
    assert draft_s == pytest.approx(4 * one_pass, rel=1e-9), (draft_s, one_pass)
    assert draft_s == pytest.approx(3.3113e-3, rel=1e-4)
    # at batch 1 the draft still pays, less than n-gram's free proposals at equal acceptance
    e = draft.levers
    assert ngram.levers.batch1_tpot_ms < e.batch1_tpot_ms < e.batch1_plain_tpot_ms
    assert e.draft_ms > 0 and ngram.levers.draft_ms == 0


def test_prefix_cache_hit_halves_prefill_and_lowers_input_dollars():
    """An 8192-token prompt prefills in one 8192-token chunk, compute-bound:
    linear 2 x 7.505e9 x 8192 = 1.2296e14 FLOPs / (989e12 x 0.5587) = 222.52 ms, attention
    2 x 32 heads x 256 x 8192 x 32 layers x 4096 = 1.759e13 -> 31.84 ms, + 0.97 ms a
    step + 32 x 19.69 us a layer = 1.60 ms: 255.96 ms. With H = 0.5: half the linear work,
    111.26 ms, and 4096 queries over 6144 tokens on average, 1.319e13 -> 23.88 ms,
    + 1.60 ms: 136.74 ms, 0.534 of it. TTFT drops, $/1M input roughly halves, and the
    freed prefill lets the TPOT target admit a larger batch, which is the only way output
    tokens get cheaper."""
    row = _one(input_tokens=8192, prefix_cache_hit=0.5)
    e, p, c = row.levers, row.point, row.cost
    assert e.same_layout_prefill_ms == pytest.approx(222.52 + 31.84 + 1.60, rel=0.01)
    assert e.same_layout_prefill_ms == pytest.approx(
        (2 * MATMUL * 8192 + ATTN * 8192 * 4096) / RATE * 1e3 + FIXED_S * 1e3, rel=1e-9)
    assert e.prefill_ms == pytest.approx(111.26 + 23.88 + 1.60, rel=0.01)
    assert e.prefill_ms == pytest.approx(
        (2 * MATMUL * 4096 + ATTN * 4096 * 6144) / RATE * 1e3 + FIXED_S * 1e3, rel=1e-9)
    assert p.ttft_s < e.without_point.ttft_s
    assert c.usd_per_m_input < 0.6 * e.without_cost.usd_per_m_input
    assert p.batch > e.without_point.batch and row.batch_limit == "TPOT target"
    assert c.usd_per_m_output < e.without_cost.usd_per_m_output
    # Chat: batch 192 both ways. The decode-only step is 5.354 ms of weights (192 tokens'
    # GEMMs, 5.215 ms, under them) + 5.745 ms of KV + 7.359 ms of overhead = 18.459 ms.
    # The prompts (384 over 256 without the cache; 192 over 384 with it) add less to the
    # step (10.29, 5.08 ms) than their own compute, GEMMs and attention (10.52, 5.29 ms),
    # which is the input's time; the output's is the rest, 192 c + KV + overhead less the
    # prompts' attention math (hidden under the KV read, yet charged to the input). So
    # output $ is unchanged at the same batch but for that attention math:
    # (384 x 256 - 192 x 384) x 524288 FLOPs = 23.3 us of an 18.2 ms output time.
    chat = _one(prefix_cache_hit=0.5)
    assert chat.point.batch == chat.levers.without_point.batch == 192
    decode = _step_s(192, 192, 640, 192 * 640)
    assert decode == pytest.approx(18.459e-3, rel=1e-4)
    usd_per_s = 3.99 / 3600  # H100-SXM
    for point, money, prompt, over in (
            (chat.levers.without_point, chat.levers.without_cost, 384, 256),
            (chat.point, chat.cost, 192, 384)):
        tpot = _step_s(192 + prompt, 192, 640, 192 * 640 + prompt * over)
        prompt_compute = (2 * MATMUL * prompt + ATTN * prompt * over) / RATE
        assert tpot - decode < prompt_compute
        assert point.tpot_ms == pytest.approx(tpot * 1e3, rel=1e-9)
        assert money.usd_per_m_output == pytest.approx(
            usd_per_s * (tpot - prompt_compute) / 192 * 1e6, rel=1e-9)
    shift = usd_per_s * ATTN * (384 * 256 - 192 * 384) / RATE / 192 * 1e6
    assert chat.cost.usd_per_m_output - chat.levers.without_cost.usd_per_m_output == \
        pytest.approx(shift, rel=1e-6)
    assert shift / chat.cost.usd_per_m_output == pytest.approx(23.3e-6 / 18.25e-3, rel=0.01)


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
