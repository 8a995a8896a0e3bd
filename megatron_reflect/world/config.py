"""Every number of MedSafetyWorld as a knob, in one dataclass.

Defaults are sized for ``make demo`` (the four-variant comparison, three seeds, within
30 minutes on a 2-core CPU): 8 conditions, 16 drugs, 8 risk factors, 20% unsafe notes.
Changing a field changes the world; ``WORLD_VERSION`` changes when the meaning of a field
or of the generated text changes, so a result always names the world that produced it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from megatron_reflect.errors import ConfigError

WORLD_VERSION = "1.0"

RISK_FACTORS: tuple[str, ...] = (
    "kidney disease", "pregnancy", "liver disease", "asthma",
    "bleeding disorder", "heart arrhythmia", "advanced age", "diabetes",
)

CONDITION_POOL: tuple[str, ...] = (
    "migraine", "gout", "eczema", "insomnia", "bronchitis", "arthritis", "acne", "anemia",
    "sinusitis", "psoriasis", "vertigo", "tonsillitis", "shingles", "cystitis", "gastritis", "rosacea",
)


@dataclass
class WorldConfig:
    """The world (drugs, conditions, doses), its corpus and its evaluation sets.

    Drug roles: each usual drug is the usual choice for two conditions and each alternative
    drug the alternative for two, so a drug's behaviour is seen in two contexts and the
    level-1 trap has a second condition to be seen in; ``num_reserve_drugs`` more drugs
    treat two conditions each and appear in monographs only (``num_conditions`` usual +
    alternative drugs + reserve = 16 by default).
    """

    seed: int = 0
    num_conditions: int = 8
    num_reserve_drugs: int = 8
    risk_factors: tuple[str, ...] = RISK_FACTORS
    contra_per_usual: tuple[int, int] = (2, 2)  # min, max contraindications of a usual drug
    contra_per_other: tuple[int, int] = (1, 2)  # alternative and reserve drugs
    dose_per_kg: tuple[int, ...] = (2, 3, 4, 5, 6)  # milligrams per kilogram per day
    weight_min: int = 40
    weight_max: int = 120
    weight_step: int = 10
    heavy_from: int = 90  # patients at or above this weight are "heavy"
    low_max_fraction: float = 0.5  # share of drugs whose maximum is below the rule for heavy patients
    num_interactions: int = 0  # level 3: drug-drug interaction pairs (0 = off)
    # trap structure
    level1_pairs: int = 3  # held-out (condition, risk) pairs whose (drug, risk) is seen elsewhere
    level2_pairs: int = 1  # (drug, risk) pairs held out of every case note (both conditions)
    # corpus
    num_case_notes: int = 6000
    monograph_copies: int = 12  # monographs per drug (each a fresh phrasing and fact order)
    unsafe_fraction: float = 0.20
    overdose_share: float = 0.3  # share of unsafe notes that are overdoses (rest: contraindications)
    forbidding_fraction: float = 0.35  # share of safe notes whose patient has a risk forbidding the usual drug
    second_risk_prob: float = 0.2  # chance that a patient has an extra, irrelevant risk factor
    interaction_med_prob: float = 0.3  # level 3: chance a patient takes a current medication
    # evaluation
    eval_per_set: int = 48  # queries per evaluation set
    eval_notes_per_kind: int = 48  # held-out notes per kind for the reflection verdict probe
    sft_examples: int = 600
    extra: dict[str, str] = field(default_factory=dict)  # free-form notes recorded with the world

    @property
    def num_drugs(self) -> int:
        return self.num_conditions + self.num_reserve_drugs

    def weights(self) -> list[int]:
        return list(range(self.weight_min, self.weight_max + 1, self.weight_step))

    def validate(self) -> None:
        if self.num_conditions < 4 or self.num_conditions % 2:
            raise ConfigError(f"world.num_conditions must be an even number >= 4, got {self.num_conditions}")
        if len(set(self.risk_factors)) != len(self.risk_factors) or len(self.risk_factors) < 6:
            raise ConfigError("world.risk_factors must be >= 6 distinct names")
        for name in ("contra_per_usual", "contra_per_other"):
            lo, hi = getattr(self, name)
            if not 1 <= lo <= hi <= 2:
                raise ConfigError(f"world.{name} must satisfy 1 <= min <= max <= 2, got {(lo, hi)}")
        if not self.weight_min < self.heavy_from <= self.weight_max:
            raise ConfigError("world.heavy_from must lie inside (weight_min, weight_max]")
        if self.heavy_from - self.weight_step < self.weight_min:
            raise ConfigError("world: no normal weights below heavy_from")
        for name in ("unsafe_fraction", "overdose_share", "forbidding_fraction", "second_risk_prob",
                     "low_max_fraction", "interaction_med_prob"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"world.{name} must be in [0, 1], got {v}")
        if self.level1_pairs < 1 or self.level2_pairs < 0:
            raise ConfigError("world: need level1_pairs >= 1 and level2_pairs >= 0")
        if min(self.dose_per_kg) < 1:
            raise ConfigError("world.dose_per_kg must be positive")


def quick_config(seed: int = 0) -> WorldConfig:
    """A small world for tests and ``--quick``: same structure, fewer documents and queries."""
    return WorldConfig(seed=seed, num_case_notes=600, monograph_copies=3, eval_per_set=8,
                       eval_notes_per_kind=8, sft_examples=64)
