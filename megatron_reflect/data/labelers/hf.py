"""Label segments with a local Hugging Face generative guard model (e.g. Qwen3Guard-Gen).

Each segment becomes a chat prompt (the segment as the user turn, or ``instruction``
filled with it for a general chat model), prompts are sorted by length and generated in
left-padded batches with greedy decoding, and the answer is parsed as Qwen3Guard's
"Safety: ... Categories: ..." format.  An unparseable answer gets the ``fallback``
verdict and is counted in ``stats["unparseable"]``.  Runs on CUDA when available (same
code path), else CPU; cost: one ``generate`` per batch of ``batch_size`` segments.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Sequence

from megatron_reflect.data.labelers.base import LabelerError
from megatron_reflect.data.labelers.qwen3guard import label_or_fallback
from megatron_reflect.data.types import Document, Label, Segment
from megatron_reflect.reflection import Verdict


class HFGuardLabeler:
    name = "hf"

    def __init__(self, model_dir: str | Path, batch_size: int = 8, max_new_tokens: int = 32,
                 instruction: str | None = None, fallback: str = "Controversial", device: str | None = None) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise LabelerError(f"{model_dir}: not a Hugging Face model directory (no config.json)")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(self.device).eval()
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.instruction = instruction
        self.fallback = Verdict.parse(fallback)
        self.stats: Counter[str] = Counter()

    def _prompt(self, text: str) -> str:
        content = self.instruction.format(text=text) if self.instruction else text
        return self.tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                  add_generation_prompt=True)

    def generate(self, texts: Sequence[str]) -> list[str]:
        """The model's raw answers, in input order (batched by prompt length)."""
        import torch

        prompts = [self._prompt(t) for t in texts]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        answers: list[str] = [""] * len(prompts)
        for b in range(0, len(order), self.batch_size):
            idx = order[b:b + self.batch_size]
            enc = self.tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True,
                                 add_special_tokens=False).to(self.device)
            with torch.no_grad():
                out = self.model.generate(**enc, do_sample=False, max_new_tokens=self.max_new_tokens,
                                          pad_token_id=self.tokenizer.pad_token_id)
            new = out[:, enc["input_ids"].shape[1]:]
            for i, ans in zip(idx, self.tokenizer.batch_decode(new, skip_special_tokens=True)):
                answers[i] = ans
            self.stats["generated"] += len(idx)
        return answers

    def label(self, segments: Sequence[Segment], documents: dict[str, Document]) -> list[Label]:
        return [label_or_fallback(a, self.fallback, self.stats) for a in self.generate([s.text for s in segments])]
