"""llama.cpp's own HTTP server (xllamacpp: the server compiled in, prebuilt CPU wheels
with runtime instruction-set dispatch), run in a process of its own: continuous batching
over `--parallel` slots with one unified KV cache, an OpenAI-compatible API, `/health`
and Prometheus `/metrics`.

    python -m tokenomy.serve.llamacpp_server --model MODEL.gguf --alias NAME --port 8001 \
        [--parallel 8] [--ctx-per-slot 2048] [--threads N]

Its log (per-slot timings) goes to stderr, which the gateway sends to the engine's log
file. The process serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import signal
import threading


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--alias", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--ctx-per-slot", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--metrics", action=argparse.BooleanOptionalAction, default=True)
    return parser.parse_args(argv)


def params(args: argparse.Namespace):
    import xllamacpp

    p = xllamacpp.CommonParams()
    p.model.path = args.model
    p.model_alias = {args.alias}
    p.hostnames = [args.host]
    p.port = args.port
    p.n_parallel = args.parallel
    p.kv_unified = True  # one KV pool the slots share: a long request borrows idle room
    p.n_ctx = args.parallel * args.ctx_per_slot
    p.cpuparams.n_threads = args.threads
    p.cpuparams_batch.n_threads = args.threads
    p.endpoint_metrics = args.metrics
    p.use_jinja = True  # the GGUF's own chat template
    p.no_extra_bufts = True  # the AMX/repack buffer types crash on some CPUs seen here
    return p


def main(argv: list[str] | None = None) -> None:
    import xllamacpp

    server = xllamacpp.Server(params(parse(argv)))  # noqa: F841 (serves while referenced)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


if __name__ == "__main__":
    main()
