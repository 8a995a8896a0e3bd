"""The config system: typed merge of YAML and dotted overrides, with errors that name the field."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from megatron_reflect.config import dump_yaml, load_yaml, merge, parse_overrides, resolve
from megatron_reflect.errors import ConfigError
from megatron_reflect.model.presets import ModelConfig, get_preset
from megatron_reflect.runtime import ParallelConfig


@dataclass
class Optim:
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    schedule: Literal["cosine", "wsd"] = "cosine"
    warmup: int | None = None


@dataclass
class Top:
    name: str = "run"
    steps: int = 10
    use_x: bool = False
    optim: Optim = field(default_factory=Optim)
    model: ModelConfig = field(default_factory=ModelConfig)


def test_overrides_are_typed_and_nested() -> None:
    cfg = resolve(Top(), overrides=["optim.lr=3e-4", "steps=7", "use_x=true", "optim.schedule=wsd",
                                    "optim.warmup=none", "model.num_layers=4", "optim.betas=[0.8, 0.9]"])
    assert cfg.optim.lr == pytest.approx(3e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.steps == 7 and cfg.use_x is True
    assert cfg.optim.schedule == "wsd" and cfg.optim.warmup is None
    assert cfg.optim.betas == [0.8, 0.9]
    assert cfg.model.num_layers == 4 and cfg.model.hidden_size == ModelConfig().hidden_size


def test_yaml_then_overrides(tmp_path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("steps: 3\noptim:\n  lr: 0.5\n")
    cfg = resolve(Top(), path, ["optim.lr=0.25"])
    assert (cfg.steps, cfg.optim.lr) == (3, 0.25)
    # round trip through YAML keeps every value
    again = merge(Top(), load_yaml_text(tmp_path, dump_yaml(cfg)))
    assert again == cfg


def load_yaml_text(tmp_path, text: str) -> dict:
    p = tmp_path / "dump.yaml"
    p.write_text(text)
    return load_yaml(p)


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lrr=1", "optim.lrr"),
        ("steps=abc", "steps"),
        ("optim.schedule=linear", "optim.schedule"),
        ("use_x=maybe", "use_x"),
        ("nodot", "section.field=value"),
    ],
)
def test_bad_overrides_name_the_field(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        resolve(Top(), overrides=[override])


def test_bad_yaml_names_the_file(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("steps: [1,\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        resolve(Top(), path)


def test_parse_overrides_nests() -> None:
    assert parse_overrides(["a.b.c=1", "a.d=x"]) == {"a": {"b": {"c": 1}, "d": "x"}}


def test_presets_and_parallel_checks() -> None:
    big = get_preset("smollm2-1.7b")
    assert (big.num_layers, big.hidden_size, big.num_attention_heads, big.ffn_hidden_size, big.vocab_size) == (
        24, 2048, 32, 8192, 49152)
    # SmolLM2-1.7B has ~1.71 B parameters with tied embeddings
    assert 1.6e9 < big.num_parameters() < 1.8e9
    small = get_preset("smollm2-135m")
    assert 1.3e8 < small.num_parameters() < 1.4e8
    assert small.padded_vocab_size(tensor_parallel_size=2) % 256 == 0
    with pytest.raises(ConfigError, match="unknown model preset"):
        get_preset("gpt-5")
    with pytest.raises(ConfigError, match="not divisible"):
        ParallelConfig(tensor_model_parallel_size=2, pipeline_model_parallel_size=2).data_parallel_size(6)
    assert ParallelConfig(tensor_model_parallel_size=2).data_parallel_size(8) == 4
