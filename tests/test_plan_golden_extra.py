"""Golden numbers of the planner's memory arithmetic (plan/memory.py) on the toy model and
toy GPU of `golden_toy`, with round numbers, so that every term is written out here by
hand and none is negligible: pipeline parallelism, replicated KV heads, grouped
quantization, experts, tied embeddings, a vision tower, and the comparisons that decide
at a limit. Step time and cost: `test_plan_golden_perf`.

The expected values are literals and arithmetic on literals, never tokenomy's helpers.
"""

from __future__ import annotations

import pytest

from golden_toy import (
    BF16,
    ENGINE,
    GPU,
    SOURCE,
    TIGHT,
    TOY,
    TOY_BF16_BYTES,
    TOY_KV_BYTES,
    W4,
    W4_BYTES,
    GiB,
)
from tokenomy.catalog.schema import Scheme
from tokenomy.modelspec import Attention, ModelSpec, MoE, Vision
from tokenomy.plan.memory import (
    MemoryFit,
    kv_bytes_per_sequence,
    layouts,
    memory_fit,
    min_gpus_for_weights,
    smallest_deployment,
    tp_problem,
    weight_bytes,
    weights_read_per_step,
    workspace_bytes,
)


# -- memory.py -------------------------------------------------------------------------
def test_weight_bytes_by_part():
    w = weight_bytes(TOY, W4)
    assert (w.linear, w.embedding, w.lm_head, w.other, w.expert) == (
        245760 * 4.5 / 8, 64000.0, 32000.0, 1152.0, 0.0)
    assert w.total == W4_BYTES == 235392
    assert weight_bytes(TOY, BF16).total == TOY_BF16_BYTES == 748672


# MoE toy: as TOY, layer 0 dense, layers 1-3 route each token to 1 of 4 experts of 128,
# embedding tied to the head. Experts 3 x 4 x 3 x 64x128 = 294912; linear 4 x 12288 +
# 49152 + 294912 = 393216; norms 576 + routers 3 x 4 x 64 = 1344.
TOY_MOE = TOY.model_copy(update=dict(
    name="toy-moe", tie_embeddings=True,
    moe=MoE(num_experts=4, experts_per_token=1, expert_intermediate_size=128,
            first_dense_layers=1)))
MOE_DENSE_READ = (393216 - 294912 + 64000 + 1344) * 2  # 327296: all but the experts
MOE_EXPERT_BYTES = 294912 * 2  # 589824


@pytest.mark.parametrize("tokens,touched", [(0, 1 / 4), (1, 1 / 4), (2, 1 - (3 / 4) ** 2),
                                            (3, 1 - (3 / 4) ** 3)])
def test_weights_read_per_step_of_experts(tokens, touched):
    """Uniform routing: n tokens touch 1 - (3/4)^n of the experts (an empty step still
    reads one token's share); the tied embedding is read as the LM head."""
    w = weight_bytes(TOY_MOE, BF16)
    assert (w.total, w.expert) == (917120, MOE_EXPERT_BYTES)
    assert MOE_DENSE_READ == 327296
    expected = MOE_DENSE_READ + MOE_EXPERT_BYTES * touched
    assert weights_read_per_step(TOY_MOE, w, tokens) == pytest.approx(expected, rel=TIGHT, abs=0)
    if tokens == 0:  # whole bytes: the tied embedding costs not one byte less
        assert weights_read_per_step(TOY_MOE, w, 0) == 474752


def test_vision_tower_is_stored_but_not_streamed_per_step():
    # 2 ViT layers of width 32, MLP 64: 2 x (4 x 32x32 + 2 x 32x64) + 1000 = 17384, 16 bit
    vl = TOY.model_copy(update=dict(name="toy-vl", vision=Vision(
        num_layers=2, hidden_size=32, intermediate_size=64, extra_params=1000)))
    w = weight_bytes(vl, W4)
    assert w.other == (576 + 17384) * 2
    assert w.total == W4_BYTES + 17384 * 2
    # a decode step streams the text model only: W4 bytes less the 8-bit embedding
    assert weights_read_per_step(vl, w, 5) == W4_BYTES - 64000 == 171392


def test_kv_bytes_per_sequence_replicates_kv_heads_and_splits_layers():
    # TP 4 > 2 KV heads: each GPU keeps one whole head (K and V, 16 wide) per layer;
    # 8-bit cache, 100 tokens, 4 layers over 2 pipeline stages
    assert kv_bytes_per_sequence(TOY, 100, 8, tp=4, pp=2) == 2 * 1 * 16 * 4 * 100 * 1 / 2
    assert kv_bytes_per_sequence(TOY, 100, 16, tp=1, pp=1) == TOY_KV_BYTES * 100 == 51200


G32 = Scheme(name="toy-g32", description="grouped", weight_bits=4, group_size=32,
             scale_bits=16, compute="bf16", **SOURCE)
TOY_MLA = ModelSpec(name="toy-mla", hidden_size=64, num_layers=2, intermediate_size=256,
                    vocab_size=1000, max_context=4096,
                    attention=Attention(kind="mla", num_heads=6, num_kv_heads=3,
                                        head_dim=16, kv_lora_rank=32, qk_nope_head_dim=16,
                                        qk_rope_head_dim=8, v_head_dim=16))


@pytest.mark.parametrize("spec,scheme,tp,problem", [
    (TOY, BF16, 8, "4 attention heads do not split over 8 GPUs"),
    (TOY, BF16, 4, None),  # 2 KV heads replicate onto 4 GPUs
    (TOY.model_copy(update=dict(attention=Attention(num_heads=12, num_kv_heads=3,
                                                    head_dim=16))),
     BF16, 2, "3 KV heads neither split over nor replicate onto 2 GPUs"),
    (TOY_MLA, BF16, 2, None),  # MLA caches one latent: KV heads are not split
    (TOY_MLA, G32, 2, "attention output width 96/2 = 48 is not a multiple of the "
                      "32-weight quantization group"),  # 6 heads x v_head_dim 16
    (TOY, G32, 2, None),  # 64/2 and 256/2: whole groups
    (TOY.model_copy(update=dict(intermediate_size=80)), G32, 1, None),  # one slice: no rule
    (TOY.model_copy(update=dict(intermediate_size=96)), G32, 2,
     "FFN width 96/2 = 48 is not a multiple of the 32-weight quantization group"),
    # 65 // 2 = 32 is a whole group, but 65 does not split evenly over 2 GPUs
    (TOY.model_copy(update=dict(intermediate_size=65)), G32, 2,
     "FFN width 65/2 = 32.5 is not a multiple of the 32-weight quantization group"),
    # every layer routed: the dense FFN width (80) is never used, the experts' (128) is
    (TOY.model_copy(update=dict(intermediate_size=80, moe=MoE(
        num_experts=4, experts_per_token=2, expert_intermediate_size=128))), G32, 2, None),
    (TOY.model_copy(update=dict(moe=MoE(num_experts=4, experts_per_token=2,
                                        expert_intermediate_size=80))), G32, 2,
     "expert FFN width 80/2 = 40 is not a multiple of the 32-weight quantization group"),
], ids=["heads", "kv-replicated", "kv-heads", "mla", "mla-group", "groups-ok", "tp1",
        "ffn-group", "ffn-split", "all-moe", "expert-group"])
def test_tp_problem(spec, scheme, tp, problem):
    assert tp_problem(spec, scheme, tp) == problem


@pytest.mark.parametrize("spec,tp,ffn", [
    (TOY, 4, 256),
    (TOY_MOE, 1, 256),  # the dense layer's FFN is wider than one expert (128)
    # every layer routed, 2 experts of 160 a token: 320, wider than the unused FFN 256
    (TOY.model_copy(update=dict(moe=MoE(num_experts=4, experts_per_token=2,
                                        expert_intermediate_size=160))), 2, 320),
    # every layer routed, 2 of 64: 128, though the (unused) dense FFN would be 1000
    (TOY.model_copy(update=dict(intermediate_size=1000, moe=MoE(
        num_experts=4, experts_per_token=2, expert_intermediate_size=64))), 1, 128),
])
def test_workspace_bytes(spec, tp, ffn):
    # 100 batched tokens x (4 hidden-sized bf16 buffers + 2 FFN activations split over TP)
    hidden = 100 * (4 * 64 + 2 * ffn / tp) * 2
    logits = 8 * 1000 / tp * 4 * 2  # max_num_seqs x vocab (TP-split) fp32, twice
    assert workspace_bytes(spec, ENGINE, tp) == pytest.approx(hidden + logits, rel=TIGHT, abs=0)
    if (spec, tp) == (TOY, 4):
        assert hidden + logits == 100 * 384 * 2 + 16000 == 92800


def test_memory_fit_of_a_tp2_pp2_layout():
    fit = memory_fit(TOY, W4, GPU, ENGINE, tp=2, pp=2, context=1000, kv_bits=16)
    usable = GiB * 0.5  # 536870912
    weights = 235392 / 4  # over 4 GPUs
    workspace = 100 * (4 * 64 + 2 * 256 / 2) * 2 + 8 * 1000 / 2 * 8  # 134400
    runtime = GiB / 8
    kv_room = usable - weights - workspace - runtime
    kv = 2 * 1 * 16 * 4 * 1000 * 2 / 2  # one KV head per GPU, half the layers per stage
    assert (fit.gpu, fit.tp, fit.pp, fit.num_gpus, fit.context) == ("toy-gpu", 2, 2, 4, 1000)
    assert (fit.usable, fit.weights, fit.workspace, fit.runtime) == (
        usable, weights, workspace, runtime)
    assert fit.kv_room == kv_room == 402459936
    assert fit.kv_per_sequence == kv == 128000
    assert fit.max_sequences == 3144 and 3144 * 128000 <= kv_room < 3145 * 128000
    assert fit.fits


def test_one_sequence_fits_exactly_at_the_limit():
    """A GPU whose memory is the weights + workspace + one 1000-token sequence, to the
    byte, holds that sequence; one byte less holds none."""
    engine = ENGINE.model_copy(update=dict(gpu_memory_utilization=1.0,
                                           runtime_overhead_gib=0))
    workspace = 100 * (4 * 64 + 2 * 256) * 2 + 8 * 1000 * 8  # TP 1: 217600
    need = TOY_BF16_BYTES + workspace + TOY_KV_BYTES * 1000  # 1478272 bytes
    for spare, sequences in ((0, 1), (-1, 0)):
        gpu = GPU.model_copy(update=dict(memory_gib=(need + spare) / GiB))
        fit = memory_fit(TOY, BF16, gpu, engine, tp=1, pp=1, context=1000, kv_bits=16)
        assert fit.kv_room == TOY_KV_BYTES * 1000 + spare
        assert (fit.max_sequences, fit.fits) == (sequences, sequences == 1)


def test_no_room_at_all_holds_no_sequence():
    fit = MemoryFit(gpu="toy", tp=1, pp=1, usable=10.0, weights=20.0, workspace=0.0,
                    runtime=0.0, kv_room=-10.0, kv_per_sequence=4.0, context=1)
    assert (fit.max_sequences, fit.fits) == (0, False)


def test_min_gpus_for_weights_is_the_napkin_bound():
    assert min_gpus_for_weights(TOY, BF16, GPU) == 1
    # 748672 bytes on GPUs of 200000 bytes: 3.74 -> 4
    small = GPU.model_copy(update=dict(memory_gib=200000 / GiB))
    assert min_gpus_for_weights(TOY, BF16, small) == 4


def test_layouts_within_a_node_then_pipeline_stages():
    # TOY: TP 8 does not split 4 heads; pipeline stages up to one layer each
    assert list(layouts(TOY, BF16, GPU)) == [(1, 1), (2, 1), (4, 1), (4, 2), (4, 3), (4, 4)]
    # 16 heads over 4 KV heads, 70 layers, 16 GPUs a node: every TP size, and at most 64
    # pipeline stages
    wide = TOY.model_copy(update=dict(num_layers=70, attention=Attention(
        num_heads=16, num_kv_heads=4, head_dim=4)))
    node16 = GPU.model_copy(update=dict(gpus_per_node=16))
    found = list(layouts(wide, BF16, node16))
    assert found[:6] == [(1, 1), (2, 1), (4, 1), (8, 1), (16, 1), (16, 2)]
    assert found[5:] == [(16, pp) for pp in range(2, 65)] and found[-1] == (16, 64)


def test_smallest_deployment_and_its_notes():
    # 1 GiB at 50% less 1/8 GiB runtime: ~402 MB of room per GPU; TOY bf16 fits on one
    fit, notes = smallest_deployment(TOY, BF16, GPU, ENGINE, 1000, 16)
    assert (fit.tp, fit.pp) == (1, 1)
    assert notes == ["TP=8: 4 attention heads do not split over 8 GPUs"]
    # a GPU of 1.4 MB at 100%: TP 1 lacks room (748672 + 217600 + 512000 > 1.4e6); on TP 2
    # weights and workspace take 748672/2 + 134400 = 508736 bytes, a sequence 256000
    engine = ENGINE.model_copy(update=dict(gpu_memory_utilization=1.0,
                                           runtime_overhead_gib=0))
    gpu = GPU.model_copy(update=dict(memory_gib=1.4e6 / GiB))
    fit, _ = smallest_deployment(TOY, BF16, gpu, engine, 1000, 16)
    assert (fit.tp, fit.pp, fit.max_sequences) == (2, 1, 3)
    assert 3 * 256000 <= 1.4e6 - 508736 < 4 * 256000
    tiny = GPU.model_copy(update=dict(memory_gib=1e5 / GiB))
    assert smallest_deployment(TOY, BF16, tiny, engine, 1000, 16)[0] is None


