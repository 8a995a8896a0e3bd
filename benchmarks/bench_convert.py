#!/usr/bin/env python
"""Conversion time and peak memory for SmolLM2-135M, both directions, against a baseline.

Stages, each in a fresh process (so peak RSS is the stage's own):
  floor     import torch + transformers, nothing else (the runtime every stage pays)
  floor-mc  the same + megatron-core's GPTModel (the runtime of an import rank)
  baseline  transformers: from_pretrained + save_pretrained of the same model and its tokenizer
            (what a conversion writes; one copy of the model in memory)
  import    HF dir -> megatron_reflect checkpoint at TP=1 (a parent + one rank process)
  export    checkpoint -> HF dir (this process only; layer by layer)

Prints seconds and peak RSS per stage, the ratios to the baseline, and a SmolLM2-1.7B
estimate (time and memory above the runtime floor scaled by parameter count).

    .venv/bin/python benchmarks/bench_convert.py
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _peak_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


def _stage(name: str, src: str, dst: str) -> dict[str, float]:
    """Run one stage in this process and report its time and peak RSS."""
    import torch  # noqa: F401  (the floor every stage pays)
    import transformers  # noqa: F401

    start = time.perf_counter()
    if name == "floor-mc":
        from megatron.core.models.gpt import GPTModel  # noqa: F401
    elif name == "baseline":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        AutoModelForCausalLM.from_pretrained(src).save_pretrained(dst)
        AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    elif name == "import":
        from megatron_reflect.convert import import_hf

        import_hf(src, dst)
    elif name == "export":
        from megatron_reflect.convert import export_checkpoint

        export_checkpoint(src, dst)
    return {"seconds": time.perf_counter() - start, "rss_mb": _peak_mb(resource.RUSAGE_SELF),
            "child_rss_mb": _peak_mb(resource.RUSAGE_CHILDREN)}


def _run(name: str, src: str = "", dst: str = "") -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--stage", name, src, dst], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    from megatron_reflect.model import get_preset
    from megatron_reflect.packaged import smollm2_hf_dir

    hf_dir = str(smollm2_hf_dir())
    small, large = get_preset("smollm2-135m"), get_preset("smollm2-1.7b")
    scale = large.num_parameters() / small.num_parameters()
    model_mb = small.num_parameters() * 4 / 2**20
    work = Path(tempfile.mkdtemp(prefix="bench_convert_"))
    try:
        floor, floor_mc = _run("floor"), _run("floor-mc")
        base = _run("baseline", hf_dir, str(work / "baseline"))
        imp = _run("import", hf_dir, str(work / "ckpt"))
        exp = _run("export", str(work / "ckpt"), str(work / "export"))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    f, f_mc = floor["rss_mb"], floor_mc["rss_mb"]
    print(f"SmolLM2-135M: {small.num_parameters() / 1e6:.1f} M parameters, {model_mb:.0f} MiB in fp32; runtime "
          f"floor {f:.0f} MiB (torch + transformers), {f_mc:.0f} MiB with megatron-core (import rank)")
    print(f"{'stage':<10}{'seconds':>9}{'peak RSS MiB':>14}{'above floor':>13}{'time/base':>11}{'mem/base':>10}")
    # (name, seconds, peak RSS of the process holding the model, its floor)
    rows = [("baseline", base["seconds"], base["rss_mb"], f),
            ("import", imp["seconds"], imp["child_rss_mb"], f_mc),
            ("export", exp["seconds"], exp["rss_mb"], f)]
    base_above = base["rss_mb"] - f
    for name, seconds, rss, fl in rows:
        print(f"{name:<10}{seconds:>9.1f}{rss:>14.0f}{rss - fl:>13.0f}{seconds / base['seconds']:>11.2f}"
              f"{(rss - fl) / base_above:>10.2f}")
    print(f"  import runs a parent ({imp['rss_mb']:.0f} MiB peak: config, tensor-name checks) and one rank "
          f"process per TP x PP rank (the row above); above-floor memory is in units of the model size: "
          f"baseline {base_above / model_mb:.2f}, import {(rows[1][2] - f_mc) / model_mb:.2f}, "
          f"export {(rows[2][2] - f) / model_mb:.2f}")
    print(f"SmolLM2-1.7B estimate (x{scale:.1f} parameters; time and memory above the floor scaled):")
    for name, seconds, rss, fl in rows:
        print(f"  {name:<8} ~{seconds * scale:6.0f} s   ~{(fl + (rss - fl) * scale) / 1024:5.1f} GiB peak")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--stage":
        print(json.dumps(_stage(sys.argv[2], *sys.argv[3:5])))
    else:
        main()
