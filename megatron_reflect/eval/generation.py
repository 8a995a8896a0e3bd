"""Batched generation with left padding, watched by the reflection monitor.

Why: evaluation cost is dominated by generation; batching prompts (left-padded so every row
ends at the same position) runs one forward per step for the whole batch instead of one per
prompt (benchmarks/bench_eval.py measures the ratio).  Every row is watched by a
``ReflectionMonitor`` so a model that flags its own output stops there, as it would in serving.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm import tqdm

from megatron_reflect.eval.models import chat_prompt
from megatron_reflect.eval.monitor import (STOP_VERDICTS, MonitorStop, ReflectionMonitor, refused_by_reflection,
                                           visible_text)
from megatron_reflect.reflection import Reflection, ReflectionTemplate


@dataclass
class GenerationConfig:
    max_new_tokens: int = 64
    batch_size: int = 8
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    monitor: bool = True  # stop rows at an Unsafe/Controversial reflection
    progress: bool = False


@dataclass
class Generation:
    """One completion.  ``text``: everything generated (reflections included, special tokens
    dropped); ``visible``: what a user sees (prefill + text, reflections hidden)."""

    prompt: str
    prefill: str
    text: str
    visible: str
    token_ids: list[int]
    reflections: list[Reflection]
    stopped_by_monitor: bool
    stop_index: int | None
    ended_with_eos: bool
    refused_by_reflection: bool


def encode_prompts(tokenizer, texts: list[str], device) -> dict[str, torch.Tensor]:
    add_special = not bool(getattr(tokenizer, "chat_template", None))
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=add_special)
    return {k: v.to(device) for k, v in enc.items()}


def eos_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    for src in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(src, int):
            ids.add(src)
        elif src:
            ids.update(int(i) for i in src)
    return ids


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], template: ReflectionTemplate, cfg: GenerationConfig,
             prefills: list[str] | None = None, logits_processor=None) -> list[Generation]:
    """Generate for user prompts (chat-formatted), optionally with the assistant turn prefilled."""
    prefills = prefills if prefills is not None else [""] * len(prompts)
    if len(prefills) != len(prompts):
        raise ValueError("prefills must match prompts one to one")
    texts = [chat_prompt(tokenizer, p, f) for p, f in zip(prompts, prefills)]
    out: list[Generation] = []
    batches = range(0, len(texts), cfg.batch_size)
    for start in tqdm(batches, desc="generate", disable=not cfg.progress):
        sl = slice(start, start + cfg.batch_size)
        out += _generate_batch(model, tokenizer, texts[sl], prompts[sl], prefills[sl], template, cfg,
                               logits_processor)
    return out


def _generate_batch(model, tokenizer, texts, prompts, prefills, template, cfg, logits_processor):
    from transformers import LogitsProcessorList, StoppingCriteriaList

    enc = encode_prompts(tokenizer, texts, model.device)
    ends = eos_ids(model, tokenizer)
    monitors = [ReflectionMonitor(tokenizer, template, STOP_VERDICTS if cfg.monitor else ()) for _ in texts]
    stop = MonitorStop(monitors, ends)
    kwargs = dict(max_new_tokens=cfg.max_new_tokens, do_sample=cfg.do_sample,
                  pad_token_id=tokenizer.pad_token_id, eos_token_id=sorted(ends),
                  stopping_criteria=StoppingCriteriaList([stop]))
    if cfg.do_sample:
        torch.manual_seed(cfg.seed)
        kwargs.update(temperature=cfg.temperature, top_p=cfg.top_p)
    if logits_processor is not None:
        kwargs["logits_processor"] = LogitsProcessorList([logits_processor])
    seqs = model.generate(**enc, **kwargs)
    plen = enc["input_ids"].shape[1]
    results = []
    for row, mon in enumerate(monitors):
        gen_ids = seqs[row, plen:].tolist()
        ended = False
        for i, t in enumerate(gen_ids):
            if t in ends:
                gen_ids, ended = gen_ids[:i], True
                break
        if mon.stop_index is not None:
            gen_ids = gen_ids[:mon.stop_index]
        text = tokenizer.decode(gen_ids, skip_special_tokens=not template.special_tokens)
        stopped = mon.stop_index is not None
        results.append(Generation(prompts[row], prefills[row], text, visible_text(prefills[row] + text, template),
                                  gen_ids, template.parse(text), stopped, mon.stop_index, ended,
                                  refused_by_reflection(text, template, stopped, ended)))
    return results
