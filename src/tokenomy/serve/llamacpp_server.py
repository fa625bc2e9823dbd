"""llama.cpp's own HTTP server (xllamacpp: the server compiled in, prebuilt CPU wheels
with runtime instruction-set dispatch), run in a process of its own: continuous batching
over `--parallel` slots with one unified KV cache, an OpenAI-compatible API, `/health`
and Prometheus `/metrics`.

    python -m tokenomy.serve.llamacpp_server --model MODEL.gguf --alias NAME --port 8001 \
        [--parallel 8] [--ctx-per-slot 2048] [--threads N] \
        [--spec-type ngram-simple --spec-ngram-size-n 3 | --model-draft DRAFT.gguf] \
        [--draft-max 8] [--draft-min 0] [--draft-p-min P]

Speculative decoding (llama-server's option names): n-gram lookup in the prompt and
answer so far, or a draft model; each response's `timings` then carries `draft_n` and
`draft_n_accepted`, and /metrics `llamacpp:spec_decode_num_*_total`.

Its log (per-slot timings) goes to stderr, which the gateway sends to the engine's log
file. The process serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

# llama.cpp's test for a draft model it can use token for token (common/speculative.cpp)
VOCAB_MAX_SIZE_DIFFERENCE, VOCAB_CHECK_START_TOKEN_ID = 128, 5


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
    spec = parser.add_argument_group("speculative decoding")
    spec.add_argument("--spec-type", choices=["none", "ngram-simple"], default="none")
    spec.add_argument("--spec-ngram-size-n", type=int, default=3)
    spec.add_argument("--model-draft")
    spec.add_argument("--draft-max", type=int, default=8)
    spec.add_argument("--draft-min", type=int, default=0)
    spec.add_argument("--draft-p-min", type=float)
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
    speculative(p, args)
    return p


def speculative(p, args: argparse.Namespace) -> None:
    """Set CommonParams.speculative: a draft model, else n-gram lookup, else nothing."""
    import xllamacpp

    kind, spec = xllamacpp.common_speculative_type, p.speculative
    if args.model_draft:
        draft = spec.draft
        draft.mparams.path = args.model_draft
        draft.n_max, draft.n_min = args.draft_max, args.draft_min
        if args.draft_p_min is not None:
            draft.p_min = args.draft_p_min
        draft.cpuparams.n_threads = draft.cpuparams_batch.n_threads = args.threads
        spec.types = [kind.COMMON_SPECULATIVE_TYPE_DRAFT_SIMPLE]
    elif args.spec_type == "ngram-simple":
        # the tokens that followed the last n tokens where they occurred before
        spec.ngram_simple.size_n = args.spec_ngram_size_n
        spec.ngram_simple.size_m = spec.draft.n_max = args.draft_max
        spec.types = [kind.COMMON_SPECULATIVE_TYPE_NGRAM_SIMPLE]


def vocab_mismatch(target: Path, draft: Path) -> str | None:
    """What llama.cpp's draft compatibility test would find different between two GGUFs
    (tokenizer type, BOS, EOS, token texts), or None. Read from the headers: milliseconds."""
    from tokenomy._gguf_meta import read_gguf_header

    t, d = (read_gguf_header(path, decode=lambda key: key == "tokenizer.ggml.tokens").meta
            for path in (target, draft))
    for key, what in (("tokenizer.ggml.model", "tokenizer type"),
                      ("tokenizer.ggml.bos_token_id", "BOS token"),
                      ("tokenizer.ggml.eos_token_id", "EOS token")):
        if t.get(key) != d.get(key):
            return f"{what} {t.get(key)} vs {d.get(key)}"
    tokens_t, tokens_d = t.get("tokenizer.ggml.tokens") or [], d.get("tokenizer.ggml.tokens") \
        or []
    if abs(len(tokens_t) - len(tokens_d)) > VOCAB_MAX_SIZE_DIFFERENCE:
        return f"{len(tokens_t)} vs {len(tokens_d)} tokens"
    for i in range(VOCAB_CHECK_START_TOKEN_ID, min(len(tokens_t), len(tokens_d))):
        if tokens_t[i] != tokens_d[i]:
            return f"token {i} differs"
    return None


def main(argv: list[str] | None = None) -> None:
    import xllamacpp

    server = xllamacpp.Server(params(parse(argv)))  # noqa: F841 (serves while referenced)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


if __name__ == "__main__":
    main()
