"""Upper bounds of a request's tokens, so the reservation admission takes covers the
request's real cost and a budget is never overspent.

Prompt: every tokenizer served here (byte-level BPE: GPT-2/Llama-3/SmolLM/OpenAI's
o200k; SentencePiece with byte fallback) emits at least one byte of text per token, and
a special token such as `<|im_start|>` stands for several bytes. So the prompt's token
count is at most the UTF-8 bytes of what the engine tokenizes: the messages' text plus
what the deployment's chat template wraps around them (its default system prompt, role
markers). That wrapper is measured once per deployment by rendering its own chat template
(GGUF metadata or tokenizer_config.json) with empty messages; deployments whose template
is not at hand (APIs) get a generous allowance.

Completion: `max_tokens` when the request sets it, else the most the deployment can
generate: `model_info.max_output_tokens`, else its context (llama.cpp's per slot, vLLM
`--max-model-len` or the checkpoint's `max_position_embeddings`), else DEFAULT_MAX_TOKENS.
"""

from __future__ import annotations

import json
import logging
import math
import struct
from dataclasses import dataclass
from pathlib import Path

from tokenomy.serve.config import Deployment

log = logging.getLogger("tokenomy.serve")

# Without a chat template to render (an API, an unreadable checkpoint): OpenAI's format
# costs ~4 tokens per message and 3 to prime the reply; these allowances are bytes.
FALLBACK_BASE_BYTES = 1024
FALLBACK_PER_MESSAGE_BYTES = 64
ROLE_SLACK_BYTES = 16  # role names differ in length from the 'user' rendered
DEFAULT_MAX_TOKENS = 16_384  # an API deployment with no model_info.max_output_tokens


@dataclass(frozen=True)
class PromptBound:
    base_bytes: int  # the template around an empty conversation, generation prompt included
    per_message_bytes: int
    max_output_tokens: int
    source: str  # where the template overhead comes from

    def prompt_tokens(self, body) -> int:
        """At most this many prompt tokens for `body` (a chat or completion request)."""
        extra = body.model_extra or {}
        tools = sum(len(json.dumps(extra[k]).encode()) for k in ("tools", "functions")
                    if extra.get(k))
        messages = getattr(body, "messages", None)
        if messages is None:  # /v1/completions: the prompt as given, plus a BOS
            return len(body.text().encode()) + 8 + tools
        text = sum(len(_content(m.content).encode()) + len((m.name or "").encode())
                   for m in messages)
        return (self.base_bytes + text + tools
                + len(messages) * (self.per_message_bytes + ROLE_SLACK_BYTES))

    def completion_tokens(self, body) -> int:
        asked = getattr(body, "max_completion_tokens", None) or body.max_tokens
        if asked is None and getattr(body, "messages", None) is None:
            asked = 16  # OpenAI's default for /v1/completions
        return min(asked, self.max_output_tokens) if asked else self.max_output_tokens


def _content(content) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(json.dumps(part) for part in content)  # every part, at its JSON size


def bound_for(deployment: Deployment) -> PromptBound:
    """The deployment's prompt and completion bounds (reads its chat template once)."""
    template, specials, source = _template(deployment)
    base = per = None
    if template:
        try:
            one = _render(template, specials, 1)
            three = _render(template, specials, 3)
            per = math.ceil((three - one) / 2)
            base, source = max(0, one - per), f"{source} chat template"
        except Exception as exc:
            log.warning("cannot render the chat template of %s (%s): reserving with a "
                        "generous allowance instead", deployment.id, exc)
    if base is None or per is None or per <= 0:
        base, per, source = FALLBACK_BASE_BYTES, FALLBACK_PER_MESSAGE_BYTES, "allowance"
    return PromptBound(base, per, _max_output(deployment), source)


def _render(template: str, specials: dict[str, str], turns: int) -> int:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: "x" * 32)
    roles = ["user", "assistant"] * turns
    messages = [{"role": r, "content": ""} for r in roles[:turns]]
    text = env.from_string(template).render(messages=messages, add_generation_prompt=True,
                                            **specials)
    return len(text.encode())


def _template(deployment: Deployment) -> tuple[str | None, dict[str, str], str]:
    params = deployment.params
    try:
        if params.engine in ("llamacpp", "openvino"):
            from tokenomy.serve.engines import openvino_model

            path = openvino_model(params.model)  # a GGUF, or an OpenVINO IR directory
            if path.suffix == ".gguf":
                return (*_gguf_template(path), "GGUF")
            return (*_hf_template(path), "IR")
        if params.engine == "vllm" and params.model:
            return (*_hf_template(Path(params.model).expanduser()), "checkpoint")
    except (OSError, ValueError, KeyError, struct.error) as exc:
        log.warning("no chat template read for %s: %s", deployment.id, exc)
    return None, {}, "allowance"


def _gguf_template(path: Path) -> tuple[str | None, dict[str, str]]:
    from tokenomy._gguf_meta import read_gguf_header

    meta = read_gguf_header(path, decode=lambda k: k == "tokenizer.ggml.tokens"
                            or not k.startswith("tokenizer.ggml.")).meta

    def value(key: str):
        return meta.get(key)

    def token(key: str) -> str:
        index, tokens = value(key), meta.get("tokenizer.ggml.tokens")
        if not isinstance(index, int) or not isinstance(tokens, list) or index >= len(tokens):
            return ""
        return tokens[index]

    return value("tokenizer.chat_template"), {
        "bos_token": token("tokenizer.ggml.bos_token_id"),
        "eos_token": token("tokenizer.ggml.eos_token_id")}


def _hf_template(directory: Path) -> tuple[str | None, dict[str, str]]:
    config = json.loads((directory / "tokenizer_config.json").read_text())
    template = config.get("chat_template")
    if template is None and (directory / "chat_template.jinja").is_file():
        template = (directory / "chat_template.jinja").read_text()
    if isinstance(template, list):  # named templates: the default one
        template = next((t["template"] for t in template if t.get("name") == "default"), None)

    def special(name: str) -> str:
        value = config.get(name)
        return value.get("content", "") if isinstance(value, dict) else (value or "")

    return template, {"bos_token": special("bos_token"), "eos_token": special("eos_token")}


def _max_output(deployment: Deployment) -> int:
    info, params = deployment.model_info, deployment.params
    if info.max_output_tokens:
        return int(info.max_output_tokens)
    if params.engine in ("llamacpp", "openvino"):
        return params.slot_context
    if params.engine == "vllm":
        args = params.engine_args
        if "--max-model-len" in args[:-1]:
            return int(args[args.index("--max-model-len") + 1])
        try:
            config = json.loads((Path(params.model).expanduser() / "config.json").read_text())
            return int(config["max_position_embeddings"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return DEFAULT_MAX_TOKENS
