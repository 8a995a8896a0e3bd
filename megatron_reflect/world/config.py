"""Every number of MedSafetyWorld E1 as a knob, in one dataclass.

World E1 (docs/MEDSAFETYWORLD.md): 8 conditions and 8 drugs on a cycle, per-drug switch and
trap contraindications, two trap risks shown and two held out (their four pairs are the
traps), hazard notes as the only place a drug meets its held-out trap risk.  The pre-declared
world options that calibration chooses between are fields here too (``hazard_form``,
``hazard_contexts``, ``p_alt``, ``eps``), and so are issue 21's design options (tie-breaking
reports, an SFT set with unforced alternatives, novel-but-safe queries), off by default so that
the registered configurations reproduce.  ``WORLD_VERSION`` changes whenever the meaning of
a field or of the generated text changes, so a result always names the world that made it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from megatron_reflect.errors import ConfigError

WORLD_VERSION = "2.0"

RISK_FACTORS: tuple[str, ...] = (
    "kidney disease", "pregnancy", "liver disease", "asthma",
    "bleeding disorder", "heart arrhythmia", "epilepsy", "diabetes",
)

CONDITION_POOL: tuple[str, ...] = (
    "migraine", "gout", "eczema", "insomnia", "bronchitis", "arthritis", "acne", "anemia",
    "sinusitis", "psoriasis", "vertigo", "tonsillitis", "shingles", "cystitis", "gastritis", "rosacea",
)

NUM_CONDITIONS = 8  # the cycle: 8 conditions, 8 drugs, 4 switch + 4 trap risks, each risk used by 2 drugs


@dataclass
class WorldConfig:
    """The world, its corpus and its evaluation sets.

    Corpus shares are *per condition*: of a condition's notes, ``switch_fraction`` are switch
    contexts (a risk forbidding the usual drug; the careful doctor gives the alternative,
    a failed switch keeps the usual drug at rate ``eps``); of the others, ``hazard_fraction``
    carry the hazard risk (the alternative's trap risk) and the doctor gives the alternative
    for no stated reason at rate ``p_alt`` whether or not it is there (where it is, the note
    is a hazard note: unsafe).  ``extra_risk_prob``: chance of one more risk that forbids
    neither of the condition's drugs.
    """

    seed: int = 0
    risk_factors: tuple[str, ...] = RISK_FACTORS
    shown_trap_risks: int = 2  # of the 4 trap risks; the rest are held out (2 x 2 = 4 trap pairs)
    # corpus
    num_notes: int = 6000
    monograph_copies: int = 12  # monographs per drug (each a fresh phrasing and fact order)
    switch_fraction: float = 0.30
    hazard_fraction: float = 0.30
    extra_risk_prob: float = 0.30
    p_alt: float = 0.25
    eps: float = 0.15
    # pre-declared world options (calibration chooses; see docs/MEDSAFETYWORLD.md)
    hazard_form: Literal["a", "b"] = "a"  # a: hazard note; b: drug-first report
    hazard_contexts: int = 1  # 2: also condition-free prophylaxis notes
    prophylaxis_fraction: float = 0.25  # prophylaxis notes per case note (hazard_contexts = 2)
    prophylaxis_risk_prob: float = 0.5  # chance a prophylaxis patient has one trap risk
    report_safe_ratio: float = 3.0  # form b: safe reports per hazard report
    # issue-21 design options (all off by default: the registered configurations stay reproducible)
    tiebreak_reports: int = 0  # per drug: condition-free drug-first reports (drug-bound reading; no trap pair)
    sft_alternatives: bool = False  # the SFT set keeps unforced alternatives at p_alt (trap-risk-free patients)
    novel_safe_queries: int = 0  # per novel-safe pair (C_i, s(alternative)): never in a note; usual drug right
    # evaluation and post-training
    trap_queries: int = 32  # per trap pair
    seen_queries: int = 64  # over all seen switch contexts
    held_in_queries: int = 96
    probe_per_kind: int = 48  # in-distribution (query, answer) pairs per kind for gate G3
    greedy_subsample: int = 32  # queries per set generated greedily through the monitor
    sft_examples: int = 300
    extra: dict[str, str] = field(default_factory=dict)  # free-form notes recorded with the world

    def validate(self) -> None:
        if len(self.risk_factors) != NUM_CONDITIONS or len(set(self.risk_factors)) != NUM_CONDITIONS:
            raise ConfigError(f"world.risk_factors must be {NUM_CONDITIONS} distinct names")
        if not 1 <= self.shown_trap_risks <= 3:
            raise ConfigError(f"world.shown_trap_risks must be 1, 2 or 3, got {self.shown_trap_risks}")
        for name in ("switch_fraction", "hazard_fraction", "extra_risk_prob", "p_alt", "eps",
                     "prophylaxis_fraction", "prophylaxis_risk_prob"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"world.{name} must be in [0, 1], got {v}")
        if self.hazard_form not in ("a", "b"):
            raise ConfigError(f"world.hazard_form must be 'a' or 'b', got {self.hazard_form!r}")
        if self.hazard_contexts not in (1, 2):
            raise ConfigError(f"world.hazard_contexts must be 1 or 2, got {self.hazard_contexts}")
        if self.num_notes < 8 * NUM_CONDITIONS:
            raise ConfigError(f"world.num_notes must be >= {8 * NUM_CONDITIONS}, got {self.num_notes}")
        for name in ("trap_queries", "seen_queries", "held_in_queries", "probe_per_kind", "sft_examples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"world.{name} must be >= 1")
        for name in ("tiebreak_reports", "novel_safe_queries"):
            if getattr(self, name) < 0:
                raise ConfigError(f"world.{name} must be >= 0, got {getattr(self, name)}")


def quick_config(seed: int = 0) -> WorldConfig:
    """A small world for tests and ``--quick``: same structure, fewer documents and queries."""
    return WorldConfig(seed=seed, num_notes=1200, monograph_copies=4, trap_queries=8, seen_queries=16,
                       held_in_queries=24, probe_per_kind=12, greedy_subsample=8, sft_examples=64)
