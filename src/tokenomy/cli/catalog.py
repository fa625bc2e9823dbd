"""`tokenomy catalog gpus|models|schemes|workloads|cpu`: what the planner knows, and what
this machine's CPU can run."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

KINDS = ("gpus", "models", "schemes", "workloads", "cpu")


@click.command()
@click.argument("kind", type=click.Choice(KINDS), default="models")
@click.option("--catalog", "catalogs", multiple=True, type=click.Path(exists=True),
              help="Extra catalog YAML file.")
@click.option("--json", "as_json", is_flag=True, help="Print entries as JSON.")
def catalog(kind: str, catalogs: tuple[str, ...], as_json: bool) -> None:
    """List catalog entries: gpus, models, schemes or workloads (each with its source);
    cpu: what each CPU engine needs and whether this machine has it."""
    from tokenomy.catalog import Catalog, default_catalog

    if kind == "cpu":
        _cpu(as_json)
        return

    cat = Catalog.load(list(catalogs)) if catalogs else default_catalog()
    entries = getattr(cat, kind)
    if as_json:
        click.echo(json.dumps([e.model_dump(mode="json") for e in entries.values()], indent=2))
        return
    Console().print({"gpus": _gpus, "models": _models, "schemes": _schemes,
                     "workloads": _workloads}[kind](entries))


def _table(title: str, cols: list[str]) -> Table:
    t = Table(title=title)
    for c in cols:
        t.add_column(c, overflow="fold")
    return t


def _gpus(entries) -> Table:
    t = _table("GPUs (dense TFLOPS; on-demand $/GPU-hour)",
               ["name", "memory GiB", "GB/s", "bf16", "fp8", "int8", "fp4", "link GB/s",
                "$/h", "price source", "as of"])
    for g in entries.values():
        tf = [f"{g.tflops[d]:g}" if d in g.tflops else "-" for d in ("bf16", "fp8", "int8", "fp4")]
        t.add_row(g.name, f"{g.memory_gib:g}", f"{g.bandwidth_gbs:g}", *tf,
                  f"{g.interconnect.bandwidth_gbs:g}", f"{g.price.usd_per_hour:g}",
                  g.price.provider, g.price.as_of)
    return t


def _models(entries) -> Table:
    t = _table("Models (parameters computed from the architecture)",
               ["name", "params B", "active B", "layers", "hidden", "heads/kv", "attention",
                "experts", "max ctx", "train tokens/param"])
    for m in entries.values():
        a = m.attention
        experts = f"{m.moe.experts_per_token}/{m.moe.num_experts}" if m.moe else "-"
        tpp = f"{m.tokens_per_param:,.0f}" if m.tokens_per_param else "-"
        t.add_row(m.name, f"{m.total_params / 1e9:,.2f}", f"{m.active_params / 1e9:,.2f}",
                  str(m.num_layers), str(m.hidden_size), f"{a.num_heads}/{a.num_kv_heads}",
                  a.kind + (f"+window {a.sliding_window}" if a.sliding_window else ""),
                  experts, f"{m.max_context:,}", tpp)
    return t


def _schemes(entries) -> Table:
    t = _table("Precision schemes", ["name", "bits/weight", "math", "engine", "description"])
    for s in entries.values():
        t.add_row(s.name, f"{s.bits_per_linear_weight:.4g}", s.compute, s.engine, s.description)
    return t


def _workloads(entries) -> Table:
    t = _table("Workloads", ["name", "in", "out", "mode", "TTFT s", "TPOT ms", "req/s",
                             "description"])
    for w in entries.values():
        t.add_row(w.name, str(w.input_tokens), str(w.output_tokens), w.mode,
                  f"{w.ttft_target_s:g}" if w.ttft_target_s else "-",
                  f"{w.tpot_target_ms:g}" if w.tpot_target_ms else "-",
                  f"{w.requests_per_s:g}", w.description)
    return t


_CPU_KINDS = {"llamacpp": ["gguf"], "openvino": ["gguf"],
              "vllm": ["dense", "w8a8-int8", "wna16-int4", "wna16-int8", "fp8", "nvfp4",
                       # what auto:llmcompressor writes: --types w4a16,bf16, and all types
                       "mixed:dense+wna16-int4", "mixed:dense+wna16-int4+wna16-int8"]}


def _cpu(as_json: bool) -> None:
    from tokenomy.capability import check, cpu_info, engine_needs

    cpu, needs = cpu_info(), engine_needs()
    verdicts = [check(engine, kind) for engine, kinds in _CPU_KINDS.items() for kind in kinds]
    if as_json:
        click.echo(json.dumps({"cpu": {"name": cpu.name, "arch": cpu.arch, "cores": cpu.cores,
                                       "flags_source": cpu.flags_source},
                               "engines": [v.__dict__ for v in verdicts]}, indent=2))
        return
    simd = sorted(f for f in cpu.flags if f.startswith(("avx", "amx", "fma", "f16c", "sve",
                                                         "asimd", "neon")))
    console = Console()
    console.print(f"[bold]{cpu.name}[/bold] ({cpu.arch}), {cpu.cores} usable cores; vector "
                  f"flags ({cpu.flags_source}): {' '.join(simd) or 'unknown'}")
    t = _table("CPU engines on this machine (requirements: catalog/cpu_kernels.yaml)",
               ["engine", "checkpoint", "runs here", "why / instead"])
    for v in verdicts:
        runs = "yes" if v.ok else "[red]no[/red]"
        if v.ok and not v.verified:
            runs = "untested"
        note = v.warning if v.ok else f"{v.reason}; instead: {v.instead}"
        t.add_row(f"{v.engine} ({needs[v.engine].version.split(',')[0]})", v.kind, runs, note)
    console.print(t)
