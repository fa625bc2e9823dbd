"""OpenTelemetry spans for each finished request, following the GenAI semantic conventions
(`gen_ai.*` attributes: operation, provider, request and response model, token usage,
finish reasons, time to first chunk), plus tokenomy's own: cost, price basis, key,
feature, cache. Optional: `telemetry: {otlp_endpoint: ...}` in the gateway config, with
`pip install tokenomy[otel]`.

A span is built when the request's outcome is known, with its real start and end times,
and handed to the SDK's batch processor, which exports over OTLP/HTTP from a thread of
its own: nothing on the request path waits for the collector. End users are not put on
spans unless the config asks (`include_end_user: true`): spans often leave the company.
"""

from __future__ import annotations

import time

from tokenomy.errors import InvalidInputError

# the GenAI semantic conventions' attribute names (opentelemetry-semantic-conventions
# 0.66b2, gen_ai_attributes: still "incubating", so spelled out here rather than imported)
OPERATION, PROVIDER = "gen_ai.operation.name", "gen_ai.provider.name"
REQUEST_MODEL, RESPONSE_MODEL = "gen_ai.request.model", "gen_ai.response.model"
INPUT_TOKENS, OUTPUT_TOKENS = "gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens"
CACHE_READ = "gen_ai.usage.cache_read.input_tokens"
MAX_TOKENS, TEMPERATURE = "gen_ai.request.max_tokens", "gen_ai.request.temperature"
STREAM, FINISH = "gen_ai.request.stream", "gen_ai.response.finish_reasons"
TTFC = "gen_ai.response.time_to_first_chunk"


class Telemetry:
    """An OTLP/HTTP span exporter for the gateway (one per gateway process)."""

    def __init__(self, settings):
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError as e:
            raise InvalidInputError(
                "telemetry.otlp_endpoint is set but the OpenTelemetry SDK is not installed: "
                "`pip install 'tokenomy[otel]'` (opentelemetry-sdk and the OTLP/HTTP "
                "exporter), or remove the telemetry section") from e
        self.settings = settings
        self.provider = TracerProvider(resource=Resource.create(
            {"service.name": settings.service_name}))
        endpoint = settings.otlp_endpoint.rstrip("/")
        if not endpoint.endswith("/v1/traces"):
            endpoint += "/v1/traces"
        self.provider.add_span_processor(BatchSpanProcessor(
            OTLPSpanExporter(endpoint=endpoint, headers=dict(settings.headers), timeout=5)))
        self.tracer = self.provider.get_tracer("tokenomy.gateway")

    def request(self, *, endpoint: str, model: str, deployment: str | None, status: str,
                started_wall: float, prompt: int, completion: int, cached: int = 0,
                cost: float, basis: str | None, key_id: str, feature: str | None,
                end_user: str | None, body: dict, finish_reason: str | None,
                ttft: float | None, cache: str | None = None, error: str | None = None,
                usage_id: str = "") -> None:
        from opentelemetry.trace import SpanKind, Status, StatusCode

        operation = "chat" if endpoint.endswith("chat/completions") else "text_completion"
        attributes = {
            OPERATION: operation, PROVIDER: "tokenomy", REQUEST_MODEL: model,
            INPUT_TOKENS: prompt, OUTPUT_TOKENS: completion, STREAM: bool(body.get("stream")),
            "tokenomy.usage_id": usage_id, "tokenomy.status": status,
            "tokenomy.cost_usd": cost, "tokenomy.key_id": key_id,
        }
        optional = {RESPONSE_MODEL: deployment, CACHE_READ: cached or None,
                    MAX_TOKENS: body.get("max_completion_tokens") or body.get("max_tokens"),
                    TEMPERATURE: body.get("temperature"), TTFC: ttft,
                    FINISH: [finish_reason] if finish_reason else None,
                    "tokenomy.price_basis": basis, "tokenomy.feature": feature,
                    "tokenomy.cache": cache, "error.type": error and error[:200],
                    "tokenomy.end_user": end_user if self.settings.include_end_user else None}
        attributes.update({k: v for k, v in optional.items()
                           if isinstance(v, str | int | float | bool | list)})
        end_ns = time.time_ns()
        span = self.tracer.start_span(f"{operation} {model}", kind=SpanKind.SERVER,
                                      attributes=attributes,
                                      start_time=int(started_wall * 1e9))
        if status != "ok":
            span.set_status(Status(StatusCode.ERROR, status))
        span.end(end_time=end_ns)

    def close(self) -> None:
        self.provider.shutdown()  # flushes what is queued
