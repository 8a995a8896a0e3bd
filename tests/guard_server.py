"""A real OpenAI-compatible guard server for tests: stdlib http.server on 127.0.0.1.

It answers /v1/chat/completions in Qwen3Guard-Gen's "Safety: ...\\nCategories: ..." format
using the project's real classifier labeler, counts requests, and can inject faults:
500s for the first ``fail_first`` requests, a stall longer than the client timeout for the
first ``slow_first``, 500s for every request after ``fail_after``, or unparseable answers.
``hold_after=N`` answers N requests and holds every later one unanswered until
``release()`` (a known point at which a test can kill its client); ``requested`` counts
the requests per message content, ``answered`` and ``contents`` the answers.
``teacher`` (text -> Label) replaces the classifier as the guard's policy (the distillation
test uses a guard whose policy differs from the packaged classifier's).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from typing import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from megatron_reflect.data.labelers.classifier import ClassifierLabeler
from megatron_reflect.data.labelers.qwen3guard import format_guard_answer
from megatron_reflect.data.types import Label


class GuardServer:
    def __init__(self, fail_first: int = 0, slow_first: int = 0, slow_s: float = 1.0, fail_after: int | None = None,
                 garbage: bool = False, hold_after: int | None = None,
                 teacher: Callable[[str], Label] | None = None) -> None:
        if teacher is None:
            classifier = ClassifierLabeler()
            teacher = lambda text: classifier.predict([text])[0]  # noqa: E731
        self.teacher = teacher
        self.hold_after = hold_after
        self.held = threading.Event()  # set: no request is held any more
        self.requested: Counter[str] = Counter()
        self.fail_first, self.slow_first, self.slow_s = fail_first, slow_first, slow_s
        self.fail_after, self.garbage = fail_after, garbage
        self.requests = 0
        self.answered = 0
        self.contents: list[str] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests += 1
                    n = server.requests
                    server.requested[body["messages"][-1]["content"]] += 1
                if server.hold_after is not None and n > server.hold_after:
                    server.held.wait()
                    return  # the client was killed meanwhile: nothing to answer
                if self.path != "/v1/chat/completions":
                    self.send_error(404, "no such route")
                    return
                if n <= server.fail_first or (server.fail_after is not None and n > server.fail_after):
                    self.send_error(500, "injected failure")
                    return
                if n <= server.fail_first + server.slow_first:
                    time.sleep(server.slow_s)
                content = body["messages"][-1]["content"]
                answer = "I am not sure." if server.garbage else format_guard_answer(
                    server.teacher(content))
                with server.lock:
                    server.answered += 1
                    server.contents.append(content)
                data = json.dumps({"object": "chat.completion", "model": body["model"], "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}]}).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def release(self) -> None:
        """Stop holding requests (the held ones end without an answer)."""
        self.hold_after = None
        self.held.set()

    def __enter__(self) -> "GuardServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
        self.httpd.shutdown()
        self.httpd.server_close()
