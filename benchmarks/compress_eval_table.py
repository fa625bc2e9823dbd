"""Every compression scheme on the embedded SmolLM2-135M-Instruct: compress, reload,
evaluate against the base, and print one table (time, peak RSS, size, PPL, KLD, top-1,
answer agreement, verdict). Each compression runs in its own process so its peak RSS
is its own.

    python benchmarks/compress_eval_table.py [--out DIR] [--schemes a,b] [--windows 16]
        [--prompts 16] [--calibration-samples 64]

Also checks the evaluator against llama.cpp: the embedded GGUF's perplexity through
transformers (dequantized) and through llama.cpp on the same Hamlet tokens.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tokenomy.compress import SCHEMES
from tokenomy.evaluate import EvalConfig, evaluate
from tokenomy.sources import resolve_source

console = Console(width=180)


def compress_in_subprocess(scheme: str, out: Path, samples: int) -> dict:
    cmd = [sys.executable, "-m", "tokenomy", "compress", "--scheme", scheme, "-o", str(out),
           "--calibration-samples", str(samples), "--json"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        error = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
        return {"error": error[-1] if error else proc.stderr.strip().splitlines()[-1],
                "wall_s": wall}
    return json.loads((out / "tokenomy.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/compress_eval"))
    parser.add_argument("--schemes", default=",".join(SCHEMES))
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--calibration-samples", type=int, default=64)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    config = EvalConfig(windows=args.windows, prompts=args.prompts)
    table = args.out / "table.json"  # rows of earlier runs are kept, replaced per scheme
    rows = json.loads(table.read_text()) if table.is_file() else []
    for name in args.schemes.split(","):
        target = args.out / name
        console.print(f"[bold]{name}[/bold]")
        made = (json.loads((target / "tokenomy.json").read_text()) if target.exists()
                else compress_in_subprocess(name, target, args.calibration_samples))
        row = {"scheme": name, **{k: made.get(k) for k in (
            "wall_time_s", "peak_rss_bytes", "size_on_disk_bytes", "error")}}
        if "error" not in made or not made["error"]:
            result = evaluate(target, None, config)
            row.update(ppl=result.candidate.perplexity, ppl_base=result.base.perplexity,
                       kld=result.kld_mean, kld_p99=result.kld_p99, top1=result.top1_agreement,
                       answers=result.answer_agreement, prefix=result.answer_prefix_tokens,
                       degenerate=result.candidate.degenerate_answers,
                       base_degenerate=result.base.degenerate_answers, n=result.answers,
                       verdict=result.verdict, conditions=result.conditions)
        rows = [r for r in rows if r["scheme"] != name] + [row]
        table.write_text(json.dumps(rows, indent=2))
    print_table(rows)
    agreement(args.out)


def print_table(rows: list[dict]) -> None:
    table = Table(title="Compression schemes on SmolLM2-135M-Instruct (measured, 2-core CPU)")
    for col in ("scheme", "time s", "peak RSS GiB", "size MB", "PPL (base)", "KLD mean",
                "KLD p99", "top-1", "answers =", "degenerate", "verdict / error"):
        table.add_column(col)
    for r in rows:
        if r.get("error"):
            table.add_row(r["scheme"], *["-"] * 9, f"[red]{r['error']}[/red]")
            continue
        table.add_row(
            r["scheme"], f"{r['wall_time_s']:.1f}", f"{r['peak_rss_bytes'] / 2**30:.2f}",
            f"{r['size_on_disk_bytes'] / 1e6:.1f}", f"{r['ppl']:.3f} ({r['ppl_base']:.3f})",
            f"{r['kld']:.4f}", f"{r['kld_p99']:.3f}", f"{r['top1']:.1%}",
            f"{r['answers']:.0%} ({r['prefix']:.1f} tok)",
            f"{r['degenerate']}/{r['n']} (base {r['base_degenerate']})", r["verdict"],
        )
    console.print(table)
    if rows and rows[0].get("conditions"):
        console.print(f"Conditions: {rows[0]['conditions']}")


def agreement(out: Path) -> None:
    """transformers vs llama.cpp perplexity of the embedded GGUF on the same tokens."""
    gguf = resolve_source(None).path
    result = evaluate(gguf, None, EvalConfig(dataset="shakespeare:hamlet", windows=40,
                                             prompts=1))
    diff = result.perplexity_change_pct
    console.print(
        f"Perplexity of {gguf.name} on {result.tokens} Hamlet tokens: transformers "
        f"{result.base.perplexity:.3f}, llama.cpp {result.candidate.perplexity:.3f} "
        f"({diff:+.2f}%, {'within' if abs(diff) < 1 else 'OUTSIDE'} 1%)"
    )
    (out / "agreement.json").write_text(result.model_dump_json(indent=2))


if __name__ == "__main__":
    main()
