"""`tokenomy plan`: memory, GPUs, speed and $ per 1M tokens, per scheme x GPU type."""

from __future__ import annotations

import click
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from tokenomy.cli.params import COUNT, RATE, USD_PER_HOUR, Number
from tokenomy.cli.plan_traffic import render_traffic, traffic_config, traffic_options, write_plot
from tokenomy.errors import InvalidInputError

RISK_STYLE = {"low": "green", "moderate": "yellow", "high": "red"}
ACCEPTANCE = Number(gt=0, lt=1)
PREFIX_CACHE_HIT = Number(ge=0, lt=1)
SPEC_TOKENS = Number(ge=1, le=16, integer=True)


def _parse_prices(values: tuple[str, ...]) -> dict[str, float]:
    prices = {}
    for item in values:
        name, sep, usd = item.partition("=")
        if not sep or not name.strip():
            raise InvalidInputError(
                f"--price {item!r}: expected GPU=USD_PER_HOUR, e.g. --price H100-SXM=2.49."
            )
        prices[name.strip()] = USD_PER_HOUR.range.parse(
            usd.strip(), f"--price {item}: the USD per GPU-hour")
    return prices


@click.command()
@click.argument("model", required=False)
@click.option("--gpu", "gpus", multiple=True, help="GPU type (repeat); default: all in catalog.")
@click.option("--scheme", "schemes", multiple=True,
              help="Precision scheme (repeat); default: bf16 fp8 w8a8-int8 w8a16 w4a16 nvfp4.")
@click.option("--workload", default="chat", show_default=True,
              help="chat | rag | batch, or a YAML file with the workload's fields.")
@click.option("--rate", type=RATE, help="Requests per second to serve (workload default).")
@click.option("--input-tokens", type=COUNT, help="Prompt length (overrides the workload).")
@click.option("--output-tokens", type=COUNT, help="Answer length (overrides the workload).")
@click.option("--kv-cache", type=click.Choice(["auto", "fp8"]), default="auto",
              show_default=True, help="KV-cache dtype: model dtype (16 bit) or FP8.")
@click.option("--price", "prices", multiple=True, metavar="GPU=USD",
              help="Override a GPU's $/GPU-hour (repeat).")
@click.option("--catalog", "catalogs", multiple=True, type=click.Path(exists=True),
              help="Extra catalog YAML file (GPUs, models, schemes, workloads).")
@click.option("--engine", default=None, metavar="NAME[@VERSION]",
              help="Engine profile for every row, e.g. vllm@0.6.3 (the pre-V1 engine), "
                   "tensorrt-llm; default: each scheme's engine, current release.")
@click.option("--profile", default=None,
              help="A `tokenomy calibrate` profile: its fitted factors and band replace its "
                   "engine's on its GPU type.")
@click.option("--spec-decode", default=None, metavar="ngram|draft:MODEL",
              help="Price speculative decoding: n-gram lookup, or a draft model (catalog "
                   "name or HF directory). Needs --acceptance.")
@click.option("--acceptance", type=ACCEPTANCE,
              help="Per-token acceptance rate of the proposals, > 0 and < 1 (e.g. 0.7).")
@click.option("--spec-tokens", type=SPEC_TOKENS,
              help="Tokens proposed per step, k (default 4).")
@click.option("--prefix-cache-hit", type=PREFIX_CACHE_HIT,
              help="Share of prompt tokens whose KV is already cached, >= 0 and < 1.")
@traffic_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def plan(model, gpus, schemes, workload, rate, input_tokens, output_tokens, kv_cache, prices,
         catalogs, engine, profile, spec_decode, acceptance, spec_tokens, prefix_cache_hit,
         as_json, **traffic_args) -> None:
    """Estimate memory, GPUs, speed and $/1M tokens for MODEL (catalog name, HF model
    directory, config.json or .gguf; default: the embedded SmolLM2-135M-Instruct)."""
    from tokenomy.catalog import Catalog, default_catalog
    from tokenomy.plan import plan as run_plan

    catalog = Catalog.load(list(catalogs)) if catalogs else default_catalog()
    prices = _parse_prices(prices)
    traffic, plot = traffic_config(**traffic_args)
    result = run_plan(
        model, workload, list(gpus) or None, list(schemes) or None, rate=rate,
        input_tokens=input_tokens, output_tokens=output_tokens, kv_cache=kv_cache,
        prices=prices, catalog=catalog, engine=engine, profile=profile,
        spec_decode=spec_decode, acceptance=acceptance, spec_tokens=spec_tokens,
        prefix_cache_hit=prefix_cache_hit, traffic=traffic,
    )
    write_plot(result, plot)
    if as_json:
        click.echo(result.model_dump_json(indent=2))
        return
    render(result, catalog, Console())
    if traffic is not None:
        render_traffic(result, Console(), plot)


def render(result, catalog, console: Console) -> None:
    from tokenomy.plan.explain import arithmetic, lever_summary

    m, w = result.model, result.workload
    tpp = f", {m.tokens_per_param:,.0f} training tokens/param" if m.tokens_per_param else ""
    slo = (f"TTFT <= {w.ttft_target_s:g} s, TPOT <= {w.tpot_target_ms:g} ms"
           if w.mode == "online" else "offline: max throughput")
    console.print(
        f"[bold]{m.name}[/bold]: {m.total_params / 1e9:,.2f}B params "
        f"({m.active_params / 1e9:,.2f}B active){tpp}. Workload [bold]{w.name}[/bold]: "
        f"{w.input_tokens} in / {w.output_tokens} out, {w.requests_per_s:g} req/s, {slo}; "
        f"KV cache {'fp8' if result.kv_cache == 'fp8' else '16-bit'}."
    )
    console.print(_memory_table(result))
    console.print(_cost_table(result))
    if result.levers is not None:
        console.print(_lever_table(result))
    console.print(Panel("\n".join(arithmetic(result, catalog)), title="How (estimates)",
                        expand=False))
    rec = result.recommendation
    if rec is None:
        console.print("[red]Nothing fits or meets the targets; try more GPU types, "
                      "a lower-bit scheme, or a looser workload.[/red]")
        return
    reasons = list(rec.reasons)
    row = next(r for r in result.rows if (r.scheme, r.gpu) == (rec.scheme, rec.gpu))
    if result.levers is not None:
        reasons.append(lever_summary(row, result.levers))
    body = "\n".join(f"- {r}" for r in reasons)
    if rec.runners_up:
        body += "\nNext cheapest: " + "; ".join(rec.runners_up)
    console.print(Panel(body, title=f"Recommendation (estimated): {rec.scheme} on "
                        f"{rec.gpus} x {rec.gpu}", border_style="green", expand=False))


def _memory_table(result) -> Table:
    draft = result.levers.draft_model if result.levers else None
    beside = f", beside draft {draft}'s weights and KV" if draft else ""
    t = Table(title=f"Memory per scheme (estimated; context {result.workload.context} "
              f"tokens{beside})")
    for col in ("scheme", "GPU", "weights GB", "GPUs (weights)", "deployable",
                "KV GiB/GPU", "max seqs"):
        t.add_column(col, justify="left" if col in ("scheme", "GPU") else "right",
                     no_wrap=col in ("scheme", "GPU"))
    for r in result.rows:
        d = r.deployment
        layout = f"TP={d.tp}" + (f" PP={d.pp}" if d.pp > 1 else "") if d else "[red]none[/red]"
        t.add_row(r.scheme, r.gpu, f"{r.weights_gb:,.3g}" if r.weights_gb < 10 else
                  f"{r.weights_gb:,.1f}", str(r.min_gpus_for_weights),
                  layout,
                  f"{d.kv_room / 2**30:,.1f}" if d else "-",
                  f"{d.max_sequences:,}" if d else "-")
    return t


def _band(point: float, interval: tuple[float, float], fmt: str) -> str:
    """'0.43 (0.38-0.52)': the estimate and the interval it may fall in."""
    lo, hi = interval
    return f"{point:{fmt}} ({lo:{fmt}}-{hi:{fmt}})"


def _cost_table(result) -> Table:
    w = result.workload
    levers = f" with {result.levers.label()}" if result.levers else ""
    t = Table(title=f"Speed and cost at the serving layout{levers} (estimated, with the "
              f"range each may fall in; {w.requests_per_s:g} req/s, output tok/s per GPU)")
    for col in ("scheme", "GPU", "layout", "batch", "limit", "TTFT s", "TPOT ms",
                "tok/s/GPU", "$/1M in", "$/1M out", "GPUs", "$/month", "risk"):
        t.add_column(col, justify="left" if col in ("scheme", "GPU", "risk") else "right",
                     no_wrap=col in ("scheme", "GPU"))
    rec = result.recommendation
    for r in result.rows:
        risk = f"[{RISK_STYLE[r.risk.level]}]{r.risk.level}[/]"
        if not r.feasible:
            t.add_row(r.scheme, r.gpu, "-", "-", f"[red]{r.batch_limit}[/red]", *["-"] * 7,
                      risk)
            continue
        s, p, c = r.serving, r.point, r.cost
        chosen = rec and rec.scheme == r.scheme and rec.gpu == r.gpu
        style = "bold green" if chosen else None
        g = r.ranges
        t.add_row(
            r.scheme, r.gpu, f"{s.tp}x{s.pp}" if s.pp > 1 else f"TP={s.tp}",
            str(p.batch), r.batch_limit, f"{p.ttft_s:.2f}", _band(p.tpot_ms, g.tpot_ms, ".1f"),
            _band(p.output_tokens_per_s / s.num_gpus,
                  tuple(x / s.num_gpus for x in g.tokens_per_s), ",.0f"),
            _band(c.usd_per_m_input, g.usd_per_m_input, ".3f"),
            _band(c.usd_per_m_output, g.usd_per_m_output, ".3f"), str(c.gpus),
            _band(c.usd_per_month, g.usd_per_month, ",.0f"), risk, style=style,
        )
    return t


def _lever_table(result) -> Table:
    """Each row without -> with the levers, at each one's own serving layout and batch
    ('-' before the arrow: it does not run without them)."""
    lv = result.levers
    t = Table(title=f"Without -> with {lv.label()} (estimated)")
    cols = ["scheme", "GPU", "batch", "TTFT s", "TPOT ms", "TPOT@1 ms", "tok/s/GPU",
            "$/1M in", "$/1M out", "$/month"]
    if lv.spec_decode:
        cols.append("spec pays to batch")
    for col in cols:
        t.add_column(col, justify="left" if col in ("scheme", "GPU") else "right",
                     no_wrap=col in ("scheme", "GPU"))
    for r in result.rows:
        e = r.levers
        if not r.feasible:
            t.add_row(r.scheme, r.gpu, f"[red]{r.batch_limit}[/red]", *["-"] * (len(cols) - 3))
            continue
        p, c, wp, wc = r.point, r.cost, e.without_point, e.without_cost
        cells = [_pair(wp and wp.batch, p.batch, "d"),
                 _pair(wp and wp.ttft_s, p.ttft_s, ".3f"),
                 _pair(wp and wp.tpot_ms, p.tpot_ms, ".1f"),
                 _pair(e.batch1_plain_tpot_ms, e.batch1_tpot_ms, ".1f"),
                 _pair(wp and wp.output_tokens_per_s / e.without_gpus,
                       p.output_tokens_per_s / r.serving.num_gpus, ",.0f"),
                 _pair(wc and wc.usd_per_m_input, c.usd_per_m_input, ".3f"),
                 _pair(wc and wc.usd_per_m_output, c.usd_per_m_output, ".3f"),
                 _pair(wc and wc.usd_per_month, c.usd_per_month, ",.0f")]
        if lv.spec_decode:
            cells.append(str(e.spec_pays_up_to_batch) if e.spec_pays_up_to_batch else "never")
        t.add_row(r.scheme, r.gpu, *cells)
    return t


def _pair(before: float | None, after: float, fmt: str) -> str:
    """'29.8 -> 23.0'; '- -> 23.0' where the row does not run without the levers."""
    return f"{'-' if before is None else format(before, fmt)} -> {after:{fmt}}"
