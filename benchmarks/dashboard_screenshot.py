"""docs/dashboard.png: the gateway's /dashboard after a real run, screenshotted in
headless Chromium.

The gateway serves the embedded SmolLM2-135M on llama.cpp twice: `smollm2` (self-hosted,
priced at the CPU's $/hour over the planner's throughput) and `smollm2-api` (the same
engine called as an OpenAI-compatible API at list prices), with the exact cache on.
Traffic: 3 keys x 3 features, ShareGPT prompts, some repeated at temperature 0 (cache
hits), half of them streamed, sent in 12 batches whose ledger times are shifted 2 h
apart so the 24 h view has a shape (the gateway's clock is real time minus the batch's
offset; latency is real).

    .venv/bin/python benchmarks/dashboard_screenshot.py [--out docs/dashboard.png]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

FEATURES = ("search", "chat", "summarize")
BATCHES = 12
STEP_S = 2 * 3600


async def send(url: str, jobs: list[tuple[str, dict]]) -> list[int]:
    """The status of each request (a key over its budget gets 429)."""
    limit = asyncio.Semaphore(2)
    async with httpx.AsyncClient(timeout=300) as client:
        async def one(secret: str, body: dict) -> int:
            async with limit:
                r = await client.post(f"{url}/v1/chat/completions", json=body,
                                      headers={"Authorization": f"Bearer {secret}"})
                if r.status_code not in (200, 429):
                    r.raise_for_status()
                return r.status_code
        return await asyncio.gather(*(one(s, b) for s, b in jobs))


def traffic(rng: random.Random, keys: list, prompts: list[str], batch: int) -> list:
    jobs = []
    for _ in range(2 + 4 * (batch % 6 in (3, 4, 5))):  # busier in some hours
        for k, (_, secret) in enumerate(keys):
            feature = FEATURES[(k + rng.randrange(3)) % 3]
            body = {"model": "smollm2" if rng.random() < 0.6 else "smollm2-api",
                    "messages": [{"role": "user", "content": rng.choice(prompts)}],
                    "max_tokens": rng.choice((8, 16, 24)), "temperature": 0,
                    "metadata": {"tags": [f"feature:{feature}"]}, "user": f"user{k}"}
            if rng.random() < 0.5:  # streamed: the ledger gets its time to first token
                body |= {"stream": True, "stream_options": {"include_usage": True}}
            jobs.append((secret, body))
    return jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/dashboard.png"))
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("chromium is needed for the screenshot (apt-get install chromium)")

    from fake_upstream import ServerThread
    from tokenomy.serve import running_engines
    from tokenomy.serve.app import GatewayState, Upstream, create_app
    from tokenomy.serve.config import GatewayConfig
    from tokenomy.serve.ledger import Ledger
    from tokenomy.serve.router import sample_prompts

    tmp = Path(tempfile.mkdtemp())
    db_url = f"sqlite:///{tmp / 'usage.db'}"
    ledger = Ledger(db_url)
    admin_id, admin = ledger.create_key("ops")
    keys = [ledger.create_key("web", budget_usd=0.0004, period="daily"),
            ledger.create_key("mobile", budget_usd=0.001, period="weekly"),
            ledger.create_key("batch-jobs")]
    ledger.close()
    local = {"model_name": "smollm2", "params": {"engine": "llamacpp"}}
    with running_engines(GatewayConfig.model_validate({"model_list": [local]}),
                         progress=print) as upstreams:
        up = upstreams["smollm2"]
        api = {"model_name": "smollm2-api", "params": {
            "engine": "openai", "api_base": up.base_url, "model": up.model_id},
            "model_info": {"input_cost_per_token": 1.5e-7, "output_cost_per_token": 6e-7}}
        config = GatewayConfig.model_validate({
            "model_list": [local, api], "database_url": db_url, "cache": {"exact": True},
            "general": {"admin_keys": [admin_id]}})
        offset = [0.0]
        state = GatewayState(config, {d.id: Upstream(d, up.base_url, up.model_id, up.headers)
                                      for d in config.model_list},
                             clock=lambda: time.time() - offset[0])
        rng = random.Random(0)
        prompts = [p[:400] for p in sample_prompts("sharegpt", "evaluation", 30, 0)]
        with ServerThread(create_app(state)) as gateway:
            for batch in range(BATCHES):
                offset[0] = (BATCHES - 1 - batch) * STEP_S + 600
                jobs = traffic(rng, keys, prompts, batch)
                codes = asyncio.run(send(gateway.url, jobs))
                print(f"batch {batch + 1}/{BATCHES}: {len(jobs)} requests, "
                      f"{codes.count(429)} refused by a budget")
            offset[0] = 0.0
            args.out.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                            "--hide-scrollbars", f"--user-data-dir={tmp / 'chromium'}",
                            f"--screenshot={args.out.resolve()}", "--window-size=1280,2000",
                            f"{gateway.url}/dashboard?key={admin}"],
                           check=True, capture_output=True, timeout=180)
    rows = len(Ledger(db_url, create=False).rows())
    print(f"{rows} requests in the ledger {db_url}; wrote {args.out} "
          f"({args.out.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
