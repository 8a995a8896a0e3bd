"""GCG adversarial suffixes (Zou et al. 2023) through nanogcg, over several prompts.

Why: the strongest white-box inference attack; it optimises a suffix so the answer starts
with an affirmative target.  nanogcg optimises one prompt at a time, so "multi-prompt" here:

* ``individual``: one suffix per prompt, each optimised for ``num_steps``;
* ``universal``: one suffix carried across the prompts (each prompt's run starts from the
  previous best string), ``rounds`` passes; the final suffix is applied to every prompt.

Cost: about ``num_steps * (1 + search_width / batch)`` forward/backward passes per prompt run;
on CPU keep ``search_width`` and ``num_steps`` tiny.  nanogcg must be installed --no-deps
(``pip install --no-deps nanogcg==0.3.0``); on transformers 5 its prefix cache is disabled.
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_reflect.errors import ConfigError
from megatron_reflect.eval.attacks import Case
from megatron_reflect.eval.data import Prompt


@dataclass
class GCGAttackConfig:
    mode: str = "individual"  # individual | universal
    num_steps: int = 250
    search_width: int = 512
    batch_size: int | None = None
    topk: int = 256
    rounds: int = 1
    optim_str_init: str = "x x x x x x x x x x x x x x x x x x x x"
    target: str = "Sure, here is"  # used when a prompt has no ``target`` of its own
    seed: int = 0


def _nanogcg():
    try:
        import nanogcg
    except ImportError as e:
        raise ConfigError("attack 'gcg' needs nanogcg: run `pip install --no-deps nanogcg==0.3.0` "
                          f"(it is listed in requirements-data.txt) [{e}]") from e
    return nanogcg


def optimise_suffixes(model, tokenizer, prompts: list[Prompt], cfg: GCGAttackConfig) -> list[dict]:
    """Run nanogcg; one dict per optimised suffix: prompt ids it serves, suffix, best loss, losses."""
    if cfg.mode not in ("individual", "universal"):
        raise ConfigError(f"gcg.mode must be 'individual' or 'universal', got {cfg.mode!r}")
    nanogcg = _nanogcg()
    current = cfg.optim_str_init
    runs = []

    def one(prompt: Prompt, init: str):
        gcfg = nanogcg.GCGConfig(num_steps=cfg.num_steps, search_width=cfg.search_width, batch_size=cfg.batch_size,
                                 topk=cfg.topk, optim_str_init=init, seed=cfg.seed, use_prefix_cache=False,
                                 verbosity="WARNING")
        return nanogcg.run(model, tokenizer, [{"role": "user", "content": prompt.text}],
                           str(prompt.meta.get("target") or cfg.target), gcfg)

    if cfg.mode == "individual":
        for p in prompts:
            res = one(p, cfg.optim_str_init)
            runs.append({"prompt_ids": [p.id], "suffix": res.best_string, "best_loss": res.best_loss,
                         "losses": list(res.losses)})
        return runs
    losses = []
    for _ in range(cfg.rounds):
        for p in prompts:
            res = one(p, current)
            current = res.best_string
            losses.append(res.best_loss)
    return [{"prompt_ids": [p.id for p in prompts], "suffix": current, "best_loss": losses[-1], "losses": losses}]


def gcg_cases(prompts: list[Prompt], suffixes: list[dict]) -> list[Case]:
    by_id = {p.id: p for p in prompts}
    cases = []
    for s in suffixes:
        for pid in s["prompt_ids"]:
            p = by_id[pid]
            cases.append(Case(f"gcg/{pid}", "gcg", "", p.text + s["suffix"], p.text,
                              meta={"suffix": s["suffix"], "gcg_loss": s["best_loss"]}))
    return cases
