"""Reflection SFT data from chat records: label each turn, render the assistant turns, write JSONL.

Why: the paper's compatible post-training is SFT on Tulu-3 *with reflections*, so a
reflection-pretrained model keeps reflecting in the chat format and refuses by stopping.
This stage turns any chat file (``posttrain/chat.py`` reads it) into that data:

* **labels**, per turn, cut by the same segmenter as pretraining (``data/segment.py``) into
  segments of at most ``reflect_every_words`` words: from a field the record carries
  (``label_field``: a boolean or a verdict; on the message, else on the record for its user
  turns: the oracle route for sets that ship harm labels), from any labeler of
  ``data/labelers`` (``build_labeler``), or from a stored label file (the label_corpus
  contract: ``export_turns`` writes every turn as a document ``<conversation id>#<turn>``,
  ``tools/label_corpus.py`` labels that file, ``labels_path`` reads it back, hashes checked);
* **rendering**, for every assistant turn, with the verdict of the user turn it answers:

  - Safe request: `` <think> Safe </think>`` then the answer, each of its segments followed by
    its own reflection (Safe, or Unsafe and the end of the turn where the answer turns unsafe);
  - Unsafe request: `` <think> Unsafe[: category] </think>`` and the end of the turn (the
    refusal by stopping that the generation monitor expects).  Where the data answers it with a
    refusal (an answer labelled Safe) ``refusal_policy`` decides: ``stop`` (default: the
    monitor ends generation at the reflection anyway, and a stop is what pretraining taught)
    or ``keep`` (the refusal follows the reflection: a fallback for serving without the
    monitor).  An answer that is not known to be Safe is never trained on;
  - recovery, at ``recovery_rate``: the first ``recovery_words`` words of the answer to an
    Unsafe request as untrained context (``untrained`` character spans on the message), then
    Unsafe and the end of the turn: the model learns to stop itself mid-answer;
  - Controversial request: `` <think> Controversial </think>`` then the answer as for Safe.

* **output**: the conversational JSONL of TRL's SFTTrainer (``messages``, reflections inside
  the assistant content; ``untrained`` spans where a message has some, which
  ``posttrain/sft.py`` masks) and a stats JSON (verdict counts, skipped records with file and
  line).  Written in parts, each atomically, with the read position: a killed run resumes
  after its last part, then the parts are merged (temp name, rename).

Cost: the labeler's (oracle: microseconds per turn) plus one segmentation per turn.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from megatron_reflect.data.labelers.base import SEVERITY
from megatron_reflect.data.readers import DEFAULT_MAX_CHARS, ReadPosition, Skipped
from megatron_reflect.data.segment import SegmenterConfig, segment_spans
from megatron_reflect.data.types import Document, Label, Labeler, Segment
from megatron_reflect.errors import ConfigError, DataError
from megatron_reflect.eval.judges.refusal import has_refusal_phrase
from megatron_reflect.files import write_text_atomic
from megatron_reflect.posttrain.chat import Conversation, iter_conversations
from megatron_reflect.reflection import DEFAULT_TEMPLATE, Reflection, ReflectionTemplate, Verdict

REFUSAL_POLICIES = ("stop", "keep")
MAX_LISTED_SKIPS = 1000
REFUSAL_WINDOW = 80  # characters of an answer searched for a refusal phrase (refused_not_unsafe)
_TRUE = {"true", "yes", "1", "harmful", "unsafe"}
_FALSE = {"false", "no", "0", "harmless", "benign", "not harmful", "safe"}


@dataclass
class PrepareConfig:
    reflect_every_words: int = 100  # the segment budget of pretraining (SRP: ~100 words)
    refusal_policy: str = "stop"
    recovery_rate: float = 0.0
    recovery_words: int = 8
    label_field: str | None = None  # oracle route: a boolean or verdict the record / message carries
    labeler: str | None = None  # any name of data.labelers.LABELERS
    labeler_options: dict[str, Any] = field(default_factory=dict)
    labels_path: str | None = None  # stored labels of the exported turns (label_corpus contract)
    id_key: str = "id"
    max_chars: int = DEFAULT_MAX_CHARS
    strict: bool = False
    part_records: int = 5000
    seed: int = 0

    def validate(self) -> None:
        routes = [r for r in (self.label_field, self.labeler, self.labels_path) if r]
        if len(routes) != 1:
            raise ConfigError("prepare_sft needs exactly one label source: --label-field, --labeler or --labels "
                              f"(got {len(routes)})")
        if self.refusal_policy not in REFUSAL_POLICIES:
            raise ConfigError(f"refusal_policy {self.refusal_policy!r}: expected one of {list(REFUSAL_POLICIES)}")
        if not 0.0 <= self.recovery_rate <= 1.0:
            raise ConfigError(f"recovery_rate must be in [0, 1], got {self.recovery_rate}")
        if self.reflect_every_words < 1 or self.recovery_words < 1:
            raise ConfigError("reflect_every_words and recovery_words must be >= 1")

    def settings(self) -> dict[str, Any]:
        """What changes the output: a resumed run must have the same."""
        d = asdict(self)
        for k in ("strict", "part_records"):
            d.pop(k)
        return d


def turn_id(conv: Conversation, index: int) -> str:
    return f"{conv.id}#{index}"


def turn_documents(conv: Conversation) -> list[Document]:
    """Every non-system turn as a Document (its message keys as fields, for the oracle labeler)."""
    return [Document(turn_id(conv, i), m.content, conv.source, conv.line, dict(m.fields))
            for i, m in enumerate(conv.messages) if m.role != "system"]


def parse_label(value: Any) -> Verdict:
    if isinstance(value, bool):
        return Verdict.UNSAFE if value else Verdict.SAFE
    if isinstance(value, int) and value in (0, 1):
        return Verdict.UNSAFE if value else Verdict.SAFE
    if isinstance(value, str):
        t = value.strip().lower()
        if t in _TRUE:
            return Verdict.UNSAFE if t != "safe" else Verdict.SAFE
        if t in _FALSE:
            return Verdict.SAFE
        return Verdict.parse(value)
    raise ValueError(f"not a label: {value!r} (expected a boolean, 0/1 or Safe/Unsafe/Controversial)")


class _Labels:
    """Labels for the turns of conversations: ``turn -> [(segment, label)]`` (None: unlabelled)."""

    def __init__(self, cfg: PrepareConfig, template: ReflectionTemplate) -> None:
        self.cfg, self.template = cfg, template
        self.seg_cfg = SegmenterConfig(max_words=cfg.reflect_every_words)
        self.labeler: Labeler | None = None
        self.stored = None
        if cfg.labeler:
            from megatron_reflect.data.labelers import build_labeler

            self.labeler = build_labeler(cfg.labeler, **cfg.labeler_options)
        if cfg.labels_path:
            from megatron_reflect.data.preprocess import StoredLabelFile

            if not Path(cfg.labels_path).is_file():
                raise DataError(f"{cfg.labels_path}: no such label file (label the turns exported by "
                                "tools/prepare_sft.py --export-turns with tools/label_corpus.py first)")
            self.stored = StoredLabelFile(Path(cfg.labels_path))

    def segments(self, doc: Document) -> list[Segment]:
        return [Segment(doc.doc_id, i, a, b, doc.text[a:b]) for i, (a, b) in
                enumerate(segment_spans(doc.text, self.seg_cfg))]

    def _category(self, fields: dict, verdict: Verdict) -> str | None:
        cat = fields.get("category") if verdict is not Verdict.SAFE else None
        return cat if isinstance(cat, str) and cat in self.template.categories else None

    def label(self, convs: Sequence[Conversation]) -> list[dict[int, list[tuple[Segment, Label]] | None] | str]:
        """Per conversation: message index -> labelled segments (None: no label), or why it is skipped."""
        out: list[dict[int, list[tuple[Segment, Label]] | None] | str] = []
        pending: list[tuple[int, int, Document, list[Segment]]] = []
        for k, conv in enumerate(convs):
            turns: dict[int, list[tuple[Segment, Label]] | None] = {}
            why = None
            for index, msg in enumerate(conv.messages):
                if msg.role == "system":
                    continue
                doc = Document(turn_id(conv, index), msg.content, conv.source, conv.line, dict(msg.fields))
                segs = self.segments(doc)
                if self.cfg.label_field:
                    name = self.cfg.label_field
                    src = msg.fields if name in msg.fields else (conv.fields if msg.role == "user" else None)
                    if src is None or name not in src:
                        turns[index] = [(seg, _UNLABELLED) for seg in segs]
                        if msg.role == "user":
                            why = f"user turn {index} has no label field '{name}' (nor has the record)"
                        continue
                    try:
                        v = parse_label(src[name])
                    except ValueError as e:
                        why = f"field '{name}': {e}"
                        continue
                    lab = Label(v, self._category(src, v))
                    turns[index] = [(s, lab) for s in segs]
                elif self.stored is not None:
                    rows = self.stored.get(doc.doc_id)
                    from megatron_reflect.data.labels import text_hash

                    if rows is None:
                        why = f"no stored label for turn {doc.doc_id!r} in {self.cfg.labels_path}"
                        continue
                    segs = [Segment(doc.doc_id, j, a, b, doc.text[a:b]) for j, (a, b, _, _) in enumerate(rows)]
                    if rows[-1][1] != len(doc.text) or any(h != text_hash(s.text) for (_, _, h, _), s in zip(rows, segs)):
                        why = f"stored labels of turn {doc.doc_id!r} do not match its text (segment hashes differ)"
                        continue
                    turns[index] = [(s, lab) for s, (_, _, _, lab) in zip(segs, rows)]
                else:
                    turns[index] = []
                    pending.append((k, index, doc, segs))
            out.append(why if why else turns)
        if pending:
            assert self.labeler is not None
            docs = {d.doc_id: d for _, _, d, _ in pending}
            flat = [s for _, _, _, segs in pending for s in segs]
            labels = self.labeler.label(flat, docs)
            if len(labels) != len(flat):
                raise DataError(f"labeler {self.labeler.name} returned {len(labels)} labels for {len(flat)} segments")
            it = iter(labels)
            for k, index, _, segs in pending:
                labelled = [(s, next(it)) for s in segs]
                if isinstance(out[k], dict):
                    out[k][index] = labelled  # type: ignore[index]
        return out


_UNLABELLED = Label(Verdict.SAFE, None, float("nan"))  # an answer the label source says nothing about


def _known(answer: list[tuple[Segment, Label]] | None) -> bool:
    return bool(answer) and all(lab is not _UNLABELLED for _, lab in answer)  # type: ignore[union-attr]


def _worst(labels: Iterable[Label]) -> Label:
    best = Label(Verdict.SAFE)
    for lab in labels:
        if SEVERITY[lab.verdict] > SEVERITY[best.verdict]:
            best = lab
    return best


@dataclass
class Rendered:
    content: str
    kind: str  # answer | unsafe_stop | refusal_kept | recovery | answer_stopped
    untrained: tuple[tuple[int, int], ...] = ()


class Renderer:
    """Renders assistant turns in the reflection format of pretraining (``ReflectionTemplate``)."""

    def __init__(self, template: ReflectionTemplate = DEFAULT_TEMPLATE) -> None:
        self.template = template

    def reflection(self, label: Label) -> str:
        cat = label.category if label.verdict is not Verdict.SAFE else None
        return self.template.render(Reflection(label.verdict, cat))[0]

    def answer(self, opening: Label, segments: list[tuple[Segment, Label]]) -> tuple[str, bool]:
        """The opening reflection, then each segment with its own reflection; (text, stopped)."""
        out = self.reflection(opening).rstrip()
        for seg, lab in segments:
            text = seg.text.rstrip()
            if text.strip():
                out += (" " if not out.endswith((" ", "\n")) else "") + text.lstrip(" ")
                out += self.reflection(lab).rstrip()
            if lab.verdict is Verdict.UNSAFE:
                return out, True
        return out, False

    def turn(self, request: Label, answer: list[tuple[Segment, Label]] | None, policy: str,
             recover: int | None) -> Rendered:
        """One assistant turn.  ``answer``: its labelled segments (``_UNLABELLED`` where the label source
        says nothing: Safe after a Safe request, never trained after an Unsafe one); ``recover``: words of
        the answer to keep as untrained context before the Unsafe reflection (None: no recovery)."""
        if request.verdict is Verdict.UNSAFE:
            unsafe = self.reflection(request).rstrip()
            answer_safe = _known(answer) and _worst(lab for _, lab in answer or []).verdict is Verdict.SAFE
            if recover is not None and answer:
                words = "".join(s.text for s, _ in answer).split()[:recover]
                if words:
                    prefix = " ".join(words)
                    return Rendered(prefix + unsafe, "recovery", ((0, len(prefix)),))
            if policy == "keep" and answer_safe:
                body, _ = self.answer(Label(Verdict.SAFE), answer or [])
                kept = body[len(self.reflection(Label(Verdict.SAFE)).rstrip()):]
                return Rendered(unsafe + kept, "refusal_kept")
            return Rendered(unsafe, "unsafe_stop")
        text, stopped = self.answer(request, answer or [])
        return Rendered(text, "answer_stopped" if stopped else "answer")


def render_conversation(conv: Conversation, turns: dict[int, list[tuple[Segment, Label]] | None],
                        renderer: Renderer, cfg: PrepareConfig, stats: Counter[str]) -> dict:
    """The output record of one conversation; counts verdicts and turn kinds into ``stats``."""
    rng = random.Random(int(hashlib.blake2b(f"{cfg.seed}:{conv.id}".encode(), digest_size=8).hexdigest(), 16))
    messages: list[dict[str, Any]] = []
    request = Label(Verdict.SAFE)
    for i, m in enumerate(conv.messages):
        if m.role == "system":
            messages.append({"role": "system", "content": m.content})
            continue
        if m.role == "user":
            request = _worst(lab for _, lab in (turns.get(i) or []))
            stats[f"request_{request.verdict.value}"] += 1
            messages.append({"role": "user", "content": m.content})
            continue
        answer = turns.get(i)
        if request.verdict is not Verdict.UNSAFE and has_refusal_phrase(m.content, REFUSAL_WINDOW):
            # the data refuses a request the labels do not call Unsafe: the refusal is trained as a Safe
            # answer, the sign of a label source that misses harmful requests
            stats["refused_not_unsafe"] += 1
        recover = cfg.recovery_words if (request.verdict is Verdict.UNSAFE and cfg.recovery_rate > 0
                                         and rng.random() < cfg.recovery_rate) else None
        r = renderer.turn(request, answer, cfg.refusal_policy, recover)
        stats[f"turn_{r.kind}"] += 1
        for refl in renderer.template.parse(r.content):
            stats[f"reflection_{refl.verdict.value}"] += 1
        msg: dict[str, Any] = {"role": "assistant", "content": r.content}
        if r.untrained:
            msg["untrained"] = [list(s) for s in r.untrained]
        messages.append(msg)
    return {"id": conv.id, "messages": messages, "source": f"{conv.source}:{conv.line}"}


# ---------------------------------------------------------------- writing (parts, resume, merge)

def stats_path_for(output: str | Path) -> Path:
    return Path(str(output) + ".stats.json")


def prepare_file(input_path: str | Path, output_path: str | Path, cfg: PrepareConfig,
                 template: ReflectionTemplate = DEFAULT_TEMPLATE, resume: bool = True) -> dict:
    """Turn one chat file into reflection SFT JSONL (+ ``<output>.stats.json``); return the stats."""
    cfg.validate()
    input_path, output_path = Path(input_path), Path(output_path)
    stats_file = stats_path_for(output_path)
    if resume and output_path.is_file() and stats_file.is_file():
        return {**json.loads(stats_file.read_text()), "status": "already complete"}
    settings = {"config": cfg.settings(), "template": asdict(template), "input": input_path.name}
    settings["template"]["categories"] = list(settings["template"]["categories"])
    parts = output_path.with_name(output_path.name + ".parts")
    if not resume and parts.exists():
        shutil.rmtree(parts)
    parts.mkdir(parents=True, exist_ok=True)
    done = sorted(parts.glob("part-*.json"))
    position = ReadPosition()
    for meta in done:
        m = json.loads(meta.read_text())
        if m["settings"] != settings:
            raise DataError(f"{meta}: left by a run with other settings; delete {parts} or rerun without resume")
        position = ReadPosition(*m["position"])
    labels = _Labels(cfg, template)
    renderer = Renderer(template)
    t0 = time.perf_counter()
    n_part = len(done)

    batch: list[Conversation] = []
    stats: Counter[str] = Counter()
    skipped: list[dict] = []
    rows: list[str] = []
    seen: set[str] = set()

    def flush_batch() -> None:
        nonlocal batch
        for conv, turns in zip(batch, labels.label(batch)):
            if isinstance(turns, str):
                note(Skipped(conv.source, conv.line, turns))
                continue
            rows.append(json.dumps(render_conversation(conv, turns, renderer, cfg, stats), ensure_ascii=False))
            stats["conversations"] += 1
        batch = []

    def note(item: Skipped) -> None:
        if cfg.strict:
            raise item.error()
        stats["skipped"] += 1
        if len(skipped) < MAX_LISTED_SKIPS:
            skipped.append(asdict(item))

    def flush_part(pos: ReadPosition) -> None:
        nonlocal rows, stats, skipped, n_part
        flush_batch()
        name = f"part-{n_part:05d}"
        write_text_atomic(parts / f"{name}.jsonl", "".join(r + "\n" for r in rows))
        write_text_atomic(parts / f"{name}.json", json.dumps({"settings": settings, "position": list(pos),
                                                              "stats": dict(stats), "skipped": skipped}))
        n_part += 1
        rows, stats, skipped = [], Counter(), []

    pos = position
    since = 0
    # ids seen in earlier parts (duplicates are skipped across the whole file)
    for meta in done:
        seen.update(json.loads(line)["id"] for line in (parts / (meta.stem + ".jsonl")).read_text().splitlines())
    for item, pos in iter_conversations(input_path, cfg.id_key, cfg.max_chars, position):
        since += 1
        if isinstance(item, Skipped):
            note(item)
        elif item.id in seen:
            note(Skipped(item.source, item.line, f"duplicate conversation id: '{item.id}'"))
        else:
            seen.add(item.id)
            batch.append(item)
            if len(batch) >= 64:
                flush_batch()
        if since >= cfg.part_records:
            flush_part(pos)
            since = 0
    if since or batch or not list(parts.glob("part-*.json")):
        flush_part(pos)

    total: Counter[str] = Counter()
    listed: list[dict] = []
    tmp = output_path.with_name(f".{output_path.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as out:
        for meta in sorted(parts.glob("part-*.json")):
            m = json.loads(meta.read_text())
            total.update(m["stats"])
            listed += m["skipped"][:MAX_LISTED_SKIPS - len(listed)]
            out.write((parts / (meta.stem + ".jsonl")).read_text(encoding="utf-8"))
    os.replace(tmp, output_path)
    seconds = time.perf_counter() - t0
    result = {"input": str(input_path), "output": str(output_path), "status": "prepared",
              "conversations": total.pop("conversations", 0), "skipped": total.pop("skipped", 0),
              "requests": {k.removeprefix("request_"): v for k, v in sorted(total.items()) if k.startswith("request_")},
              "assistant_turns": {k.removeprefix("turn_"): v for k, v in sorted(total.items()) if k.startswith("turn_")},
              "reflections": {k.removeprefix("reflection_"): v for k, v in sorted(total.items())
                              if k.startswith("reflection_")},
              "refused_not_unsafe": total.pop("refused_not_unsafe", 0),
              "skipped_records": listed, "settings": settings["config"], "seconds": round(seconds, 3)}
    write_text_atomic(stats_file, json.dumps(result, indent=1))
    shutil.rmtree(parts)
    return result


def export_turns(input_path: str | Path, output_path: str | Path, id_key: str = "id",
                 max_chars: int = DEFAULT_MAX_CHARS) -> dict:
    """Write every user and assistant turn as ``{"id": "<conversation>#<turn>", "text": ...}`` JSONL
    (atomically): the input of ``tools/label_corpus.py`` whose label file ``--labels`` reads back."""
    output_path = Path(output_path)
    tmp = output_path.with_name(f".{output_path.name}.tmp-{os.getpid()}")
    n, skipped = 0, 0
    with tmp.open("w", encoding="utf-8") as out:
        for item, _ in iter_conversations(input_path, id_key, max_chars):
            if isinstance(item, Skipped):
                skipped += 1
                continue
            for doc in turn_documents(item):
                out.write(json.dumps({"id": doc.doc_id, "text": doc.text}, ensure_ascii=False) + "\n")
                n += 1
    os.replace(tmp, output_path)
    return {"turns": n, "skipped": skipped, "output": str(output_path)}
