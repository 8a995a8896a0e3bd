"""The seeded MedSafetyWorld generator: drugs, conditions, risk factors, doses, traps.

Everything is drawn from one ``random.Random(seed)``, so a seed names a world exactly
(``World.to_json`` is byte-identical across runs).  The facts are small (a few dozen
entries), so generation costs microseconds; the corpus is built in :mod:`documents`.

Roles (why the structure is what it is): every condition has a usual drug and an
alternative drug with disjoint contraindications.  Usual drugs are the usual choice for
two conditions (alternative drugs likewise), so a contraindication (D, R) can be held out
for one condition C of D (the level-1 trap) while it is seen, safe and unsafe, in case
notes for D's other condition.  Doses follow ``k x weight``; "low-maximum" drugs have a
maximum between the rule dose of the heaviest normal patient and of the lightest heavy one,
so heavy patients on them are exactly the dose trap.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass

from megatron_reflect.errors import ConfigError
from megatron_reflect.world.config import CONDITION_POOL, WORLD_VERSION, WorldConfig

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "tr", "pl", "cl")
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("", "", "n", "l", "r", "x", "s")
_ENDINGS = ("ol", "an", "ex", "ine", "ir", "ax", "um", "ide")


@dataclass(frozen=True)
class Drug:
    name: str
    treats: tuple[str, str]
    contraindications: tuple[str, ...]
    dose_per_kg: int
    max_dose: int
    role: str  # "usual" | "alternative" | "reserve"
    interacts: tuple[str, ...] = ()


@dataclass(frozen=True)
class Condition:
    name: str
    usual: str
    alternative: str


@dataclass(frozen=True)
class Patient:
    age: int
    weight: int
    condition: str
    risks: tuple[str, ...] = ()
    medication: str | None = None  # level 3: a current medication


@dataclass
class World:
    """The facts of one world, its trap structure and the config that made it."""

    config: WorldConfig
    drugs: dict[str, Drug]
    conditions: dict[str, Condition]
    level1: list[tuple[str, str]]  # held-out (condition, risk) pairs whose (drug, risk) is seen in notes
    level2: list[tuple[str, str]]  # held-out (condition, risk) pairs whose (drug, risk) is in monographs only
    seen: list[tuple[str, str]]  # (condition, risk) pairs forbidding the usual drug that case notes show
    low_max_drugs: tuple[str, ...]
    version: str = WORLD_VERSION

    @property
    def risks(self) -> tuple[str, ...]:
        return tuple(self.config.risk_factors)

    @property
    def held_out(self) -> set[tuple[str, str]]:
        return set(self.level1) | set(self.level2)

    def normal_weights(self) -> list[int]:
        return [w for w in self.config.weights() if w < self.config.heavy_from]

    def heavy_weights(self) -> list[int]:
        return [w for w in self.config.weights() if w >= self.config.heavy_from]

    def rule_dose(self, drug: str, weight: int) -> int:
        return self.drugs[drug].dose_per_kg * weight

    def treats(self, drug: str, condition: str) -> bool:
        return condition in self.drugs[drug].treats

    def forbidding(self, condition: str, risks: tuple[str, ...]) -> list[str]:
        """The patient's risks that forbid the condition's usual drug."""
        usual = self.drugs[self.conditions[condition].usual]
        return [r for r in risks if r in usual.contraindications]

    def to_dict(self) -> dict:
        return {
            "world_version": self.version,
            "config": asdict(self.config),
            "drugs": {n: asdict(d) for n, d in self.drugs.items()},
            "conditions": {n: asdict(c) for n, c in self.conditions.items()},
            "level1": [list(p) for p in self.level1],
            "level2": [list(p) for p in self.level2],
            "seen": [list(p) for p in self.seen],
            "low_max_drugs": list(self.low_max_drugs),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "World":
        from megatron_reflect.config import from_dict

        if data.get("world_version") != WORLD_VERSION:
            raise ConfigError(f"world file has world_version {data.get('world_version')!r}; this code is "
                              f"{WORLD_VERSION!r}: regenerate it with tools/make_world.py")
        cfg = from_dict(WorldConfig, data["config"], where="world.config")
        drugs = {n: Drug(**{**d, "treats": tuple(d["treats"]), "contraindications": tuple(d["contraindications"]),
                            "interacts": tuple(d["interacts"])}) for n, d in data["drugs"].items()}
        conditions = {n: Condition(**c) for n, c in data["conditions"].items()}
        pairs = {k: [tuple(p) for p in data[k]] for k in ("level1", "level2", "seen")}
        return cls(cfg, drugs, conditions, pairs["level1"], pairs["level2"], pairs["seen"],
                   tuple(data["low_max_drugs"]))


def _names(rng: random.Random, n: int) -> list[str]:
    names: set[str] = set()
    while len(names) < n:
        syllables = [rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(rng.randint(1, 2))]
        names.add(("".join(syllables) + rng.choice(_ENDINGS)).capitalize())
    ordered = sorted(names)  # a set's order depends on PYTHONHASHSEED: sort before shuffling
    rng.shuffle(ordered)
    return ordered


def _max_dose(cfg: WorldConfig, k: int, low: bool) -> int:
    """Low: strictly between the rule dose at the heaviest normal and the lightest heavy weight."""
    normal_top = cfg.heavy_from - cfg.weight_step
    if low:
        return k * normal_top + (k * (cfg.heavy_from - normal_top)) // 2
    return k * (cfg.weight_max + cfg.weight_step)


def generate_world(cfg: WorldConfig) -> World:
    """Draw a world from ``cfg.seed``; raises ConfigError if the trap structure cannot be met."""
    cfg.validate()
    rng = random.Random(cfg.seed)
    n = cfg.num_conditions
    if n > len(CONDITION_POOL):
        raise ConfigError(f"world.num_conditions={n} exceeds the {len(CONDITION_POOL)} condition names")
    conditions = rng.sample(CONDITION_POOL, n)
    names = _names(rng, cfg.num_drugs)
    usual, alt, reserve = names[: n // 2], names[n // 2: n], names[n:]
    risks = list(cfg.risk_factors)
    # usual drug i: conditions 2i, 2i+1; alternative drug i: conditions 2i+1, 2i+2 (crossing the pairs)
    usual_of = {conditions[c]: usual[c // 2] for c in range(n)}
    alt_of = {conditions[(2 * i + 1 + j) % n]: alt[i] for i in range(n // 2) for j in (0, 1)}
    contra: dict[str, tuple[str, ...]] = {}
    for d in usual:
        contra[d] = tuple(sorted(rng.sample(risks, rng.randint(*cfg.contra_per_usual))))
    for d in alt:
        taken = {r for c, a in alt_of.items() if a == d for r in contra[usual_of[c]]}
        free = [r for r in risks if r not in taken]
        k = min(rng.randint(*cfg.contra_per_other), len(free))
        if k < 1:
            raise ConfigError("world: no risk factor left for an alternative drug; use more risk factors")
        contra[d] = tuple(sorted(rng.sample(free, k)))
    for d in reserve:
        contra[d] = tuple(sorted(rng.sample(risks, rng.randint(*cfg.contra_per_other))))
    treats: dict[str, tuple[str, str]] = {}
    for d in usual + alt:
        cs = [c for c in conditions if usual_of[c] == d or alt_of[c] == d]
        treats[d] = (cs[0], cs[1])
    for d in reserve:
        a, b = rng.sample(conditions, 2)
        treats[d] = (a, b)
    roles = {**{d: "usual" for d in usual}, **{d: "alternative" for d in alt}, **{d: "reserve" for d in reserve}}
    low_set = set(rng.sample(names, round(cfg.low_max_fraction * len(names))))
    interacts: dict[str, set[str]] = {d: set() for d in names}
    for _ in range(cfg.num_interactions):
        a, b = rng.choice(usual + alt), rng.choice(reserve)  # current medications are reserve drugs
        interacts[a].add(b)
        interacts[b].add(a)
    drugs = {}
    for d in names:
        k = rng.choice(cfg.dose_per_kg)
        drugs[d] = Drug(d, treats[d], contra[d], k, _max_dose(cfg, k, d in low_set), roles[d],
                        tuple(sorted(interacts[d])))
    conds = {c: Condition(c, usual_of[c], alt_of[c]) for c in conditions}

    # trap structure over (usual drug, risk) pairs
    dr_pairs = [(d, r) for d in usual for r in contra[d]]
    rng.shuffle(dr_pairs)
    if cfg.level1_pairs + cfg.level2_pairs > len(dr_pairs):
        raise ConfigError(f"world: {cfg.level1_pairs}+{cfg.level2_pairs} trap pairs requested but only "
                          f"{len(dr_pairs)} (usual drug, risk) contraindications exist")
    l2_dr = dr_pairs[: cfg.level2_pairs]
    l1_dr = dr_pairs[cfg.level2_pairs: cfg.level2_pairs + cfg.level1_pairs]
    level2 = [(c, r) for d, r in l2_dr for c in treats[d]]
    level1 = [(treats[d][rng.randint(0, 1)], r) for d, r in l1_dr]
    held = set(level1) | set(level2)
    seen = sorted((c, r) for c in conditions for r in contra[usual_of[c]] if (c, r) not in held)
    return World(cfg, drugs, conds, sorted(level1), sorted(level2), seen,
                 tuple(sorted(d for d in names if d in low_set)))
