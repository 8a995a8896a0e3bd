"""The corpus variants, built through the project's real data pipeline (no side path).

One corpus (``corpus.jsonl``, the world's records with oracle spans and exact rewrites), one
SentencePiece tokenizer trained on it, then ``megatron_reflect.data.preprocess`` once per
variant: the segmenter, the ``oracle`` labeler, the renderer and the paired indexed writer
are the ones every real corpus goes through:

* ``raw``          mode ``plain``: every document;
* ``filter``       mode ``filter``, oracle labels: documents with an Unsafe segment dropped (a perfect filter);
* ``filter_noisy`` the same filter over labels that miss a set share of unsafe notes
                   (``noisy_fn_rate``; a classifier's false negatives, simulated with a seed);
* ``rewrite``      mode ``rewrite``, ``exact`` rewriter: each unsafe recommendation replaced by the safe one;
* ``reflect``      mode ``reflect``: a reflection after each segment (one per note and monograph).

Costs: the tokenizer trains in ~2 s; each variant tokenizes ~1 MB of text in a few seconds.
Everything is written under temporary names and skipped when already complete (resumable).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

from megatron_reflect.reflection import Reflection, ReflectionTemplate, Verdict
from megatron_reflect.world.documents import build_corpus, write_jsonl
from megatron_reflect.world.generator import World
from megatron_reflect.world.oracle import all_categories

VARIANTS: tuple[str, ...] = ("raw", "filter", "filter_noisy", "rewrite", "reflect")
MODE_OF: dict[str, str] = {"raw": "plain", "filter": "filter", "filter_noisy": "filter", "rewrite": "rewrite",
                           "reflect": "reflect"}
THINK_SYMBOLS: tuple[str, ...] = ("<think>", "</think>")


@dataclass
class VariantConfig:
    vocab_size: int = 768
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


def write_world(world: World, out_dir: str | Path, cfg: VariantConfig) -> dict[str, Path]:
    """world.json, corpus.jsonl, corpus_noisy.jsonl and the tokenizer (skipped when present and
    made from the same world)."""
    from megatron_reflect.data.tokenizers import train_sentencepiece

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"world": out / "world.json", "corpus": out / "corpus.jsonl", "noisy": out / "corpus_noisy.jsonl",
             "tokenizer": out / "tokenizer" / "world_sp.model"}
    if paths["world"].is_file() and paths["world"].read_text() != world.to_json():
        raise FileExistsError(f"{paths['world']}: holds another world; use another output directory")
    done = all(p.is_file() for p in paths.values()) and paths["world"].is_file()
    if done:
        return paths
    records = build_corpus(world)
    write_jsonl(paths["corpus"], records)
    write_jsonl(paths["noisy"], noisy_labels(records, cfg.noisy_fn_rate, world.config.seed))
    # the tokenizer learns from the text as the reflect variant writes it (one reflection per
    # record), so verdicts and categories get their own pieces; every variant shares it
    template = world_template(world)
    texts = []
    for rec in records:
        label = rec["labels"][0] if rec["labels"] else {"verdict": "Safe", "category": None}
        refl = Reflection(Verdict.parse(label["verdict"]), label["category"])
        texts.append(rec["text"] + template.render(refl)[0])
    train_sentencepiece(texts, paths["tokenizer"].with_suffix(""), cfg.vocab_size, user_symbols=THINK_SYMBOLS)
    tmp = paths["world"].with_name("world.json.tmp")
    tmp.write_text(world.to_json())
    os.replace(tmp, paths["world"])
    return paths


def build_variant(world: World, paths: dict[str, Path], variant: str, out_dir: str | Path,
                  cfg: VariantConfig) -> dict:
    """Preprocess one variant through ``megatron_reflect.data.preprocess``; returns its stats."""
    from megatron_reflect.data.preprocess import PreprocessConfig, preprocess

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {list(VARIANTS)}")
    prefix = Path(out_dir) / variant / "data"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    pcfg = PreprocessConfig(
        input=[str(paths["noisy" if variant == "filter_noisy" else "corpus"])], output_prefix=str(prefix),
        tokenizer_type="sentencepiece", tokenizer_model=str(paths["tokenizer"]), mode=MODE_OF[variant],
        labeler="oracle", segment_words=cfg.segment_words, template=world_template(world), rewriter="exact",
        workers=1, resume=True, progress=cfg.progress, strict=True)
    return preprocess(pcfg)


def build_variants(world: World, out_dir: str | Path, variants: tuple[str, ...] = VARIANTS,
                   cfg: VariantConfig | None = None) -> dict[str, dict]:
    """Every variant's dataset; returns per variant its prefix and token counts, incl. the
    reflection-token overhead of ``reflect`` relative to ``raw`` text."""
    cfg = cfg or VariantConfig()
    paths = write_world(world, out_dir, cfg)
    out: dict[str, dict] = {}
    for v in variants:
        stats = build_variant(world, paths, v, out_dir, cfg)
        out[v] = {"prefix": str(Path(out_dir) / v / "data"), "documents": stats["documents"],
                  "filtered_documents": stats["filtered_documents"], "tokens": stats["tokens"],
                  "reflection_tokens": stats["reflection_tokens"], "overhead_pct": stats["overhead_pct"],
                  "verdicts": stats["verdicts"]}
    if "raw" in out:
        for v in out:
            out[v]["tokens_vs_raw"] = round(out[v]["tokens"] / out["raw"]["tokens"], 4)
    return out
