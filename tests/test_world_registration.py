"""The confirmatory test's registration (configs/world/registration.yaml): fresh test seeds, the
guard that refuses them before registration or with another configuration, the configuration hash,
and the issue-21 freeze rule in which G1 blocks.  Milliseconds."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from megatron_reflect.config import to_dict
from megatron_reflect.errors import ConfigError
from megatron_reflect.world.experiment import ExperimentConfig
from megatron_reflect.world.registration import config_hash, guard_test_seeds, load_registration

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "configs" / "world" / "registration.yaml"
sys.path.insert(0, str(ROOT / "tools"))


def _with_status(text: str, status: str) -> str:
    """The registration's text with its status line replaced."""
    return re.sub(r"(?m)^status: .*$", f"status: {status}", text, count=1)


def _registered(text: str) -> str:
    return _with_status(text, "registered")


def _unregistered(tmp_path: Path) -> Path:
    """A copy of the registration as it stood before it was committed as registered."""
    path = tmp_path / "unregistered.yaml"
    path.write_text(re.sub(r"sha256: [0-9a-f]{64}", "sha256: null", _with_status(TEMPLATE.read_text(), '"not registered"')))
    return path


def test_registration_names_fresh_test_seeds_and_the_frozen_configuration() -> None:
    import demo

    reg = load_registration(TEMPLATE)
    seeds = set(reg["test_seeds"])
    assert len(seeds) >= 8 and not seeds & set(range(8)) and not seeds & set(range(100, 105))
    assert not seeds & set(reg["calibration"]["seeds"]) and len(reg["calibration"]["seeds"]) >= 10
    # the hash is of the configuration that the demo loads from the frozen file, test seeds included
    cfg, provenance = demo.load_frozen(ROOT / reg["configuration"]["file"])
    assert reg["configuration"]["sha256"] == config_hash(to_dict(cfg))
    assert sorted(cfg.seeds) == sorted(seeds) and provenance["point"] == reg["calibration"]["frozen_point"]
    if reg["status"] == "registered":  # then the code commit it names exists in this history
        import subprocess

        code = str(reg["code_commit"])
        assert re.fullmatch(r"[0-9a-f]{7,40}", code)
        assert subprocess.run(["git", "merge-base", "--is-ancestor", code, "HEAD"], cwd=ROOT).returncode == 0


def test_guard_refuses_test_seeds_until_registered_and_with_another_configuration(tmp_path: Path) -> None:
    cfg = to_dict(ExperimentConfig())
    unregistered = _unregistered(tmp_path)
    with pytest.raises(ConfigError, match="status"):
        guard_test_seeds([100, 200], cfg, unregistered)
    guard_test_seeds([100, 101], cfg, unregistered)  # calibration seeds run freely
    text = _registered(unregistered.read_text())
    registered = tmp_path / "registration.yaml"
    registered.write_text(text.replace("sha256: null", f"sha256: {config_hash(cfg)}"))
    guard_test_seeds([200], cfg, registered)
    other = to_dict(ExperimentConfig())
    other["pretrain"]["lr"] = 1e-2
    with pytest.raises(ConfigError, match="sha256"):
        guard_test_seeds([200], other, registered)
    assert config_hash({**cfg, "world": {**cfg["world"], "seed": 7}}) == config_hash(cfg)  # the seed is not hashed
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("test_seeds: [200,", "test_seeds: [100,"))
    with pytest.raises(ConfigError, match="overlap"):
        load_registration(bad)


def _point(name: str, counts: dict[str, int], flops: float) -> dict:
    return {"name": name, "complete": True, "seeds": list(range(100, 112)), "flops": flops,
            "gate_counts": counts, "passes": all(c >= 10 for c in counts.values())}


def test_freeze_rule_g1_blocks() -> None:
    from calibrate_world import freeze_choice

    good = {"G1": 12, "G2": 12, "G3": 11, "G4": 12, "G5": 10}
    cheap_no_g1 = _point("i21-b16", {**good, "G1": 9}, 1.0)
    assert freeze_choice([cheap_no_g1]) == (None, "no point passes G1 (blocking): nothing frozen")
    dear_all = _point("i21-b32", good, 2.0)
    assert freeze_choice([cheap_no_g1, dear_all])[0]["name"] == "i21-b32"
    g1_only = _point("i21-b16-lr1e-2", {**good, "G5": 3, "G3": 5}, 1.0)
    g1_one_fail = _point("i21-b64", {**good, "G5": 8}, 2.0)
    best, why = freeze_choice([cheap_no_g1, g1_only, g1_one_fail])
    assert best["name"] == "i21-b64" and "fails 1 other gate" in why
    assert freeze_choice([_point("lr1e-2", good, 0.5)])[0] is None  # only the issue-21 points count


def test_demo_runs_the_registered_test_only_once_registered(tmp_path: Path, monkeypatch) -> None:
    import demo

    monkeypatch.setattr(demo, "REGISTRATION", _unregistered(tmp_path))
    path, reg = demo.default_config()
    assert reg is None and path == demo.EXPLORATORY  # unregistered: the exploratory calibration point
    cfg, provenance = demo.load_frozen(path)
    template = load_registration(TEMPLATE)
    assert cfg.seeds and not set(cfg.seeds) & set(template["test_seeds"])  # never a test seed before registration
    assert set(cfg.seeds) <= set(template["calibration"]["seeds"]) and provenance["point"].startswith("i21-")
    assert demo.registration_line(reg).startswith("NOT a test")
    registered = tmp_path / "registration.yaml"
    registered.write_text(_registered(TEMPLATE.read_text()))
    monkeypatch.setattr(demo, "REGISTRATION", registered)
    path, reg = demo.default_config()
    assert path == ROOT / "configs" / "world" / "confirmatory.yaml" and reg["test_seeds"] == template["test_seeds"]
    assert "registered test" in demo.registration_line(reg)
