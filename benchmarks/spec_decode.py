"""Speculative decoding on llama.cpp's server, measured against the same deployment
without it: the embedded SmolLM2-135M Q4_1, one slot, this CPU's threads, started the
way the gateway starts it (`params.speculative`), three ways at once:

- none:  no speculation;
- ngram: prompt lookup (`{method: ngram}`: llama.cpp's ngram-simple, 3-token match,
  up to 8 drafted);
- draft: a draft model (`{method: draft, draft_model: ..., p_min: 0.75}`): the same
  SmolLM2 requantized to Q2_K (`tokenomy compress --scheme gguf-q2_k`, made once into
  the cache), the only draft with its vocabulary available offline; up to 8 drafted,
  drafting stops at a token the draft gives less than 0.75.

Two workloads: 'chat' (ShareGPT first turns; answers seldom repeat the prompt) and
'copy' (copy a Hamlet passage; the answer repeats the prompt: prompt lookup's best case).
Each prompt goes to the three deployments in turn (rotating who goes first), one request
at a time (concurrency 1), temperature 0, in `--rounds` rounds; each request's fastest
round counts, so a shared, noisy CPU hits all three alike and as little as it can.

    .venv/bin/python benchmarks/spec_decode.py [--requests 5] [--max-tokens 64] [--rounds 2]
        [--json F]

Prints per workload and deployment: output tok/s (output tokens over the requests' time,
TTFT included, fastest rounds), TTFT and TPOT p50 and drafted / accepted tokens and
acceptance of the first round (the engine's per-response `timings`, read by `tokenomy
bench`'s client and summed by its summarize), and the speedup over 'none' (the median of
the per-request time ratios); below 1 the table says "slower". Acceptance alone does not
make a speedup: checking a draft costs a batched step, and a draft model's tokens cost
its own forward passes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from tokenomy.bench.client import RequestRecord, Target, stream_one
from tokenomy.bench.metrics import summarize
from tokenomy.bench.workload import BenchRequest, estimate_tokens, sharegpt_requests
from tokenomy.serve.config import Deployment, GatewayConfig
from tokenomy.serve.engines import Engines

SPECULATION = {"none": None, "ngram": {"method": "ngram", "ngram_size": 3, "num_tokens": 8}}
COPY_LEAD = "Copy this passage exactly, line by line, changing nothing:\n\n"


def draft_model() -> Path:
    """The embedded SmolLM2 requantized to Q2_K, made once into tokenomy's cache."""
    from tokenomy.compress import compress
    from tokenomy.home import cache_dir

    out = cache_dir("spec-decode") / "smollm2-gguf-q2_k"
    if not out.is_dir():
        compress(None, "gguf-q2_k", out)
    return next(out.glob("*.gguf"))


def deployments(draft: Path) -> list[Deployment]:
    spec = {**SPECULATION, "draft": {"method": "draft", "draft_model": str(draft),
                                     "num_tokens": 8, "p_min": 0.75}}
    out = [Deployment.model_validate({"model_name": name, "params": {
        "engine": "llamacpp", "parallel": 1, "speculative": s}}) for name, s in spec.items()]
    GatewayConfig(model_list=out).check_files()  # the draft's vocabulary, before starting
    return out


def copy_requests(n: int, seed: int, max_tokens: int) -> list[BenchRequest]:
    """Passages of six lines of Hamlet's verse, to be copied."""
    from tokenomy.evaluate.data import plain_text

    lines = [ln.strip() for ln in plain_text("shakespeare:hamlet").splitlines()]
    verse = [i for i in range(len(lines) - 6)
             if all(len(x) > 20 and "[" not in x for x in lines[i:i + 6])]
    rng = random.Random(seed)
    out = []
    for start in rng.sample(verse, n):
        prompt = COPY_LEAD + "\n".join(lines[start:start + 6])
        out.append(BenchRequest(prompt, max_tokens, estimate_tokens(prompt)))
    return out


def measure(targets: dict[str, Target], requests: list[BenchRequest], rounds: int
            ) -> dict[str, list[list[RequestRecord]]]:
    """Each request to every target in turn (who goes first rotates), `rounds` times;
    records by target, round, request."""
    records = {name: [[] for _ in range(rounds)] for name in targets}

    async def run() -> None:
        async with httpx.AsyncClient(timeout=httpx.Timeout(300.0, connect=10.0)) as client:
            names = list(targets)
            warm = BenchRequest(requests[0].prompt, 8, requests[0].input_tokens)
            for name in names:  # not measured
                await stream_one(client, targets[name], warm, 0, 0.0)
            for k in range(rounds):
                for i, request in enumerate(requests):
                    turn = (i + k) % len(names)
                    for name in names[turn:] + names[:turn]:
                        records[name][k].append(await stream_one(client, targets[name],
                                                                 request, i, 0.0))

    asyncio.run(run())
    return records


def figures(rounds: list[list[RequestRecord]], base: list[list[RequestRecord]],
            counted: list[int]) -> dict:
    """The first round as `tokenomy bench` summarizes it (tokens, TTFT, TPOT, drafts), and
    each request's fastest round: on a shared CPU another process only ever slows a
    request down, so the best of a few is the closest to the deployment's own speed."""
    run = summarize(rounds[0], sum(r.e2e for r in rounds[0]), counted, concurrency=1,
                    rate=None, slo_ttft_s=2.0, slo_tpot_s=0.2)

    def best(runs: list[list[RequestRecord]]) -> list[RequestRecord | None]:
        return [min((r[i] for r in runs if r[i].ok), key=lambda x: x.e2e, default=None)
                for i in range(len(counted))]

    pairs = [(r, b) for r, b in zip(best(rounds), best(base), strict=True) if r and b]
    return {"run": run,
            "tok_s": sum(r.output_tokens for r, _ in pairs) / sum(r.e2e for r, _ in pairs),
            "speedup": statistics.median(b.e2e / r.e2e for r, b in pairs),
            "same_length": sum(r.output_tokens == b.output_tokens for r, b in pairs)}


def verdict(name: str, speedup: float) -> str:
    if name == "none":
        return "baseline"
    return f"{speedup:.2f}x faster" if speedup >= 1 else f"{speedup:.2f}x: slower"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5, help="per workload")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="each request's best counts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    console = Console(width=160)
    console.print("making the draft model (once) ...")
    plans = deployments(draft_model())
    load = os.getloadavg()[0]
    workloads = {
        "chat": sharegpt_requests("sharegpt", args.requests, args.seed, 256, args.max_tokens),
        "copy": copy_requests(args.requests, args.seed, args.max_tokens)}
    results: dict[str, dict[str, dict]] = {}
    with Engines(plans) as engines:
        targets = {d.id: Target(engines.by_id[d.id].base_url, d.model_name) for d in plans}
        try:
            for workload, requests in workloads.items():
                console.print(f"{workload}: {len(requests)} requests x {len(targets)} ...")
                records = measure(targets, requests, args.rounds)
                counted = [r.input_tokens for r in requests]
                results[workload] = {name: figures(recs, records["none"], counted)
                                     for name, recs in records.items()}
        finally:
            for target in targets.values():
                target.close()
    conditions = (f"{os.cpu_count()} CPUs shared, load average {load:.2f} at start -> "
                  f"{os.getloadavg()[0]:.2f} at end; embedded SmolLM2-135M Q4_1 on "
                  f"llama.cpp's server (xllamacpp), 1 slot; {args.requests} requests per "
                  f"workload, <= {args.max_tokens} output tokens, concurrency 1, "
                  f"temperature 0, seed {args.seed}; each request's fastest of "
                  f"{args.rounds} rounds. tok/s: output tokens / their requests' time (TTFT "
                  "included); speedup: median per-request time ratio against 'none'")
    table = Table(title="Speculative decoding on this CPU (measured)", caption=conditions)
    for col in ("workload", "speculation", "ok", "out tokens", "out tok/s", "TTFT p50 ms",
                "TPOT p50 ms", "drafted", "accepted", "acceptance", "speedup vs none"):
        table.add_column(col, justify="left" if col in ("workload", "speculation") else "right")
    rows = []
    for workload, by_name in results.items():
        for name, f in by_name.items():
            run = f["run"]
            acc = "-" if run.draft_acceptance is None else f"{run.draft_acceptance:.0%}"
            table.add_row(workload, name, f"{run.requests_ok}/{run.requests_sent}",
                          str(run.output_tokens), f"{f['tok_s']:.1f}",
                          f"{(run.ttft_s.p50 or 0) * 1e3:.0f}",
                          f"{(run.tpot_s.p50 or 0) * 1e3:.1f}", str(run.draft_tokens or 0),
                          str(run.draft_tokens_accepted or 0), acc,
                          verdict(name, f["speedup"]))
            rows.append({"workload": workload, "speculation": name, "speedup": f["speedup"],
                         "best_round_output_tokens_per_s": f["tok_s"],
                         "same_length_as_none": f["same_length"],
                         **run.model_dump(include={
                             "requests_ok", "output_tokens", "output_tokens_per_s",
                             "draft_tokens", "draft_tokens_accepted", "draft_acceptance"}),
                         "ttft_p50_s": run.ttft_s.p50, "tpot_p50_s": run.tpot_s.p50})
    console.print(table)
    if args.json:
        args.json.write_text(json.dumps({"conditions": conditions, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
