"""OpenTelemetry spans (GenAI semantic conventions) from a live gateway to a real OTLP/HTTP
receiver on 127.0.0.1: one span per request, with the ledger's own figures."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from gateway_harness import chat, deployment, wait_for

pytest.importorskip("opentelemetry.sdk")
pytest.importorskip("opentelemetry.exporter.otlp.proto.http")


@pytest.fixture
def collector():
    """An OTLP/HTTP trace receiver: decodes each export with the OTLP protobufs."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    spans, paths = [], []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            paths.append((self.path, self.headers.get("x-team")))
            request = ExportTraceServiceRequest.FromString(body)
            for resource in request.resource_spans:
                service = {a.key: a.value.string_value for a in resource.resource.attributes}
                for scope in resource.scope_spans:
                    spans.extend((service, s) for s in scope.spans)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", spans, paths
    server.shutdown()


def _attrs(span) -> dict:
    out = {}
    for a in span.attributes:
        v = a.value
        kind = v.WhichOneof("value")
        out[a.key] = ([x.string_value for x in v.array_value.values] if kind == "array_value"
                      else getattr(v, kind))
    return out


def test_each_request_is_a_genai_span_with_the_ledger_figures(start_gateway, upstream,
                                                              collector):
    url, spans, paths = collector
    gw = start_gateway(deployment("m", upstream.url),
                       telemetry={"otlp_endpoint": url, "service_name": "gw-test",
                                  "headers": {"x-team": "ml"}})
    body = chat(max_tokens=9, temperature=0, user="alice",
                metadata={"tags": ["feature:search"]})
    assert gw.post(json=body).status_code == 200
    assert gw.post(json=chat(max_tokens=5, stream=True)).status_code == 200
    gw.state.telemetry.provider.force_flush()
    wait_for(lambda: len(spans) >= 2, what="2 spans at the collector")
    rows = sorted(gw.ledger.rows(), key=lambda r: r["started_at"])
    by_id = {_attrs(s)["tokenomy.usage_id"]: (service, s) for service, s in spans}
    assert set(by_id) == {r["id"] for r in rows}
    assert paths[0] == ("/v1/traces", "ml")
    for row in rows:
        service, span = by_id[row["id"]]
        a = _attrs(span)
        assert service["service.name"] == "gw-test" and span.name == "chat m"
        assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.model"] == "m"
        assert a["gen_ai.usage.input_tokens"] == row["prompt_tokens"] > 0
        assert a["gen_ai.usage.output_tokens"] == row["completion_tokens"] > 0
        assert a["tokenomy.cost_usd"] == pytest.approx(row["cost_usd"])
        assert a["gen_ai.response.finish_reasons"] == [row["finish_reason"]]
        assert span.end_time_unix_nano > span.start_time_unix_nano
    first = _attrs(by_id[rows[0]["id"]][1])
    assert first["gen_ai.request.max_tokens"] == 9 and first["tokenomy.feature"] == "search"
    assert "tokenomy.end_user" not in first  # not on spans unless the config says so
    assert _attrs(by_id[rows[1]["id"]][1])["gen_ai.request.stream"] is True


def test_a_failed_request_is_an_error_span(start_gateway, start_upstream, collector):
    url, spans, _ = collector
    up = start_upstream(fail_with=500)
    gw = start_gateway(deployment("m", up.url, max_retries=0), telemetry={"otlp_endpoint": url})
    assert gw.post(json=chat()).status_code >= 500
    gw.state.telemetry.provider.force_flush()
    wait_for(lambda: spans, what="a span")
    assert spans[0][1].status.code == 2  # STATUS_CODE_ERROR


def test_a_bad_endpoint_is_one_clear_config_error(tmp_path):
    from tokenomy.serve.config import ConfigError, load_config

    path = tmp_path / "gateway.yaml"
    path.write_text("model_list: [{model_name: m}]\n"
                    "telemetry: {otlp_endpoint: '127.0.0.1:4318'}\n")
    with pytest.raises(ConfigError, match=r"otlp_endpoint: .127\.0\.0\.1:4318. must be an http"):
        load_config(path)
