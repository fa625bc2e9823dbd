"""A self-contained HTML report of an optimize run: inline SVG plots (matplotlib), no
scripts, no network."""

from __future__ import annotations

import html
import io

from tokenomy.optimize import OptimizeResult
from tokenomy.optimize.search import Option
from tokenomy.report import allocation

CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;
text-align:right}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.band{white-space:nowrap}.ok{color:#137333}.bad{color:#b3261e}.note{color:#555;font-size:0.9em}
figure{margin:1.5em 0}figcaption{color:#555}
"""


def _svg(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    # no date and a fixed id salt: the same results render the same page, byte for byte
    with plt.rc_context({"svg.hashsalt": "tokenomy"}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _bands(ax, opts: list[Option], xs: list[float], ys: list[float], gid: str,
           **style) -> None:
    """Horizontal error bars: each estimated option's $/1M output band (low-high); the
    bars' SVG group carries id=gid. Measured options get none."""
    est = [(o, x, y) for o, x, y in zip(opts, xs, ys, strict=True)
           if not o.cost_measured and o.usd_per_m_output_range]
    if not est:
        return
    below = [x - o.usd_per_m_output_range[0] for o, x, _ in est]
    above = [o.usd_per_m_output_range[1] - x for o, x, _ in est]
    bars = ax.errorbar([x for _, x, _ in est], [y for _, _, y in est], xerr=[below, above],
                       fmt="none", capsize=2, lw=1, **style)
    bars[2][0].set_gid(gid)


def _pareto_plot(r: OptimizeResult) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wl = r.workloads[0].name
    opts = [o for o in r.options if o.workload == wl and o.kld is not None]
    chosen = next((s.chosen for s in r.selections if s.workload == wl), None)
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for kind, marker, color in (("gpu", "o", "#1a73e8"), ("cpu", "s", "#e37400")):
        pts = [o for o in opts if o.kind == kind]
        basis = {"measured" if o.cost_measured else "estimated" for o in pts}
        ax.scatter([o.usd_per_m_output for o in pts], [o.kld + 1e-4 for o in pts],
                   marker=marker, color=color, alpha=0.6,
                   label=f"{kind.upper()} ({' and '.join(sorted(basis))} cost)")
    _bands(ax, opts, [o.usd_per_m_output for o in opts], [o.kld + 1e-4 for o in opts],
           "pareto-bands", ecolor="#1a73e8", alpha=0.4, label="estimate band")
    front = r.frontier
    ax.plot([o.usd_per_m_output for o in front], [o.kld + 1e-4 for o in front], "-",
            color="#137333", lw=2, label="Pareto frontier")
    for o in front:
        ax.annotate(f"{o.scheme} / {o.target.split(':')[0]}",
                    (o.usd_per_m_output, o.kld + 1e-4), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    if chosen and chosen.kld is not None:  # estimate-only: no measured quality to plot
        ax.scatter([chosen.usd_per_m_output], [chosen.kld + 1e-4], marker="*", s=300,
                   color="#d93025", zorder=5, label=f"chosen: {chosen.scheme} on {chosen.target}")
    ax.axhline(r.budget.max_kld, color="#d93025", ls=":", lw=1,
               label=f"budget: KLD {r.budget.max_kld:g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("$ per 1M output tokens (log)")
    ax.set_ylabel("mean KL divergence vs base (measured, log; +1e-4)")
    ax.set_title(f"Cost vs quality loss ({wl})")
    ax.legend(fontsize=8)
    return _svg(fig)


def _memory_plot(r: OptimizeResult) -> str:
    import matplotlib.pyplot as plt

    from tokenomy.catalog import default_catalog

    cat = default_catalog()
    rows = {}
    for o in r.options:
        rows.setdefault(o.scheme, o.weights_gb)
    fig, ax = plt.subplots(figsize=(9, 4))
    names = list(rows)
    ax.bar(names, [rows[n] for n in names], color="#1a73e8")
    for name in r.gpus:
        gpu = cat.gpu(name)
        ax.axhline(gpu.memory_gib * 2**30 / 1e9, ls="--", lw=0.8, color="#888")
        ax.text(len(names) - 0.5, gpu.memory_gib * 2**30 / 1e9, f" {gpu.name}", fontsize=7,
                va="bottom")
    ax.set_yscale("log")
    ax.set_ylabel("weights GB (log); dashed: GPU memory")
    ax.set_title("Memory per scheme against each GPU's capacity")
    ax.tick_params(axis="x", rotation=30, labelsize=8)
    return _svg(fig)


def _cost_plot(r: OptimizeResult) -> str:
    import matplotlib.pyplot as plt

    wl = r.workloads[0].name
    opts = [o for o in r.options if o.workload == wl]
    targets = sorted({o.target for o in opts})
    schemes = list(dict.fromkeys(o.scheme for o in opts))
    fig, ax = plt.subplots(figsize=(10, 0.35 * len(targets) * max(1, len(schemes)) / 3 + 3))
    height = 0.8 / max(1, len(schemes))
    placed: list[tuple[Option, float]] = []
    for i, scheme in enumerate(schemes):
        ys, xs = [], []
        for j, target in enumerate(targets):
            match = [o for o in opts if o.scheme == scheme and o.target == target]
            if match:
                ys.append(j + i * height)
                xs.append(match[0].usd_per_m_output)
                placed.append((match[0], j + i * height))
        ax.barh(ys, xs, height=height, label=scheme)
    _bands(ax, [o for o, _ in placed], [o.usd_per_m_output for o, _ in placed],
           [y for _, y in placed], "cost-bands", ecolor="#222")
    ax.set_yticks([j + 0.4 for j in range(len(targets))], targets, fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("$ per 1M output tokens (log)")
    ax.set_title(f"Cost per scheme x hardware ({wl})")
    ax.legend(fontsize=7, ncol=2)
    return _svg(fig)


def _quality_table(r: OptimizeResult) -> str:
    rows = ["<table><tr><th>scheme</th><th>KLD mean</th><th>KLD p99</th><th>PPL change</th>"
            "<th>top-1</th><th>answers = base</th><th>looping answers</th><th>size MB</th>"
            "<th>compress s</th><th>verdict</th></tr>"]
    named = [(st.label, st.base) for st in r.students] + [
        (f"{st.label}/{rec.scheme}", rec) for st in r.students for rec in st.records]
    for rec in [*r.records, *(x.model_copy(update={"scheme": n}) for n, x in named)]:
        if rec.quality is None:
            rows.append(f"<tr><td>{rec.scheme}</td><td colspan=9 class=bad>"
                        f"{html.escape(rec.error or 'not measured')}</td></tr>")
            continue
        q = rec.quality
        css = "ok" if q.verdict in ("near-lossless", "small loss") else "bad"
        rows.append(
            f"<tr><td>{rec.scheme}</td><td>{q.kld_mean:.4f}</td><td>{q.kld_p99:.3f}</td>"
            f"<td>{q.perplexity_change_pct:+.1f}%</td><td>{q.top1_agreement:.1%}</td>"
            f"<td>{q.answer_agreement:.0%}</td><td>{q.candidate.degenerate_answers}/"
            f"{q.answers} (base {q.base.degenerate_answers})</td>"
            f"<td>{(rec.size_on_disk_bytes or 0) / 1e6:.1f}</td>"
            f"<td>{rec.compress_seconds or 0:.1f}</td><td class={css}>{q.verdict}</td></tr>")
    return "\n".join(rows) + "</table>"


def _selections(r: OptimizeResult) -> str:
    return _picks(r.selections) + (
        "<h3>On this CPU: the engine to run</h3><p class=note>The same choice among this "
        "machine's options only (each engine's speed measured here).</p>"
        + _picks(r.cpu_selections) if r.cpu_selections else "")


def _picks(selections) -> str:
    out = []
    for s in selections:
        items = "".join(f"<li>{html.escape(x)}</li>" for x in s.reasons)
        o = s.chosen
        head = (f"{o.scheme} on {html.escape(o.target)}: ${o.figure()}/1M output tokens"
                if o else "nothing inside the budget")
        out.append(f"<h3>{html.escape(s.workload)}: {head}</h3><ul>{items}</ul>")
    return "\n".join(out)


def _students(r: OptimizeResult) -> str:
    """The students and, per workload, whether one of them or quantizing alone wins."""
    if not r.students:
        return ""
    rows = ["<table><tr><th>student</th><th>layers</th><th>parameters</th><th>trained on</th>"
            "<th>KLD vs teacher, unquantized</th></tr>"]
    for st in r.students:
        depth = f"{st.layers} of {st.teacher_layers}" if st.teacher_layers else str(st.layers)
        trained = (f"{st.tokens_seen:,} tokens ({st.objective})" if st.tokens_seen
                   else "not trained (pruned only)" if st.teacher_layers else "-")
        kld = f"{st.base.quality.kld_mean:.4f}" if st.base.quality else \
            html.escape(st.base.error or "not measured")
        rows.append(f"<tr><td>{html.escape(st.label)}</td><td>{depth}</td>"
                    f"<td>{st.params / 1e6:.1f}M</td><td>{trained}</td><td>{kld}</td></tr>")
    items = "".join(f"<li>{html.escape(v)}</li>" for v in r.student_verdicts)
    return ("<h2>Students against quantizing alone</h2><p class=note>Each student is "
            "compressed with the same schemes; every KLD is measured against the teacher "
            "(the model optimized), so its options share one quality scale with the "
            "quantize-only ones.</p>" + "\n".join(rows) + f"</table><ul>{items}</ul>")


def _options_table(r: OptimizeResult) -> str:
    """Every option, cheapest first per workload: estimated $ as 'point (low-high)',
    measured $ labelled measured, and a note naming what each band rests on."""
    chosen = {(s.workload, s.chosen.scheme, s.chosen.target) for s in r.selections
              if s.chosen}
    rows = ['<table id="options"><tr>'
            "<th>workload</th><th>scheme</th><th>target</th>"
            "<th>layout</th><th>$/1M out</th><th>$/1M in</th><th>$/month</th>"
            "<th>cost is</th><th>KLD</th><th>budget</th></tr>"]
    for o in sorted(r.options, key=lambda o: (o.workload, o.usd_per_m_output)):
        broken = r.budget.broken(o)
        pick = (o.workload, o.scheme, o.target) in chosen
        rows.append(
            f"<tr{' class=ok' if pick else ''}><td>{html.escape(o.workload)}</td>"
            f"<td>{'&#9733; ' if pick else ''}{o.scheme}</td><td>{html.escape(o.target)}</td>"
            f"<td>{html.escape(o.layout)}</td><td class=band>{o.figure()}</td>"
            f"<td class=band>{o.figure('usd_per_m_input')}</td>"
            f"<td class=band>{o.figure('usd_per_month', ',.0f')}</td>"
            f"<td>{'measured' if o.cost_measured else 'estimated'}</td>"
            f"<td>{'-' if o.kld is None else f'{o.kld:.4f}'}</td>"
            f"<td class={'bad' if broken else 'ok'}>"
            f"{html.escape('; '.join(broken)) if broken else 'inside'}</td></tr>")
    bases = sorted({o.cost_basis for o in r.options if o.cost_basis})
    note = ("<p class=note>Estimated $ figures read point (low-high): the interval each may "
            "fall in, from the engine profile's residuals (measured / predicted speed, "
            "10th-90th percentile; $ scale inversely). Bands and measurements rest on: "
            + "; ".join(html.escape(b) for b in bases) + ".</p>") if bases else ""
    return "\n".join(rows) + "</table>" + note


def _p99(b) -> str:
    return "" if b.max_kld_p99 is None else f", KLD p99 &le; {b.max_kld_p99:g}"


def render(r: OptimizeResult) -> str:
    b = r.budget
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>tokenomy optimize: {html.escape(r.model['name'])}</title><style>{CSS}</style></head>
<body><h1>tokenomy optimize: {html.escape(r.model['name'])}</h1>
<p class=note>{html.escape(r.conditions)}. Created {r.created_at}.</p>
<p>Quality budget: mean KLD &le; {b.max_kld:g}{_p99(b)}, perplexity increase &le;
{b.max_ppl_increase_pct:g}%, answer agreement &ge; {b.min_answer_agreement:.0%},
looping answers &le; the base's + {b.max_extra_looping:.0%}.</p>
<h2>Recommendation per workload</h2>{_selections(r)}
{_students(r)}
<figure id="pareto">{_pareto_plot(r)}<figcaption>Pareto frontier: cost (GPU estimated,
with the band each estimate may fall in as error bars; CPU measured at one stream, or
estimated at a batch for offline work) against measured quality loss; the star is the
recommendation.</figcaption></figure>
<h2>Options (cost estimated with bands, or measured)</h2>{_options_table(r)}
<h2>Quality (measured)</h2>{_quality_table(r)}
{allocation.section(r)}
<figure id="memory">{_memory_plot(r)}<figcaption>Weights per scheme (estimated from the
architecture) against GPU memory.</figcaption></figure>
<figure id="cost">{_cost_plot(r)}<figcaption>$ per 1M output tokens per scheme and
hardware; error bars: the band of each estimate (measured costs have none).</figcaption>
</figure>
</body></html>"""
