"""Label segments with a guard model behind an OpenAI-compatible ``/v1/chat/completions``
endpoint (e.g. vLLM serving Qwen3Guard-Gen), parsing its "Safety: ... Categories: ..." answer.

WHY: at corpus scale the guard runs on GPU servers; this client keeps them busy
(``concurrency`` requests in flight from a thread pool), survives transient failures
(retries with exponential backoff on connection errors, timeouts, 408/429/5xx), and
never asks twice: each answer is committed to an sqlite cache keyed by (model, segment
text hash) as soon as it arrives, before its thread sends another request, so a run
killed at any moment (even by SIGKILL) resumes without re-asking anything that was
answered (WAL journal, ``synchronous=NORMAL``: an OS crash may lose the last answers,
a killed process does not).  An
endpoint still failing after the retries raises ``LabelerError`` naming the URL; the
label store keeps the finished parts, so the rerun continues where it stopped.
Each segment is sent as the user message: Qwen3Guard-Gen's chat template adds its
policy itself.  For a general chat model, set ``instruction`` (see ``GUARD_INSTRUCTION``).
"""

from __future__ import annotations

import http.client
import json
import os
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from megatron_reflect.data.labelers.base import LabelerError
from megatron_reflect.data.labelers.qwen3guard import label_or_fallback
from megatron_reflect.data.labels import text_hash
from megatron_reflect.data.types import Document, Label, Segment
from megatron_reflect.reflection import QWEN3GUARD_CATEGORIES, Verdict

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})

GUARD_INSTRUCTION = (
    "You are a content safety classifier. Classify the text between <text> and </text>.\n"
    "<text>\n{text}\n</text>\n"
    "Answer with exactly two lines:\nSafety: Safe or Unsafe or Controversial\n"
    "Categories: one of " + ", ".join(QWEN3GUARD_CATEGORIES) + ", or None"
)


@dataclass
class OpenAIConfig:
    endpoint: str
    model: str = "Qwen/Qwen3Guard-Gen-0.6B"
    concurrency: int = 8
    timeout_s: float = 60.0
    max_retries: int = 5
    backoff_s: float = 1.0  # first retry waits this long, then doubles
    cache_path: str | None = None  # sqlite file; None: no cache
    api_key: str | None = None  # default: $OPENAI_API_KEY
    max_tokens: int = 32
    instruction: str | None = None  # "{text}" template; None sends the segment as is
    fallback: str = "Controversial"  # verdict for an unparseable answer (counted in stats)


class _Cache:
    """sqlite (model, hash) -> answer; one connection shared by the request threads under a lock."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, check_same_thread=False)
        self.lock = threading.Lock()
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS answers (model TEXT, hash TEXT, answer TEXT, "
                        "PRIMARY KEY (model, hash))")
        self.db.commit()

    def get(self, model: str, hashes: Sequence[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        with self.lock:
            for i in range(0, len(hashes), 500):
                chunk = list(hashes[i:i + 500])
                q = f"SELECT hash, answer FROM answers WHERE model = ? AND hash IN ({','.join('?' * len(chunk))})"
                out.update(self.db.execute(q, [model, *chunk]).fetchall())
        return out

    def put(self, model: str, answers: dict[str, str]) -> None:
        with self.lock:
            self.db.executemany("INSERT OR REPLACE INTO answers VALUES (?, ?, ?)",
                                [(model, h, a) for h, a in answers.items()])
            self.db.commit()


class OpenAILabeler:
    name = "openai"

    def __init__(self, cfg: OpenAIConfig) -> None:
        base = cfg.endpoint.rstrip("/")
        if not base.startswith(("http://", "https://")):
            raise LabelerError(f"openai labeler: endpoint {cfg.endpoint!r} is not an http(s) URL")
        self.url = base + ("/chat/completions" if base.endswith("/v1") else "/v1/chat/completions")
        self.cfg = cfg
        self.fallback = Verdict.parse(cfg.fallback)
        self.api_key = cfg.api_key or os.environ.get("OPENAI_API_KEY")
        self.cache = _Cache(Path(cfg.cache_path)) if cfg.cache_path else None
        self.stats: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _count(self, key: str) -> None:
        with self._lock:
            self.stats[key] += 1

    def _ask(self, text: str) -> str:
        content = self.cfg.instruction.format(text=text) if self.cfg.instruction else text
        body = json.dumps({"model": self.cfg.model, "messages": [{"role": "user", "content": content}],
                           "temperature": 0.0, "max_tokens": self.cfg.max_tokens}).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = ""
        for attempt in range(self.cfg.max_retries + 1):
            if attempt:
                self._count("retries")
                time.sleep(self.cfg.backoff_s * 2 ** (attempt - 1))
            self._count("requests")
            try:
                req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.cfg.timeout_s) as resp:
                    payload = json.loads(resp.read().decode("utf-8"))
                return str(payload["choices"][0]["message"]["content"])
            except urllib.error.HTTPError as e:
                detail = e.read()[:200].decode("utf-8", "replace")
                if e.code not in RETRYABLE_STATUS:
                    raise LabelerError(f"{self.url}: HTTP {e.code}: {detail}") from e
                last = f"HTTP {e.code}"
            except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as e:
                last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            except (ValueError, KeyError, IndexError, TypeError) as e:
                raise LabelerError(f"{self.url}: not an OpenAI chat completion response ({e})") from e
        raise LabelerError(f"{self.url}: no answer after {self.cfg.max_retries + 1} attempts (last: {last})")

    def _ask_and_keep(self, h: str, text: str) -> str:
        """One request; its answer is committed before this thread asks anything else."""
        answer = self._ask(text)
        if self.cache:
            self.cache.put(self.cfg.model, {h: answer})
        return answer

    def label(self, segments: Sequence[Segment], documents: dict[str, Document]) -> list[Label]:
        hashes = [text_hash(s.text) for s in segments]
        answers = self.cache.get(self.cfg.model, hashes) if self.cache else {}
        self.stats["cache_hits"] += sum(1 for h in hashes if h in answers)
        todo = {h: s.text for h, s in zip(hashes, segments) if h not in answers}
        if todo:
            fresh: dict[str, str] = {}
            error: LabelerError | None = None
            with ThreadPoolExecutor(max_workers=max(1, self.cfg.concurrency)) as pool:
                futures = {pool.submit(self._ask_and_keep, h, text): h for h, text in todo.items()}
                for fut in as_completed(futures):
                    try:
                        fresh[futures[fut]] = fut.result()
                    except LabelerError as e:
                        error = error or e
            if error is not None:
                raise error  # the answers that did arrive are in the cache already
            answers.update(fresh)
        return [label_or_fallback(answers[h], self.fallback, self.stats) for h in hashes]
