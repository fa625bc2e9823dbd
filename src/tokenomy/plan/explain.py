"""The arithmetic behind a plan, as lines a person can check by hand."""

from __future__ import annotations

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
    gpus = {r.gpu: r.usd_per_gpu_hour for r in result.rows}
    lines.append("$/GPU-hour: " + ", ".join(f"{g} {usd:g}" for g, usd in gpus.items())
                 + " (on-demand list prices from the catalog; --price to override)")
    return lines
