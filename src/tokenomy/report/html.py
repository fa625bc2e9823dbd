"""A self-contained HTML report of an optimize run: inline SVG plots (matplotlib), no
scripts, no network."""

from __future__ import annotations

import html
import io

from tokenomy.optimize import OptimizeResult

CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;
text-align:right}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.ok{color:#137333}.bad{color:#b3261e}.note{color:#555;font-size:0.9em}
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
        ax.scatter([o.usd_per_m_output for o in pts], [o.kld + 1e-4 for o in pts],
                   marker=marker, color=color, alpha=0.6,
                   label=f"{kind.upper()} ({'measured' if kind == 'cpu' else 'estimated'} cost)")
    front = r.frontier
    ax.plot([o.usd_per_m_output for o in front], [o.kld + 1e-4 for o in front], "-",
            color="#137333", lw=2, label="Pareto frontier")
    for o in front:
        ax.annotate(f"{o.scheme} / {o.target.split(':')[0]}",
                    (o.usd_per_m_output, o.kld + 1e-4), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    if chosen:
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
    for i, scheme in enumerate(schemes):
        ys, xs = [], []
        for j, target in enumerate(targets):
            match = [o for o in opts if o.scheme == scheme and o.target == target]
            if match:
                ys.append(j + i * height)
                xs.append(match[0].usd_per_m_output)
        ax.barh(ys, xs, height=height, label=scheme)
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
    for rec in r.records:
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
    out = []
    for s in r.selections:
        items = "".join(f"<li>{html.escape(x)}</li>" for x in s.reasons)
        head = (f"{s.chosen.scheme} on {html.escape(s.chosen.target)}" if s.chosen
                else "nothing inside the budget")
        out.append(f"<h3>{html.escape(s.workload)}: {head}</h3><ul>{items}</ul>")
    return "\n".join(out)


def render(r: OptimizeResult) -> str:
    b = r.budget
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>tokenomy optimize: {html.escape(r.model['name'])}</title><style>{CSS}</style></head>
<body><h1>tokenomy optimize: {html.escape(r.model['name'])}</h1>
<p class=note>{html.escape(r.conditions)}. Created {r.created_at}.</p>
<p>Quality budget: mean KLD &le; {b.max_kld:g}, perplexity increase &le;
{b.max_ppl_increase_pct:g}%, answer agreement &ge; {b.min_answer_agreement:.0%},
looping answers &le; the base's + {b.max_extra_looping:.0%}.</p>
<h2>Recommendation per workload</h2>{_selections(r)}
<figure id="pareto">{_pareto_plot(r)}<figcaption>Pareto frontier: cost (GPU estimated,
CPU measured) against measured quality loss; the star is the recommendation.</figcaption></figure>
<h2>Quality (measured)</h2>{_quality_table(r)}
<figure id="memory">{_memory_plot(r)}<figcaption>Weights per scheme (estimated from the
architecture) against GPU memory.</figcaption></figure>
<figure id="cost">{_cost_plot(r)}<figcaption>$ per 1M output tokens per scheme and
hardware.</figcaption></figure>
</body></html>"""
