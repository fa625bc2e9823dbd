"""`tokenomy bench`: throughput, latency and $/1M tokens of a deployment, measured under
a real workload, beside the planner's estimate for the same hardware."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from tokenomy.cli.params import COUNT, RATE, SECONDS, SEED, USD_PER_HOUR, Number, writable_dir
from tokenomy.cli.progress import reporter
from tokenomy.errors import InvalidInputError

CONCURRENCY = Number(ge=1, le=100_000, integer=True)


def _synthetic(value: str | None) -> tuple[int, int] | None:
    if not value:
        return None
    parts = value.split(":")
    if len(parts) != 2:
        raise InvalidInputError(f"--synthetic {value!r}: expected IN:OUT token counts, "
                                "e.g. --synthetic 256:128")
    n_in, n_out = (COUNT.range.parse(v.strip(), f"--synthetic {value!r}: {side}")
                   for v, side in zip(parts, ("IN", "OUT"), strict=True))
    return n_in, n_out


@click.command()
@click.argument("target", required=False, default="embedded")
@click.option("--model", type=click.Path(exists=True, dir_okay=False),
              help="embedded: serve this .gguf instead of the embedded SmolLM2.")
@click.option("--engine", "engines", multiple=True, type=click.Choice(["llamacpp", "openvino"]),
              help="embedded: the engine to start (default llamacpp); give it twice to "
                   "measure both in turn and get the engine to run at each load.")
@click.option("--compare", "compare_paths", multiple=True, type=click.Path(exists=True),
              help="Compare saved bench results (result.json or its directory) instead "
                   "of measuring: which engine is cheapest at each load.")
@click.option("--model-id", help="URL: the model to request (default: first of GET /models).")
@click.option("--api-key", envvar="TOKENOMY_BENCH_API_KEY", help="URL: bearer key.")
@click.option("--dataset", default="sharegpt", show_default=True,
              help="'sharegpt' or a .jsonl file of conversations.")
@click.option("--synthetic", metavar="IN:OUT", help="Fixed prompt/answer lengths instead.")
@click.option("--max-input-tokens", type=COUNT, default=512, show_default=True)
@click.option("--max-output-tokens", type=COUNT, default=128, show_default=True)
@click.option("--concurrency", type=CONCURRENCY,
              help="Closed loop: N requests always in flight.")
@click.option("--rate", type=RATE, help="Open loop: Poisson arrivals at R requests/s.")
@click.option("--sweep", is_flag=True,
              help="Concurrency 1, 2, 4 ... --max-concurrency (the default profile).")
@click.option("--max-concurrency", type=CONCURRENCY, default=4, show_default=True)
@click.option("--levels", metavar="N,N,...", help="Concurrency levels to run, e.g. 1,16,50.")
@click.option("--requests", type=COUNT, default=32, show_default=True, help="Per run.")
@click.option("--duration", type=SECONDS, default=300.0, show_default=True,
              help="Seconds per run; no new request after it.")
@click.option("--timeout", type=SECONDS, default=300.0, show_default=True,
              help="Seconds per request.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--slo-ttft", type=SECONDS, default=2.0, show_default=True, help="Seconds.")
@click.option("--slo-tpot", type=SECONDS, default=0.2, show_default=True, help="Seconds.")
@click.option("--usd-per-hour", type=USD_PER_HOUR,
              help="The machine's price (default: $0.1008 for cpu, catalog price for a GPU).")
@click.option("--hardware", default="cpu", show_default=True,
              help="'cpu' or a catalog GPU name: what the target runs on.")
@click.option("--plan-model", help="The planner's model: the served .gguf (cpu) or a "
              "catalog name / HF dir (GPU).")
@click.option("--plan-scheme", default="bf16", show_default=True,
              help="GPU: the precision scheme the planner assumes.")
@click.option("--profile", default=None,
              help="A `tokenomy calibrate` profile: the estimate uses its fitted factors.")
@click.option("--out", "-o", type=click.Path(file_okay=False),
              help="New directory for result.json and plot.png (default: "
                   "results/bench/<timestamp>).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def bench(target, model, engines, compare_paths, model_id, api_key, dataset, synthetic,
          max_input_tokens, max_output_tokens, concurrency, rate, sweep, max_concurrency,
          levels, requests, duration, timeout, seed, slo_ttft, slo_tpot, usd_per_hour, hardware,
          plan_model, plan_scheme, profile, out, as_json) -> None:
    """Load TARGET (an OpenAI-compatible base URL such as http://127.0.0.1:8001/v1, or
    'embedded': start the embedded SmolLM2 on llama.cpp) with ShareGPT prompts or
    synthetic lengths; measure TTFT, TPOT, ITL, throughput, goodput and $/1M tokens, and
    print the planner's estimate for the same hardware beside them."""
    from tokenomy.bench import BenchConfig
    from tokenomy.bench import bench as run
    from tokenomy.bench.output import check_free, default_dir, save
    from tokenomy.cli.bench_compare import compare_saved, render_comparison

    if compare_paths:
        compare_saved(compare_paths, as_json)
        return
    engines = list(dict.fromkeys(engines)) or ["llamacpp"]
    config = BenchConfig.build(
        target=target, model=model, engine=engines[0], levels=_levels(levels),
        model_id=model_id, api_key=api_key, dataset=dataset,
        synthetic=_synthetic(synthetic), max_input_tokens=max_input_tokens,
        max_output_tokens=max_output_tokens, concurrency=concurrency, rate=rate, sweep=sweep,
        max_concurrency=max_concurrency, requests=requests, duration_s=duration,
        timeout_s=timeout, seed=seed, slo_ttft_s=slo_ttft, slo_tpot_s=slo_tpot,
        usd_per_hour=usd_per_hour, hardware=hardware, plan_model=plan_model,
        plan_scheme=plan_scheme, calibration=profile)
    if profile:  # an unknown or foreign profile: refused before anything starts
        from tokenomy.calibrate import load_profile

        load_profile(profile)
    if target not in ("embedded", "") and not target.startswith(("http://", "https://")):
        raise InvalidInputError(f"TARGET {target!r} is neither 'embedded' nor an "
                                "OpenAI-compatible base URL such as http://127.0.0.1:8001/v1")
    if not synthetic and dataset != "sharegpt":  # before an engine starts, not after
        from tokenomy.evaluate.data import conversations

        conversations(dataset, "calibration", 1, seed)
    if model and target not in ("embedded", ""):
        raise InvalidInputError("--model serves a GGUF on the embedded engine; for a URL "
                                "target pass --model-id (and --plan-model for the estimate)")
    directory = Path(out) if out else default_dir()
    dirs = [directory / e for e in engines] if len(engines) > 1 else [directory]
    for d in dirs:
        check_free(d)  # before minutes of measuring, not after
    writable_dir(directory, "--out")
    console = Console(stderr=as_json)
    results = []
    for engine, d in zip(engines, dirs, strict=True):
        config = config.model_copy(update={"engine": engine})
        console.print(f"Bench {config.target}"
                      f"{f' on {engine}' if len(engines) > 1 else ''}: {config.profile}; "
                      f"{config.workload}")
        with reporter(console) as step:
            result = run(config, step=step)
        json_path, png_path = save(result, d)
        results.append(result)
        if not as_json:
            render(result, console)
        console.print(f"Wrote {json_path} and {png_path}")
    if len(results) > 1:
        render_comparison(results, console, as_json, directory)
    elif as_json:
        click.echo(results[0].model_dump_json(indent=2))


def _levels(value: str | None) -> list[int]:
    if not value:
        return []
    return [CONCURRENCY.range.parse(v.strip(), f"--levels {value!r}")
            for v in value.split(",") if v.strip()]


def _f(value: float | None, fmt: str = ".1f") -> str:
    return "-" if value is None else format(value, fmt)


def render(r, console: Console) -> None:
    t = Table(title=f"Throughput and cost: {r.model} on {r.hardware} at ${r.usd_per_hour:g}/h "
                    "(measured vs estimated)", title_justify="left")
    for col in ("load", "ok/sent", "in flight", "out tok/s measured", "out tok/s estimated",
                "ratio", "total tok/s", "goodput req/s", "$/1M out measured",
                "$/1M out estimated", "$/1M tokens measured", "$/1M tokens estimated"):
        t.add_column(col, justify="left" if col == "load" else "right")
    for x in r.runs:
        e = x.estimate
        t.add_row(x.label, f"{x.requests_ok}/{x.requests_sent}", _f(x.concurrency_observed, ".2f"),
                  _f(x.output_tokens_per_s), _f(e and e.output_tokens_per_s),
                  _f(x.ratio_output_tokens_per_s, ".2f"), _f(x.total_tokens_per_s),
                  f"{x.goodput_rps:.2f} ({x.goodput_fraction:.0%})",
                  _f(x.usd_per_1m_output, ".4f"), _f(e and e.usd_per_1m_output, ".4f"),
                  _f(x.usd_per_1m_tokens, ".4f"), _f(e and e.usd_per_1m_tokens, ".4f"))
    console.print(t)
    t = Table(title="Latency, measured (seconds: p50 / p90 / p99)", title_justify="left")
    for col in ("load", "TTFT", "TPOT", "ITL", "end-to-end", "tokens in / out", "counts"):
        t.add_column(col, justify="left" if col == "load" else "right")
    for x in r.runs:
        t.add_row(x.label, *(f"{_f(s.p50, '.3f')} / {_f(s.p90, '.3f')} / {_f(s.p99, '.3f')}"
                             for s in (x.ttft_s, x.tpot_s, x.itl_s, x.e2e_s)),
                  f"{x.input_tokens} / {x.output_tokens}", x.token_counts)
    console.print(t)
    _notes(r, console)


def _notes(r, console: Console) -> None:
    console.print(f"Measured: {r.conditions}; {r.date}")
    for x in r.runs:
        if x.draft_tokens:  # the engine reported speculative decoding's drafts
            console.print(f"Speculative decoding at {x.label} (measured): {x.draft_tokens} "
                          f"tokens drafted, {x.draft_tokens_accepted} accepted "
                          f"({x.draft_acceptance:.0%}); `benchmarks/spec_decode.py` measures "
                          "the speed-up against the same deployment without it")
    console.print(f"Prefill ratio rho = {r.rho:.3f} ({r.rho_source}): machine time is split "
                  "between prompt and output tokens by it. Price: "
                  f"${r.usd_per_hour:g}/h ({r.usd_per_hour_source}).")
    if r.estimate:
        e = r.estimate
        if "hardware" in e:
            hw = e["hardware"]
            console.print(
                f"Estimated: {e['planner']}, {e['model']}, {e['weight_bytes'] / 1e6:.0f} MB "
                f"weights; this CPU measured at {hw['bandwidth_gbs']:.1f} GB/s copy and "
                f"{hw['gflops']:.0f} GFLOPS fp32 x efficiencies {e['eff_bandwidth']:.3g} / "
                f"{e['eff_flops']:.3g} ({_calibrated(e)}); "
                f"decode {1 / e['decode_step_s']:.0f} tok/s "
                f"({e['decode_bound']}-bound), prefill {e['prefill_tokens_per_s']:.0f} tok/s"
                + ("; one request at a time (llama-cpp-python's server)"
                   if e["serial_engine"] else ""))
        else:
            console.print(f"Estimated: {e['planner']}, {e['model']} {e['scheme']} on "
                          f"{e['tp'] * e['pp']}x {e['gpu']} ({e['engine']})")
    if any(x.profile == "rate" for x in r.runs):
        console.print("Estimated tokens/s is the capacity with requests back to back; a rate "
                      "below it measures the offered load, so its ratio is below 1 by design.")
    if r.estimate_note:
        console.print(f"[yellow]{r.estimate_note}[/]")
    if r.prompt_overhead_tokens is not None:
        console.print(f"Token counts: the server streams no usage; output tokens are counted "
                      f"chunks, prompt tokens its tokenizer + {r.prompt_overhead_tokens} chat "
                      "template tokens.")
    for x in r.runs:
        if x.requests_cached:
            console.print(f"[red]{x.label}: {x.requests_cached} of {x.requests_sent} answers "
                          "came from a response cache: left out of every figure, and this "
                          "result will not be used to price or calibrate[/]")
        for err in x.errors:
            console.print(f"[red]{x.label}: {x.requests_failed} failed; e.g. {err}[/]")


def _calibrated(estimate: dict) -> str:
    return (estimate.get("factors") or {}).get("calibrated") or "uncalibrated defaults"
