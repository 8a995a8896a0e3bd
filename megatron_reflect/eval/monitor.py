"""Reflection-aware generation: stop when the model writes an Unsafe/Controversial reflection,
and hide reflections from the text a user sees.

Why: a model trained with safety reflections flags harm in its own output stream; serving
code must act on that flag (stop) and must not show the reflections.  ``ReflectionMonitor``
is fed one token at a time (streaming); ``MonitorStop`` plugs one monitor per batch row into
Hugging Face ``generate`` as a stopping criterion, so batched generation stops each row at
exactly the token that closes its reflection.  Cost: one incremental decode per generated
token (a few microseconds; the model step dominates).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from megatron_reflect.reflection import Reflection, ReflectionTemplate, Verdict

STOP_VERDICTS: tuple[Verdict, ...] = (Verdict.UNSAFE, Verdict.CONTROVERSIAL)


@dataclass
class ReflectionMonitor:
    """Watches one generated stream.

    ``stop_index``: the number of generated tokens when the first stopping reflection was
    complete (its closing tag decoded), i.e. the stream should end after token
    ``stop_index - 1``; None while no such reflection was written.
    """

    tokenizer: object
    template: ReflectionTemplate
    stop_verdicts: tuple[Verdict, ...] = STOP_VERDICTS
    ids: list[int] = field(default_factory=list)
    reflections: list[Reflection] = field(default_factory=list)
    stop_index: int | None = None
    text: str = ""

    def __post_init__(self) -> None:
        self._pattern = self.template.pattern()
        self._special = set(getattr(self.tokenizer, "all_special_ids", []) or [])

    def feed(self, token_id: int) -> bool:
        """Add one generated token; True when generation must stop here."""
        if self.stop_index is not None:
            return True
        self.ids.append(int(token_id))
        if self.template.special_tokens:
            self.text = self.tokenizer.decode(self.ids, skip_special_tokens=False)
        else:
            self.text = self.tokenizer.decode([i for i in self.ids if i not in self._special])
        found = [Reflection(Verdict.parse(m.group(1)), m.group(2) or None) for m in self._pattern.finditer(self.text)]
        for r in found[len(self.reflections):]:
            self.reflections.append(r)
            if r.verdict in self.stop_verdicts and self.stop_index is None:
                self.stop_index = len(self.ids)
        return self.stop_index is not None

    @property
    def stopped(self) -> bool:
        return self.stop_index is not None

    def visible_text(self) -> str:
        return visible_text(self.text, self.template)


def visible_text(text: str, template: ReflectionTemplate) -> str:
    """What a user sees: reflections removed, and an unfinished reflection held back."""
    last_open = text.rfind(template.open_tag)
    if last_open >= 0 and template.close_tag not in text[last_open:]:
        text = text[:last_open]
    return template.strip(text)


def refused_by_reflection(text: str, template: ReflectionTemplate, stopped_by_monitor: bool,
                          ended: bool) -> bool:
    """An Unsafe/Controversial reflection followed by a stop: the monitor stopped there, or the
    model ended its answer with nothing but whitespace after its last flagging reflection."""
    flags = [m for m in template.pattern().finditer(text) if Verdict.parse(m.group(1)) in STOP_VERDICTS]
    if not flags:
        return False
    return stopped_by_monitor or (ended and not text[flags[-1].end():].strip())


class MonitorStop:
    """A ``transformers`` stopping criterion driving one ReflectionMonitor per batch row.

    A row that emits one of ``eos_ids`` is finished (generate pads it afterwards); its
    monitor is not fed the end token.
    """

    def __init__(self, monitors: list[ReflectionMonitor], eos_ids: set[int]) -> None:
        self.monitors = monitors
        self.eos_ids = eos_ids
        self.finished = [False] * len(monitors)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        last = input_ids[:, -1].tolist()
        for row, mon in enumerate(self.monitors):
            if self.finished[row]:
                done[row] = True
                continue
            if last[row] in self.eos_ids or mon.feed(last[row]):
                self.finished[row] = done[row] = True
        return done
