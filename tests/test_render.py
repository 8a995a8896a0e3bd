"""Renderers: exact text layout of reflect, the filter threshold, the exact and endpoint rewriters."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from megatron_reflect.data.render import EndpointRewriter, ExactRewriter, build_rewriter, render
from megatron_reflect.data.types import Document, Label, Segment
from megatron_reflect.errors import ConfigError, DataError
from megatron_reflect.reflection import DEFAULT_TEMPLATE, Reflection, ReflectionTemplate, Verdict

TEXT = "First  sentence.\n\nSecond one is bad. Third\tis fine.  "
BOUNDS = [(0, 18), (18, 37), (37, len(TEXT))]


def doc(**fields) -> Document:
    return Document("d1", TEXT, source="corpus.jsonl", line=7, fields=fields)


def segments() -> list[Segment]:
    return [Segment("d1", i, a, b, TEXT[a:b]) for i, (a, b) in enumerate(BOUNDS)]


LABELS = [Label(Verdict.SAFE), Label(Verdict.UNSAFE, "Violent", 0.9), Label(Verdict.CONTROVERSIAL, None, 0.4)]


def test_reflect_layout_keeps_text_and_whitespace():
    pieces = render(doc(), segments(), LABELS, "reflect", DEFAULT_TEMPLATE)
    assert [p.reflection for p in pieces[1::2]] == [Reflection(Verdict.SAFE), Reflection(Verdict.UNSAFE, "Violent"),
                                                     Reflection(Verdict.CONTROVERSIAL)]
    assert "".join(p.text for p in pieces[0::2]) == TEXT
    assert "".join(p.text for p in pieces) == (
        "First  sentence.\n\n <think> Safe </think> Second one is bad.  <think> Unsafe: Violent </think> "
        "Third\tis fine.   <think> Controversial </think> ")
    custom = ReflectionTemplate(open_tag="[R]", close_tag="[/R]", leading_space=False)
    text = "".join(p.text for p in render(doc(), segments(), LABELS, "reflect", custom))
    assert text.startswith("First  sentence.\n\n[R] Safe [/R] Second")


def test_filter_threshold_by_count_and_score():
    assert render(doc(), segments(), LABELS, "filter", DEFAULT_TEMPLATE) is None  # 2 flagged > 0
    assert render(doc(), segments(), LABELS, "filter", DEFAULT_TEMPLATE, max_flagged=1) is None
    kept = render(doc(), segments(), LABELS, "filter", DEFAULT_TEMPLATE, max_flagged=2)
    assert [p.text for p in kept] == [TEXT]
    # only the Unsafe segment (score 0.9) reaches min_score 0.5
    assert render(doc(), segments(), LABELS, "filter", DEFAULT_TEMPLATE, max_flagged=1, min_score=0.5) is not None
    assert render(doc(), segments(), LABELS, "filter", DEFAULT_TEMPLATE, min_score=0.5) is None
    safe = [Label(Verdict.SAFE)] * 3
    assert render(doc(), segments(), safe, "filter", DEFAULT_TEMPLATE)[0].text == TEXT


def test_plain_and_input_checks():
    assert [p.text for p in render(doc(), [], [], "plain", DEFAULT_TEMPLATE)] == [TEXT]
    with pytest.raises(DataError, match="corpus.jsonl:7.*3 segments but 2 labels"):
        render(doc(), segments(), LABELS[:2], "reflect", DEFAULT_TEMPLATE)
    gap = segments()[:1] + segments()[2:]
    with pytest.raises(DataError, match="does not tile"):
        render(doc(), gap, LABELS[:2], "reflect", DEFAULT_TEMPLATE)
    with pytest.raises(ConfigError, match="unknown render mode"):
        render(doc(), segments(), LABELS, "bogus", DEFAULT_TEMPLATE)
    with pytest.raises(ConfigError, match="needs a rewriter"):
        render(doc(), segments(), LABELS, "rewrite", DEFAULT_TEMPLATE)


def test_exact_rewriter():
    rewrites = [{"start": 32, "end": 35, "text": "good"}, {"start": 37, "end": 42, "text": "That"}]
    pieces = render(doc(rewrites=rewrites), segments(), LABELS, "rewrite", DEFAULT_TEMPLATE,
                    rewriter=ExactRewriter())
    assert [p.text for p in pieces] == ["First  sentence.\n\nSecond one is good. That\tis fine.  "]
    with pytest.raises(DataError, match="no replacement"):
        render(doc(rewrites=rewrites[:1]), segments(), LABELS, "rewrite", DEFAULT_TEMPLATE, rewriter=ExactRewriter())
    # a span across the boundary of two flagged segments is written where it starts
    crossing = render(doc(rewrites=[{"start": 29, "end": 42, "text": "fine. This"}]), segments(), LABELS,
                      "rewrite", DEFAULT_TEMPLATE, rewriter=ExactRewriter())
    assert [p.text for p in crossing] == ["First  sentence.\n\nSecond one fine. This\tis fine.  "]
    with pytest.raises(DataError, match="outside the text"):
        render(doc(rewrites=[{"start": 30, "end": 400, "text": "x"}]), segments(), LABELS, "rewrite",
               DEFAULT_TEMPLATE, rewriter=ExactRewriter())
    with pytest.raises(DataError, match="'rewrites'.*missing"):
        render(doc(), segments(), LABELS, "rewrite", DEFAULT_TEMPLATE, rewriter=build_rewriter("exact"))


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append((self.path, body, self.headers.get("Authorization")))  # type: ignore[attr-defined]
        if len(self.server.requests) == 1:  # type: ignore[attr-defined]
            self.send_response(503)  # first call fails: the rewriter must retry
            self.end_headers()
            return
        answer = "SAFE(" + body["messages"][-1]["content"] + ")"
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": answer}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


def test_endpoint_rewriter_over_loopback_http():
    server = HTTPServer(("127.0.0.1", 0), _Handler)
    server.requests = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        rewriter = build_rewriter("openai", base_url=f"http://127.0.0.1:{server.server_port}/v1", model="guard",
                                  api_key="k", backoff_s=0.01)
        pieces = render(doc(), segments(), LABELS, "rewrite", DEFAULT_TEMPLATE, rewriter=rewriter)
    finally:
        server.shutdown()
    assert [p.text for p in pieces] == [
        "First  sentence.\n\nSAFE(Second one is bad.) SAFE(Third\tis fine.)  "]
    requests = server.requests  # type: ignore[attr-defined]
    assert len(requests) == 3  # one retried failure + two flagged segments
    path, body, auth = requests[1]
    assert path == "/v1/chat/completions" and auth == "Bearer k" and body["model"] == "guard"
    assert "Violent" in body["messages"][0]["content"]


def test_endpoint_rewriter_unreachable_is_a_data_error():
    rewriter = EndpointRewriter(base_url="http://127.0.0.1:9/v1", model="m", retries=1, backoff_s=0.01, timeout_s=2)
    with pytest.raises(DataError, match="corpus.jsonl:7: rewrite endpoint .* failed"):
        render(doc(), segments(), LABELS, "rewrite", DEFAULT_TEMPLATE, rewriter=rewriter)
