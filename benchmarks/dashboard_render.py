"""How long /dashboard takes to build from a ledger of N rows: a real ledger's usage rows
(e.g. the one benchmarks/dashboard_screenshot.py prints) copied until there are N, their
times spread over the last day, into a scratch SQLite file; then the page is built
(both SELECTs, the aggregation, the HTML) a few times. Prints wall and CPU seconds.

    .venv/bin/python benchmarks/dashboard_render.py --db sqlite:////tmp/.../usage.db --rows 10000
"""

from __future__ import annotations

import argparse
import random
import shutil
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, help="a SQLite ledger URL to copy rows from")
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    from tokenomy.serve.dashboard import html
    from tokenomy.serve.dashboard_data import load
    from tokenomy.serve.ledger import Ledger

    scratch = Path(tempfile.mkdtemp()) / "usage.db"
    shutil.copy(args.db.removeprefix("sqlite:///"), scratch)
    rng, now = random.Random(0), time.time()
    with sqlite3.connect(scratch) as db:
        cols = [r[1] for r in db.execute("PRAGMA table_info(tokenomy_usage)")]
        rows = db.execute("SELECT * FROM tokenomy_usage").fetchall()
        ident, started = cols.index("id"), cols.index("started_at")
        extra = []
        while len(rows) + len(extra) < args.rows:
            row = list(rng.choice(rows))
            row[ident], row[started] = uuid.uuid4().hex, now - rng.random() * 86_000
            extra.append(row)
        db.executemany(f"INSERT INTO tokenomy_usage VALUES ({','.join('?' * len(cols))})",
                       extra)
    ledger = Ledger(f"sqlite:///{scratch}", create=False)
    for since in ("24h", "30d"):
        walls, cpus = [], []
        for _ in range(args.repeat):
            wall, cpu = time.perf_counter(), time.process_time()
            page = html(load(ledger, since, lambda _dep: 0.0), 0.0)
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
        print(f"since={since}: {len(rows) + len(extra)} rows -> {len(page) / 1024:.0f} KiB "
              f"page in {min(walls):.3f} s wall (median {sorted(walls)[len(walls) // 2]:.3f}),"
              f" {min(cpus):.3f} s CPU (best of {args.repeat})")


if __name__ == "__main__":
    main()
