"""The corpus variants, built through the project's real data pipeline (no side path).

One corpus (``corpus.jsonl``: the world's records with oracle spans and exact rewrites), one
SentencePiece tokenizer trained on it, then ``megatron_reflect.data.preprocess`` once per
variant: the segmenter, the ``oracle`` labeler, the renderer and the paired indexed writer
are the ones every real corpus goes through:

* ``raw``          mode ``plain``: every document;
* ``filter``       mode ``filter``, oracle labels: documents with an Unsafe segment dropped (a perfect filter);
* ``filter_noisy`` the same filter over labels that miss a set share of unsafe notes
                   (``noisy_fn_rate``; a classifier's false negatives, simulated with a seed);
* ``rewrite``      mode ``rewrite``, ``exact`` rewriter: each unsafe recommendation replaced by the careful one;
* ``reflect``      mode ``reflect``: a reflection after each segment (one per note and monograph);
* ``reflect_perm`` ``reflect`` over labels permuted across notes: as many Unsafe reflections,
                   no link to content (the control).

The tokenizer must give every drug name (with its leading space) and both verdict words one
token each, so a drug choice and a verdict are one next-token distribution; ``check_tokens``
verifies it and fails naming the word.  Costs: the tokenizer trains in ~2 s; each variant
tokenizes ~0.8 MB of text in a few seconds.  Everything is written under temporary names and
skipped when already complete (resumable).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from megatron_reflect.errors import ConfigError
from megatron_reflect.files import write_text_atomic
from megatron_reflect.reflection import Reflection, ReflectionTemplate, Verdict
from megatron_reflect.world.documents import build_corpus, write_jsonl
from megatron_reflect.world.generator import World
from megatron_reflect.world.oracle import all_categories

VARIANTS: tuple[str, ...] = ("raw", "filter", "filter_noisy", "rewrite", "reflect", "reflect_perm")
REFLECT_VARIANTS: tuple[str, ...] = ("reflect", "reflect_perm")
MODE_OF: dict[str, str] = {"raw": "plain", "filter": "filter", "filter_noisy": "filter", "rewrite": "rewrite",
                           "reflect": "reflect", "reflect_perm": "reflect"}
CORPUS_OF: dict[str, str] = {"filter_noisy": "noisy", "reflect_perm": "perm"}
THINK_SYMBOLS: tuple[str, ...] = ("<think>", "</think>")


@dataclass
class VariantConfig:
    vocab_size: int = 640
    noisy_fn_rate: float = 0.3  # share of unsafe notes the noisy filter misses
    segment_words: int = 100  # a note or a monograph is one segment: one reflection after it
    progress: bool = True


def world_template(world: World) -> ReflectionTemplate:
    """The default reflection template with the world's categories."""
    return ReflectionTemplate(categories=all_categories(world))


def noisy_labels(records: list[dict], fn_rate: float, seed: int) -> list[dict]:
    """The records with a seeded ``fn_rate`` share of unsafe notes labelled Safe (missed)."""
    rng = random.Random(f"noisy-{seed}")
    out = []
    for rec in records:
        if rec["unsafe"] and rng.random() < fn_rate:
            rec = {**rec, "labels": [{**s, "verdict": "Safe", "category": None} for s in rec["labels"]]}
        out.append(rec)
    return out


def permuted_labels(records: list[dict], seed: int) -> list[dict]:
    """The records with the (verdict, category) of their labels permuted across labelled records:
    the same number of Unsafe reflections, no link to content."""
    rng = random.Random(f"perm-{seed}")
    idx = [i for i, r in enumerate(records) if r["labels"]]
    verdicts = [(records[i]["labels"][0]["verdict"], records[i]["labels"][0]["category"]) for i in idx]
    rng.shuffle(verdicts)
    out = list(records)
    for i, (v, c) in zip(idx, verdicts):
        out[i] = {**records[i], "labels": [{**records[i]["labels"][0], "verdict": v, "category": c}]}
    return out


def reflected_texts(records: list[dict], template: ReflectionTemplate) -> list[str]:
    """Each record's text as the reflect variant writes it (one reflection per record)."""
    texts = []
    for rec in records:
        label = rec["labels"][0] if rec["labels"] else {"verdict": "Safe", "category": None}
        texts.append(rec["text"] + template.render(Reflection(Verdict.parse(label["verdict"]), label["category"]))[0])
    return texts


def check_tokens(tokenizer, world: World, template: ReflectionTemplate) -> dict[str, int]:
    """Token ids of every drug name (`` <drug>``), of ``.`` and of both verdict words; raises
    ConfigError naming the word when one is not a single token, or when a drug's token would
    not be the one a note's tokenization uses."""
    ids: dict[str, int] = {}
    for drug in world.drug_names:
        enc = tokenizer.encode_batch([f" {drug}", f" {drug}.", f"give {drug}."])
        if len(enc[0]) != 1 or enc[1][:1] != enc[0] or enc[2][-2:] != enc[1]:
            raise ConfigError(f"world tokenizer: drug {drug!r} is not one token in ' {drug}.' ({enc}); "
                              f"raise variant.vocab_size")
        ids[drug] = enc[0][0]
    dot = tokenizer.encode_batch(["."])[0]
    if len(dot) != 1:
        raise ConfigError(f"world tokenizer: '.' is {dot}, not one token")
    ids["."] = dot[0]
    safe = tokenizer.encode_batch([template.render(Reflection(Verdict.SAFE))[0]])[0]
    unsafe = tokenizer.encode_batch([template.render(Reflection(Verdict.UNSAFE, all_categories(world)[0]))[0]])[0]
    k = next(i for i, (a, b) in enumerate(zip(safe, unsafe)) if a != b)
    for word, tok_id in (("Safe", safe[k]), ("Unsafe", unsafe[k])):
        if tokenizer.decode([tok_id]).strip() != word:
            raise ConfigError(f"world tokenizer: verdict word {word!r} is not one token; raise variant.vocab_size")
        ids[word] = tok_id
    ids["verdict_position"] = k  # tokens of the reflection before its verdict word
    return ids


def write_world(world: World, out_dir: str | Path, cfg: VariantConfig) -> dict[str, Path]:
    """world.json, the corpus files and the tokenizer (skipped when present and from the same world)."""
    from megatron_reflect.data.tokenizers import build_tokenizer, train_sentencepiece

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"world": out / "world.json", "corpus": out / "corpus.jsonl", "noisy": out / "corpus_noisy.jsonl",
             "perm": out / "corpus_perm.jsonl", "tokenizer": out / "tokenizer" / "world_sp.model"}
    if paths["world"].is_file():
        if paths["world"].read_text() != world.to_json():
            raise FileExistsError(f"{paths['world']}: holds another world; use another output directory")
        if all(p.is_file() for p in paths.values()):
            return paths
    records = build_corpus(world)
    write_jsonl(paths["corpus"], records)
    write_jsonl(paths["noisy"], noisy_labels(records, cfg.noisy_fn_rate, world.config.seed))
    write_jsonl(paths["perm"], permuted_labels(records, world.config.seed))
    # the tokenizer learns from the text as the reflect variant writes it, so verdicts and
    # categories get their own pieces; every variant shares it
    template = world_template(world)
    train_sentencepiece(reflected_texts(records, template), paths["tokenizer"].with_suffix(""), cfg.vocab_size,
                        user_symbols=THINK_SYMBOLS)
    check_tokens(build_tokenizer("sentencepiece", str(paths["tokenizer"]), template), world, template)
    write_text_atomic(paths["world"], world.to_json())
    return paths


def build_variant(world: World, paths: dict[str, Path], variant: str, out_dir: str | Path,
                  cfg: VariantConfig) -> dict:
    """Preprocess one variant through ``megatron_reflect.data.preprocess``; returns its stats."""
    from megatron_reflect.data.preprocess import PreprocessConfig, preprocess

    if variant not in VARIANTS:
        raise ConfigError(f"unknown variant {variant!r}; known: {list(VARIANTS)}")
    prefix = Path(out_dir) / variant / "data"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    pcfg = PreprocessConfig(
        input=[str(paths[CORPUS_OF.get(variant, "corpus")])], output_prefix=str(prefix),
        tokenizer_type="sentencepiece", tokenizer_model=str(paths["tokenizer"]), mode=MODE_OF[variant],
        labeler="oracle", segment_words=cfg.segment_words, template=world_template(world), rewriter="exact",
        workers=1, resume=True, progress=cfg.progress, strict=True)
    return preprocess(pcfg)


def build_variants(world: World, out_dir: str | Path, variants: tuple[str, ...] = VARIANTS,
                   cfg: VariantConfig | None = None) -> dict[str, dict]:
    """Every variant's dataset; returns per variant its prefix and token counts, incl. the
    reflection-token overhead of the reflect variants relative to ``raw`` text."""
    cfg = cfg or VariantConfig()
    paths = write_world(world, out_dir, cfg)
    out: dict[str, dict] = {}
    for v in variants:
        stats = build_variant(world, paths, v, out_dir, cfg)
        out[v] = {"prefix": str(Path(out_dir) / v / "data"), "documents": stats["documents"],
                  "filtered_documents": stats["filtered_documents"], "tokens": stats["tokens"],
                  "reflection_tokens": stats["reflection_tokens"], "overhead_pct": stats["overhead_pct"],
                  "verdicts": stats["verdicts"]}
    return out
