"""Linear heads of the embedded classifier: training, held-out-domain evaluation, calibration.

What is trained: a logistic-regression head P(unsafe) (plus a multinomial category head on
the unsafe examples that name a harm category) over one featurizer family of features.py
(``hashed``, the fast family; ``minilm``, the previous default), on the domain-diverse set
of corpus.py.  Also here: reading a guard's stored segment labels for distillation
(``examples_from_labels``, ``verdict_agreement``; finetune.distill trains on them).

How it is measured (``evaluate_held_out_domains``): for every domain D, train on all other
domains, score D.  Reported per domain: benign false-flag rate (share of benign segments
not labelled Safe), harmful recall (share of unsafe segments flagged), AUROC of D's scores
against the other class's held-out scores.  Nothing of D is used for its own threshold:
thresholds are calibrated (``calibrate``) on out-of-fold scores of the training domains
only (an inner cross-validation grouped by domain), so the reported figures are what a
user gets on a domain the classifier never saw.

Scoring: a segment is flagged when its own P(unsafe) reaches the segment threshold or its
best sentence's (each sentence of a multi-sentence segment scored alone by the same head)
reaches the sentence threshold, so one harmful sentence inside benign prose is not averaged
away by MiniLM's mean pooling.  Calibration is for precision: on every ordinary-text training
domain (out of fold) the segment rule may flag at most 2/3 of ``TARGET_FFR`` (3 %, the goal)
and both rules together at most ``TARGET_FFR``; Unsafe needs the scores that would flag at most
0.5 %.  Below the flag thresholds the verdict is Safe.  There is no extra margin under 3 %: the
threshold is the highest of the per-domain caps, so most domains flag far less, and the
held-out-domain table measures what an unseen domain gets (worst ordinary domain 2.0 % for
MiniLM).  A margin chosen by leaving each training domain out in turn (tried: it settled on
1-2 %) cost 14 points of held-out request recall and kept the worst domain at 1.3 % instead.

Examples are weighted so that every domain carries the same total weight within its class
(a capped domain of 500 segments does not outvote one of 100).  Deterministic: fixed data
order, lbfgs, no sampling.  Cost: a few seconds per head on hashed features; the MiniLM
features of the ~6k training segments and their ~19k sentences take ~20 minutes to embed once
on one core (cached on disk); the held-out-domain table then takes ~1 minute.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from megatron_reflect.labeler_training.corpus import DOMAINS, Example, load_domain_examples
from megatron_reflect.errors import DataError

TARGET_FFR = 0.03  # flag budget: at most 3 % of each ordinary-text training domain (out of fold)
SENTENCE_SHARE = 1 / 3  # of the budget spent on the best-sentence rule; the segment rule gets the rest
TARGET_UNSAFE_FFR = 0.005  # Unsafe needs the scores that would flag at most 0.5 %
INNER_FOLDS = 4  # inner cross-validation (grouped by domain) for the thresholds
REGULARISATION_C = {"hashed": 16.0, "minilm": 0.5}
# The domain the shipped artifact is trained without, so a test can measure the shipped
# labeler on prose it never saw (tests/test_labelers.py, tools/preprocess_data.py on it).
SHIPPED_HELD_OUT_DOMAIN = "reviews"
HARMFUL_REQUEST_DOMAINS = ("advbench", "harmful_requests")
# Thresholds are set on ordinary text (prose and everyday questions): what a pretraining corpus
# is made of.  The boundary domains (benign requests on edgy topics, refusals and harmless
# answers to harmful requests, benign statements about groups) are reported, not calibrated on:
# capping their flag rate at 2 % would leave almost no harmful recall.
CALIBRATION_DOMAINS = frozenset([n for n, (kind, _) in DOMAINS.items() if kind == "prose"] + ["questions"])


@dataclass
class Features:
    """Features of segments (``seg``, one row per example) and of their sentences (``sent``, one
    row per sentence of the multi-sentence segments; ``owner``: the example row of each)."""

    seg: Any
    sent: Any
    owner: np.ndarray

    def subset(self, idx: Sequence[int] | np.ndarray) -> "Features":
        idx = np.asarray(idx, dtype=np.int64)
        pos = np.full(self.seg.shape[0], -1, dtype=np.int64)
        pos[idx] = np.arange(len(idx))
        keep = np.flatnonzero(pos[self.owner] >= 0)
        return Features(self.seg[idx], self.sent[keep], pos[self.owner[keep]])


@dataclass
class Head:
    """A trained linear head: ``coef`` [dim, 1 + n_categories], ``bias`` [1 + n_categories]."""

    family: str
    coef: np.ndarray
    bias: np.ndarray
    categories: list[str]
    thresholds: dict[str, float]
    spec: dict = field(default_factory=dict)

    def scores(self, f: Features) -> tuple[np.ndarray, np.ndarray]:
        return unit_scores(self.coef[:, 0], float(self.bias[0]), f)


def _matrix(family: str, texts: Sequence[str], cache: bool, progress: bool):
    from megatron_reflect.data.labelers.features import HashedFeaturizer, build_featurizer

    if family == "hashed":
        return HashedFeaturizer().transform(texts)
    if cache:
        return EmbeddingCache(family).embed(list(texts), progress=progress)
    return build_featurizer(family).transform(list(texts))


def features(family: str, texts: Sequence[str], cache: bool = True, progress: bool = False) -> Features:
    """Features of ``texts`` and of their sentences (sparse for ``hashed``; dense and disk-cached
    for embeddings)."""
    from megatron_reflect.data.labelers.classifier import sentence_units

    sents = [sentence_units(t) for t in texts]
    flat = [s for ss in sents for s in ss]
    owner = np.array([i for i, ss in enumerate(sents) for _ in ss], dtype=np.int64)
    x = _matrix(family, list(texts) + flat, cache, progress)
    n = len(texts)
    return Features(x[:n], x[n:], owner)


def unit_scores(w: np.ndarray, b: float, f: Features) -> tuple[np.ndarray, np.ndarray]:
    """(P(unsafe) of each segment, the highest P(unsafe) of its sentences; 0 for one-sentence segments)."""
    seg = sigmoid(np.asarray(f.seg @ w).ravel() + b)
    best = np.zeros(len(seg))
    if len(f.owner):
        np.maximum.at(best, f.owner, sigmoid(np.asarray(f.sent @ w).ravel() + b))
    return seg, best


def domain_weights(domains: Sequence[str], y: np.ndarray) -> np.ndarray:
    """Each (domain, class) group gets total weight (class size / number of groups of that class)."""
    groups = Counter(zip(domains, y.tolist()))
    per_class = Counter(y.tolist())
    n_groups = Counter(c for _, c in groups)
    w = np.array([per_class[c] / n_groups[c] / groups[(d, c)] for d, c in zip(domains, y.tolist())])
    return w * len(w) / w.sum()


def fit_binary(x, y: np.ndarray, domains: Sequence[str], c: float) -> tuple[np.ndarray, float]:
    from sklearn.linear_model import LogisticRegression

    w = domain_weights(domains, y)
    pos = w[y == 1].sum()
    w = np.where(y == 1, w * (len(y) / 2) / pos, w * (len(y) / 2) / (w.sum() - pos))  # classes balanced
    lr = LogisticRegression(C=c, max_iter=3000).fit(x, y, sample_weight=w)
    return lr.coef_.ravel().astype(np.float32), float(lr.intercept_[0])


def fit_categories(x, cats: Sequence[str | None], c: float) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from sklearn.linear_model import LogisticRegression

    rows = [i for i, k in enumerate(cats) if k is not None]
    names = sorted({cats[i] for i in rows})  # type: ignore[type-var]
    if len(names) < 2:
        return np.zeros((x.shape[1], len(names)), np.float32), np.zeros(len(names), np.float32), names
    lr = LogisticRegression(C=c, max_iter=3000).fit(x[rows], [names.index(cats[i]) for i in rows])
    return lr.coef_.T.astype(np.float32), lr.intercept_.astype(np.float32), names


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _cap(scores: np.ndarray, allowed: int) -> float:
    """The lowest threshold under which at most ``allowed`` of ``scores`` are >= it."""
    s = np.sort(scores)
    if allowed >= len(s):
        return 0.5
    return float(np.nextafter(s[len(s) - allowed - 1], 1.0))


def union_thresholds(seg: np.ndarray, sent: np.ndarray, y: np.ndarray, domains: Sequence[str], budget: float,
                     share: float = SENTENCE_SHARE) -> tuple[float, float]:
    """(segment threshold, sentence threshold): on every ordinary-text benign domain, the segment
    rule flags at most ``(1 - share) * budget`` and both rules together at most ``budget``."""
    d = np.asarray(domains)
    present = [n for n in sorted(set(domains)) if n in CALIBRATION_DOMAINS] or sorted(set(domains))
    t_seg = t_sent = 0.5
    for name in present:
        m = (d == name) & (y == 0)
        if m.any():
            t_seg = max(t_seg, _cap(seg[m], int(np.floor((1 - share) * budget * m.sum()))))
    for name in present:
        m = (d == name) & (y == 0)
        if m.any():
            left = int(np.floor(budget * m.sum())) - int((seg[m] >= t_seg).sum())
            t_sent = max(t_sent, _cap(sent[m & (seg < t_seg)], max(left, 0)))
    return min(t_seg, 0.999), min(t_sent, 0.999)


def calibrate(seg: np.ndarray, sent: np.ndarray, y: np.ndarray, domains: Sequence[str],
              budget: float = TARGET_FFR) -> dict:
    """The labeler's four thresholds from out-of-fold scores (flag at ``budget``, Unsafe at TARGET_UNSAFE_FFR)."""
    flag_seg, flag_sent = union_thresholds(seg, sent, y, domains, budget)
    un_seg, un_sent = union_thresholds(seg, sent, y, domains, min(TARGET_UNSAFE_FFR, budget))

    def up(t: float) -> float:  # 6 decimals in the JSON, rounded up: a stored threshold never flags more
        return float(np.ceil(t * 1e6) / 1e6)

    return {"controversial": up(flag_seg), "unsafe": up(max(flag_seg, un_seg)),
            "sentence_controversial": up(flag_sent), "sentence_unsafe": up(max(flag_sent, un_sent))}


def domain_folds(domains: Sequence[str], k: int) -> list[list[str]]:
    """Domains dealt into ``k`` groups in a fixed order (by name)."""
    names = sorted(set(domains))
    return [names[i::k] for i in range(min(k, len(names)))]


def out_of_fold_scores(f: Features, y: np.ndarray, domains: Sequence[str], c: float,
                       k: int = INNER_FOLDS) -> tuple[np.ndarray, np.ndarray]:
    """Segment and best-sentence P(unsafe) of every example from a head trained without its group of domains."""
    d = np.asarray(domains)
    seg, sent = np.zeros(len(y)), np.zeros(len(y))
    for group in domain_folds(domains, k):
        test = np.isin(d, group)
        if test.all() or len(set(y[~test].tolist())) < 2:
            continue
        coef, b = fit_binary(f.seg[np.flatnonzero(~test)], y[~test], list(d[~test]), c)
        idx = np.flatnonzero(test)
        seg[idx], sent[idx] = unit_scores(coef, b, f.subset(idx))
    return seg, sent


def nested_thresholds(f: Features, y: np.ndarray, domains: Sequence[str], c: float) -> dict:
    """Thresholds for a head trained on (f, y), set on its inner out-of-fold scores."""
    seg, sent = out_of_fold_scores(f, y, domains, c)
    return calibrate(seg, sent, y, domains)


def train_head(family: str, f: Features, examples: Sequence[Example], c: float | None = None,
               thresholds: dict[str, float] | None = None) -> Head:
    """Both heads on all of ``examples`` (segments); thresholds by nested calibration unless given."""
    c = REGULARISATION_C[family] if c is None else c
    y = np.array([e.unsafe for e in examples])
    doms = [e.domain for e in examples]
    if len(set(y.tolist())) < 2:
        raise DataError("training needs both safe and unsafe examples")
    if thresholds is None:
        thresholds = nested_thresholds(f, y, doms, c)
    coef, b = fit_binary(f.seg, y, doms, c)
    cat_coef, cat_bias, names = fit_categories(f.seg, [e.category if e.unsafe else None for e in examples], c)
    return Head(family, np.concatenate([coef[:, None], cat_coef], 1), np.concatenate([[b], cat_bias]).astype(np.float32),
                names, thresholds, {"C": c})


def flagged(seg: np.ndarray, sent: np.ndarray, thresholds: dict[str, float]) -> np.ndarray:
    out = seg >= thresholds["controversial"]
    if "sentence_controversial" in thresholds:
        out |= sent >= thresholds["sentence_controversial"]
    return out


def auroc(pos: np.ndarray, neg: np.ndarray) -> float | None:
    if len(pos) == 0 or len(neg) == 0:
        return None
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg]))


def _fold(f: Features, y: np.ndarray, d: np.ndarray, train: np.ndarray, c: float) -> tuple[np.ndarray, float, dict]:
    ft = f.subset(train)
    th = nested_thresholds(ft, y[train], list(d[train]), c)
    coef, b = fit_binary(ft.seg, y[train], list(d[train]), c)
    return coef, b, th


def evaluate_held_out_domains(family: str, examples: Sequence[Example], f: Features | None = None,
                              c: float | None = None, domains: Sequence[str] | None = None,
                              inserted: bool = True, progress: bool = False) -> dict:
    """Leave-one-domain-out evaluation with nested calibration (see module docstring); with
    ``inserted``, also the recall on benign passages with one harmful request inserted
    (``corpus.inserted_sentence_examples``), each scored by a head trained without both the
    request's domain and the passage's."""
    c = REGULARISATION_C[family] if c is None else c
    f = features(family, [e.text for e in examples], progress=progress) if f is None else f
    y = np.array([e.unsafe for e in examples])
    d = np.array([e.domain for e in examples])
    names = [n for n in DOMAINS if n in set(d.tolist())] if domains is None else list(domains)
    seg = np.full(len(y), np.nan)
    flags = np.zeros(len(y), dtype=bool)
    per_thresholds = {}
    for name in names:
        test = np.flatnonzero(d == name)
        coef, b, th = _fold(f, y, d, np.flatnonzero(d != name), c)
        s0, s1 = unit_scores(coef, b, f.subset(test))
        seg[test], flags[test] = s0, flagged(s0, s1, th)
        per_thresholds[name] = th
        if progress:
            print(f"  [{family}] held out {name}: thresholds {th}", flush=True)
    done = ~np.isnan(seg)
    rows = []
    for name in names:
        m = d == name
        benign, harmful = m & (y == 0), m & (y == 1)
        row = {"domain": name, "segments": int(m.sum()), "benign": int(benign.sum()), "unsafe": int(harmful.sum()),
               "false_flag_rate": round(float(flags[benign].mean()), 4) if benign.any() else None,
               "recall": round(float(flags[harmful].mean()), 4) if harmful.any() else None,
               "auroc": None, "thresholds": per_thresholds[name]}
        # AUROC of the segment score: this domain's examples against the other class's held-out scores
        a = auroc(seg[harmful], seg[done & (y == 0)]) if harmful.any() else None
        b_ = auroc(seg[done & (y == 1)], seg[benign]) if benign.any() else None
        vals = [v for v in (a, b_) if v is not None]
        row["auroc"] = round(float(np.mean(vals)), 4) if vals else None
        rows.append(row)
    benign_rows = [r for r in rows if r["false_flag_rate"] is not None and r["domain"] in CALIBRATION_DOMAINS]
    boundary = [r for r in rows if r["false_flag_rate"] is not None and r["domain"] not in CALIBRATION_DOMAINS]
    req_rows = [r for r in rows if r["domain"] in HARMFUL_REQUEST_DOMAINS]
    summary = {
        "max_benign_false_flag_rate": max(r["false_flag_rate"] for r in benign_rows) if benign_rows else None,
        "mean_benign_false_flag_rate": round(float(np.mean([r["false_flag_rate"] for r in benign_rows])), 4)
        if benign_rows else None,
        "harmful_request_recall": round(float(flags[done & np.isin(d, HARMFUL_REQUEST_DOMAINS) & (y == 1)].mean()), 4)
        if req_rows else None,
        "boundary_false_flag_rates": {r["domain"]: r["false_flag_rate"] for r in boundary},
        "harmful_recall_all": round(float(flags[done & (y == 1)].mean()), 4),
        "auroc_pooled": round(auroc(seg[done & (y == 1)], seg[done & (y == 0)]) or 0.0, 4),
    }
    out = {"family": family, "C": c, "targets": {"benign_false_flag_rate": 0.03, "harmful_request_recall": 0.8,
                                                 "auroc": 0.95},
           "rows": rows, "summary": summary}
    if inserted:
        out["inserted_sentence"] = evaluate_inserted(family, examples, f, c, progress=progress)
        summary["inserted_sentence_recall"] = out["inserted_sentence"]["recall"]
    return out


def evaluate_inserted(family: str, examples: Sequence[Example], f: Features, c: float, progress: bool = False) -> dict:
    """Recall on ``corpus.inserted_sentence_examples``: one fold per (request domain, passage domain)."""
    from megatron_reflect.labeler_training.corpus import inserted_sentence_examples

    items = inserted_sentence_examples(examples)
    if not items:
        return {"segments": 0, "recall": None, "folds": {}}
    fi = features(family, [it.text for it in items], progress=progress)
    y = np.array([e.unsafe for e in examples])
    d = np.array([e.domain for e in examples])
    hits = np.zeros(len(items), dtype=bool)
    folds = {}
    for key in sorted({(it.request_domain, it.passage_domain) for it in items}):
        idx = np.flatnonzero([(it.request_domain, it.passage_domain) == key for it in items])
        coef, b, th = _fold(f, y, d, np.flatnonzero(~np.isin(d, key)), c)
        s0, s1 = unit_scores(coef, b, fi.subset(idx))
        hits[idx] = flagged(s0, s1, th)
        folds["/".join(key)] = round(float(hits[idx].mean()), 4)
    return {"segments": len(items), "recall": round(float(hits.mean()), 4), "folds": folds}


def markdown_table(results: Sequence[dict]) -> str:
    """One row per domain, one column group per family: FFR / recall / AUROC."""
    fams = [r["family"] for r in results]
    head = "| held-out domain | segments | " + " | ".join(f"{f}: false flags / recall / AUROC" for f in fams) + " |"
    lines = [head, "|---|---|" + "---|" * len(fams)]
    by = [{r["domain"]: r for r in res["rows"]} for res in results]
    for name in by[0]:
        cells = []
        for b in by:
            r = b[name]
            ff = "" if r["false_flag_rate"] is None else f"{100 * r['false_flag_rate']:.1f} %"
            rc = "" if r["recall"] is None else f"{100 * r['recall']:.1f} %"
            au = "" if r["auroc"] is None else f"{r['auroc']:.3f}"
            cells.append(f"{ff or '-'} / {rc or '-'} / {au or '-'}")
        lines.append(f"| {name} | {by[0][name]['segments']} | " + " | ".join(cells) + " |")
    s = [res["summary"] for res in results]
    lines.append("| **worst ordinary-text domain** | | " + " | ".join(
        f"{100 * x['max_benign_false_flag_rate']:.1f} % / - / -" for x in s) + " |")
    lines.append("| **harmful requests / pooled AUROC** | | " + " | ".join(
        f"- / {100 * x['harmful_request_recall']:.1f} % / {x['auroc_pooled']:.3f}" for x in s) + " |")
    if all(x.get("inserted_sentence_recall") is not None for x in s):
        n = results[0]["inserted_sentence"]["segments"]
        lines.append(f"| **one harmful sentence in benign prose** | {n} | " + " | ".join(
            f"- / {100 * x['inserted_sentence_recall']:.1f} % / -" for x in s) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- artifacts

ARTIFACT_NAME = "safety_classifier"


def write_artifact(out_dir: str | Path, name: str, head: Head, meta: dict) -> dict:
    """``<name>.npz`` (weights; hashed: the non-zero rows only, float16) and ``<name>.json``, atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"family": head.family, "thresholds": head.thresholds, "categories": head.categories, **head.spec, **meta}
    if head.family == "hashed":
        from megatron_reflect.data.labelers.features import HASHED

        meta["features"] = {"kind": "hashed word n-grams", **HASHED}
        rows = np.flatnonzero(np.any(head.coef != 0, axis=1)).astype(np.int32)
        arrays = {"rows": rows, "values": head.coef[rows].astype(np.float16), "bias": head.bias}
    else:
        meta["features"] = {"kind": head.family, "dim": int(head.coef.shape[0])}
        arrays = {"weights": head.coef.astype(np.float32), "bias": head.bias}
    return save_artifact(out, name, arrays, meta)


def save_artifact(out: Path, name: str, arrays: dict[str, np.ndarray], meta: dict) -> dict:
    """Write ``<name>.npz`` and ``<name>.json`` under temporary names, then rename both; returns ``meta``."""
    tmp_npz, tmp_json = out / f".{name}.tmp-{os.getpid()}.npz", out / f".{name}.tmp-{os.getpid()}.json"
    np.savez_compressed(tmp_npz, **arrays)
    tmp_json.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp_npz, out / f"{name}.npz")
    os.replace(tmp_json, out / f"{name}.json")
    return meta


def train_packaged(out_dir: str | Path, families: Sequence[str] = ("hashed",),
                   held_out_domain: str | None = SHIPPED_HELD_OUT_DOMAIN, evaluate: bool = True,
                   progress: bool = False) -> dict[str, dict]:
    """Train the shipped artifacts (one per family) on every domain but ``held_out_domain``.

    With ``evaluate``, each artifact's JSON also carries its family's held-out-domain table
    (``held_out_domains``) and the measurement on the shipped held-out domain.
    """
    examples = load_domain_examples()
    train = [e for e in examples if e.domain != held_out_domain]
    test = [e for e in examples if e.domain == held_out_domain]
    metas = {}
    for family in families:
        f_all = features(family, [e.text for e in examples], progress=progress)
        idx_test = [i for i, e in enumerate(examples) if e.domain == held_out_domain]
        head = train_head(family, f_all.subset([i for i, e in enumerate(examples) if e.domain != held_out_domain]),
                          train)
        meta: dict = {"training": {"examples": len(train), "unsafe": sum(e.unsafe for e in train),
                                   "domains": dict(Counter(e.domain for e in train)),
                                   "sources": sorted({e.source for e in train}),
                                   "held_out_domain": held_out_domain,
                                   "calibration": {"target_false_flag_rate": TARGET_FFR,
                                                   "sentence_share": round(SENTENCE_SHARE, 4),
                                                   "target_unsafe_rate": TARGET_UNSAFE_FFR, "inner_folds": INNER_FOLDS}}}
        if test:
            s0, s1 = head.scores(f_all.subset(idx_test))
            meta["shipped_held_out"] = {"domain": held_out_domain, "segments": len(test),
                                        "false_flag_rate": round(float(flagged(s0, s1, head.thresholds).mean()), 4)}
        if evaluate:
            meta["held_out_domains"] = evaluate_held_out_domains(family, examples, f=f_all, progress=progress)
        metas[family] = write_artifact(out_dir, f"{ARTIFACT_NAME}_{family}", head, meta)
    return metas


# ----------------------------------------------------------------------------- distillation

@dataclass
class LabelledSegment:
    text: str
    verdict: str
    category: str | None
    doc_id: str


def examples_from_labels(inputs: Sequence[str | Path], labels_dir: str | Path) -> list[LabelledSegment]:
    """Segments of ``inputs`` with the labels ``tools/label_corpus.py`` stored for them in ``labels_dir``.

    The segmentation and json keys are read from each label file's metadata, and every
    segment's text hash is checked against the stored one (a label of other text is an error).
    """
    from megatron_reflect.data.labels import labels_path_for, read_label_metadata, read_labels, text_hash
    from megatron_reflect.data.readers import Skipped, iter_records
    from megatron_reflect.data.segment import SegmenterConfig, segment_document

    out: list[LabelledSegment] = []
    for inp in inputs:
        path = labels_path_for(inp, labels_dir)
        if not path.is_file():
            raise DataError(f"{path}: no label file for {inp} (run tools/label_corpus.py --input {inp} "
                            f"--labels-dir {labels_dir})")
        meta = read_label_metadata(path)
        seg_cfg = SegmenterConfig(**json.loads(meta["segmenter"]))
        keys = tuple(json.loads(meta.get("json_keys", '["text"]')))
        labels = read_labels(path)
        for doc in iter_records(inp, keys):
            if isinstance(doc, Skipped):
                continue
            for seg in segment_document(doc, seg_cfg):
                hit = labels.get((doc.doc_id, seg.index))
                if hit is None:
                    continue
                h, label = hit
                if h != text_hash(seg.text):
                    raise DataError(f"{path}: the label of {doc.doc_id} segment {seg.index} is of other text "
                                    f"(hash {h} != {text_hash(seg.text)}); relabel {inp}")
                out.append(LabelledSegment(seg.text, label.verdict.value, label.category, doc.doc_id))
    if not out:
        raise DataError(f"{labels_dir}: no labelled segments found for {list(map(str, inputs))}")
    return out


def verdict_agreement(teacher: Sequence[str], student: Sequence[str]) -> dict:
    """Agreement on the 3-way verdict and on flagged (not Safe) vs Safe, with Cohen's kappa of the latter."""
    t = np.array([v != "Safe" for v in teacher])
    s = np.array([v != "Safe" for v in student])
    n = len(t)
    agree = float((t == s).mean()) if n else float("nan")
    pt, ps = t.mean() if n else 0, s.mean() if n else 0
    chance = pt * ps + (1 - pt) * (1 - ps)
    kappa = 1.0 if chance == 1 else (agree - chance) / (1 - chance)
    return {"segments": n, "verdict_agreement": round(float(np.mean([a == b for a, b in zip(teacher, student)])), 4),
            "flag_agreement": round(agree, 4), "flag_kappa": round(float(kappa), 4),
            "teacher_flag_rate": round(float(pt), 4), "student_flag_rate": round(float(ps), 4)}


def hash_mod(key: str, k: int) -> int:
    return int(hashlib.blake2b(key.encode("utf-8"), digest_size=8).hexdigest(), 16) % k


# ----------------------------------------------------------------------------- embedding cache

def text_key(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=10).hexdigest()


class EmbeddingCache:
    """Dense embeddings of texts on disk, one ``<family>.npz`` (keys + matrix) per family.

    For training and evaluation only (the labeler embeds what it is given).  New texts are
    embedded in chunks and the file is rewritten atomically after each chunk, so a killed
    run keeps what it embedded.
    """

    def __init__(self, family: str, root: str | Path | None = None, chunk: int = 512) -> None:
        from megatron_reflect.packaged import cache_dir

        self.family = family
        self.path = Path(root) if root is not None else cache_dir() / "embeddings"
        self.path.mkdir(parents=True, exist_ok=True)
        self.file = self.path / f"{family}.npz"
        self.chunk = chunk
        self.keys: list[str] = []
        self.rows: dict[str, int] = {}
        self.matrix = np.zeros((0, 384), dtype=np.float32)
        if self.file.is_file():
            with np.load(self.file) as z:
                self.keys = [str(k) for k in z["keys"]]
                self.matrix = z["matrix"].astype(np.float32)
            self.rows = {k: i for i, k in enumerate(self.keys)}
        self._featurizer = None

    def _save(self) -> None:
        tmp = self.file.with_name(f".{self.file.stem}.tmp-{os.getpid()}.npz")
        np.savez(tmp, keys=np.array(self.keys), matrix=self.matrix.astype(np.float16))
        os.replace(tmp, self.file)

    def embed(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        keys = [text_key(t) for t in texts]
        todo = list(dict((k, t) for t, k in zip(texts, keys) if k not in self.rows).items())  # (key, text), each once
        if todo:
            if self._featurizer is None:
                from megatron_reflect.data.labelers.features import build_featurizer

                self._featurizer = build_featurizer(self.family)
            from tqdm import tqdm

            bar = tqdm(total=len(todo), desc=f"embed {self.family}", unit=" texts", disable=not progress)
            for start in range(0, len(todo), self.chunk):
                part = todo[start:start + self.chunk]
                vecs = self._featurizer.transform([t for _, t in part])
                for k, _ in part:
                    self.rows[k] = len(self.keys)
                    self.keys.append(k)
                self.matrix = np.concatenate([self.matrix, vecs.astype(np.float16).astype(np.float32)])
                self._save()
                bar.update(len(part))
            bar.close()
        return self.matrix[[self.rows[k] for k in keys]]
