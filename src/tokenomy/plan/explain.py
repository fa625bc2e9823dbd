"""The arithmetic behind a plan, as lines a person can check by hand."""

from __future__ import annotations

import math

from tokenomy.catalog import Catalog
from tokenomy.plan.workload import resolve_model


def arithmetic(result, catalog: Catalog) -> list[str]:
    spec = resolve_model(result.model.origin if result.model.origin != "catalog"
                         else result.model.name, catalog)
    p, a = spec.params, spec.attention
    lines = [
        f"params = {p.linear / 1e9:,.3f}B linear (quantized) + {p.embedding / 1e9:,.3f}B "
        f"embedding + {p.lm_head / 1e9:,.3f}B lm_head + {p.other / 1e9:,.3f}B norms/routers/"
        f"vision (16-bit) = {p.total / 1e9:,.3f}B",
    ]
    kv_bytes = 1 if result.kv_cache == "fp8" else 2
    if a.kind == "mla":
        per_layer = f"({a.kv_lora_rank} latent + {a.qk_rope_head_dim} rope) x {kv_bytes} B"
    else:
        per_layer = f"2 (K,V) x {a.num_kv_heads} KV heads x {a.head_dim} x {kv_bytes} B"
    per_token = spec.kv_elements_per_layer_token() * kv_bytes * spec.num_layers
    window = (f"; {spec.num_layers - spec.num_layers // a.full_attention_every} layers "
              f"keep only a {a.sliding_window}-token window" if a.sliding_window else "")
    lines.append(f"KV cache/token = {spec.num_layers} layers x {per_layer} = "
                 f"{per_token / 1024:,.1f} KiB{window}")
    for name in dict.fromkeys(r.scheme for r in result.rows):
        s = catalog.scheme(name)
        bits = (f"{s.weight_bits:g} + {s.scale_bits:g}/{s.group_size} = "
                f"{s.bits_per_linear_weight:.4g}" if s.group_size else f"{s.weight_bits:g}")
        lines.append(f"{name}: {bits} bits per linear weight, embeddings {s.embedding_bits:g}"
                     f", lm_head {s.lm_head_bits:g}; matmuls in {s.compute}"
                     f" (else {s.fallback_compute})")
    for e in sorted({r.engine for r in result.rows}):
        eng = catalog.engine(e)
        f = eng.efficiency
        lines.append(
            f"{e}: KV room = GPU GiB x {eng.gpu_memory_utilization} - weights/GPU - "
            f"workspace ({eng.max_num_batched_tokens} tokens) - {eng.runtime_overhead_gib} "
            f"GiB runtime; step = max(bytes / (BW x {f.decode_bandwidth:.3g}), FLOPs / "
            f"(peak x {f.compute:.3g})) + all-reduce + {f.step_overhead_ms:.3g} ms"
        )
        basis = next((r.ranges.basis for r in result.rows if r.engine == e and r.ranges), None)
        if basis:
            lines.append(f"ranges in brackets: speed x (10th-90th percentile of measured / "
                         f"predicted), $ inversely; {basis}")
    if result.levers is not None:
        lines += lever_lines(result)
    gpus = {r.gpu: r.usd_per_gpu_hour for r in result.rows}
    lines.append("$/GPU-hour: " + ", ".join(f"{g} {usd:g}" for g, usd in gpus.items())
                 + " (on-demand list prices from the catalog; --price to override)")
    return lines


def _shown_row(result):
    """The row the lever arithmetic is shown for: the recommended one, else the first
    that runs."""
    rec = result.recommendation
    rows = [r for r in result.rows if r.feasible and r.levers is not None]
    return next((r for r in rows if rec and (r.scheme, r.gpu) == (rec.scheme, rec.gpu)),
                rows[0] if rows else None)


def lever_lines(result) -> list[str]:
    """Speculative decoding and prefix caching, formulas with one row's numbers in."""
    lv, w = result.levers, result.workload
    row = _shown_row(result)
    if row is None:
        return [f"levers: {lv.label()}; no row runs, so none is priced"]
    p, c, e = row.point, row.cost, row.levers
    a, k, big_e, hit = lv.acceptance, lv.spec_tokens, lv.tokens_per_step, lv.prefix_cache_hit
    seqs = math.ceil(p.batch / row.serving.pp)
    prompt = math.ceil(seqs * w.input_tokens * big_e * (1 - hit) / w.output_tokens)
    where = f"{row.scheme} on {row.gpu} at batch {p.batch}"
    lines = []
    if lv.spec_decode:
        lines.append(f"spec decode {lv.spec_decode}: E = (1 - a^(k+1)) / (1 - a) = (1 - {a:g}^"
                     f"{k + 1}) / (1 - {a:g}) = {big_e:.3f} tokens a sequence per step "
                     "(Leviathan et al. 2023)")
        draft = (f" + draft {k} passes {e.draft_ms:.2f} ms" if lv.draft_model else
                 " (n-gram proposer: free)")
        regime = ("memory-bound: the k extra tokens ride on the same weight reads"
                  if p.bound == "memory" else f"compute-bound: k + 1 - E = {k + 1 - big_e:.2f}"
                  " verified tokens a sequence are thrown away per step")
        pays = (f"speculation lowers TPOT up to batch {e.spec_pays_up_to_batch}"
                if e.spec_pays_up_to_batch else "speculation lowers TPOT at no batch")
        lines.append(
            f"{where}: step = target pass over {seqs} x ({k} + 1) + {prompt:,} prompt tokens"
            f"{draft} = {e.step_ms:.2f} ms; TPOT = step / E = {p.tpot_ms:.2f} ms vs "
            f"{e.same_batch_tpot_ms:.2f} ms without the levers at this batch ({regime}); batch 1: "
            f"{e.batch1_tpot_ms:.2f} vs {e.batch1_plain_tpot_ms:.2f} ms; {pays}")
    if hit:
        cached = int(w.input_tokens * hit)
        lines.append(
            f"prefix cache: prefill (1 - H) x {w.input_tokens} = {w.input_tokens - cached} "
            f"tokens after {cached} cached = {e.prefill_ms:.1f} ms vs "
            f"{e.same_layout_prefill_ms:.1f} ms; TTFT = prefill + one step = {p.ttft_s:.3f} s; "
            f"prompt tokens a step = B x in/out{' x E' if lv.spec_decode else ''} x (1 - H) = "
            f"{prompt:,}")
    without = e.without_cost
    vs = f" vs ${without.usd_per_m_output:.3f} without" if without else ""
    vs_in = f" vs ${without.usd_per_m_input:.3f} without" if without else ""
    lines.append(
        f"$/1M out = $/h x (1 - input share) / (3600 x tok/s) x 1e6 = {c.usd_per_hour:.2f} x "
        f"(1 - {p.input_time_share:.2f}) / (3600 x {p.output_tokens_per_s:,.0f}) x 1e6 = "
        f"${c.usd_per_m_output:.3f}{vs}; $/1M in = ${c.usd_per_m_input:.3f}{vs_in}")
    return lines + [f"{row.scheme} on {row.gpu}: {n}" for n in e.notes]


def lever_summary(row, levers) -> str:
    """One line: what the levers do to this row, against the plan without them."""
    p, c, e = row.point, row.cost, row.levers
    wp, wc = e.without_point, e.without_cost
    if wp is None:
        return (f"with {levers.label()} (estimated): it runs, and does not without them "
                f"({e.without_batch_limit})")
    parts = [f"TPOT {p.tpot_ms:.1f} ms vs {wp.tpot_ms:.1f} ms without (batch {p.batch} vs "
             f"{wp.batch})"]
    if levers.spec_decode:
        parts.append(f"at batch 1 {e.batch1_tpot_ms:.1f} vs {e.batch1_plain_tpot_ms:.1f} ms")
    if levers.prefix_cache_hit:
        parts.append(f"TTFT {p.ttft_s:.3f} s vs {wp.ttft_s:.3f} s")
    parts.append(f"${c.usd_per_m_input:.3f} vs ${wc.usd_per_m_input:.3f} /1M in, "
                 f"${c.usd_per_m_output:.3f} vs ${wc.usd_per_m_output:.3f} /1M out")
    return f"with {levers.label()} (estimated): " + "; ".join(parts)
