"""Model FLOPs utilisation: which dense tensor-core peak a GPU has, chosen from its name.

MFU = model FLOPs per second per GPU (:meth:`ModelConfig.flops_per_token`, the
Megatron-Bridge / NeMo convention) over the GPU's dense peak.  The peak depends on the
board, not only the chip: an H100 SXM has 989 TFLOP/s of dense BF16, the PCIe card 756, the
NVL 835, so the device name picks the row (most specific pattern first), an explicit value
overrides it (``logging.peak_tflops``, ``gpu_check --peak-tflops``), and an unknown GPU gets
no MFU rather than a guess.  FP8 runs are reported against both peaks: the BF16 one (what
the same model would get from BF16 hardware) and the FP8 one (what the chip could do).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Peak:
    """Dense tensor-core peaks of one GPU, FLOP/s; ``fp8`` None where the chip has no FP8."""

    device: str
    bf16: float
    fp8: float | None


# (substring of the upper-cased device name, peak); the first match wins, so boards before chips.
# Dense (no 2:4 sparsity) figures from NVIDIA's data sheets.
PEAKS: tuple[tuple[str, Peak], ...] = (
    ("H100 PCIE", Peak("H100 PCIe", 756e12, 1513e12)),
    ("H100 NVL", Peak("H100 NVL", 835e12, 1671e12)),
    ("GH200", Peak("GH200", 989e12, 1979e12)),
    ("H200 NVL", Peak("H200 NVL", 835e12, 1671e12)),
    ("H800 PCIE", Peak("H800 PCIe", 756e12, 1513e12)),
    ("H100", Peak("H100 SXM", 989e12, 1979e12)),
    ("H200", Peak("H200 SXM", 989e12, 1979e12)),
    ("H800", Peak("H800 SXM", 989e12, 1979e12)),
    ("B200", Peak("B200", 2250e12, 4500e12)),
    ("B100", Peak("B100", 1750e12, 3500e12)),
    ("A100", Peak("A100", 312e12, None)),
    ("L40S", Peak("L40S", 362e12, 733e12)),
)


def peak_for(device_name: str, override_tflops: float = 0.0) -> Peak | None:
    """The peak of ``device_name``; ``override_tflops`` > 0 sets the BF16 peak (FP8 then unknown)."""
    if override_tflops > 0:
        return Peak(f"{device_name} (given: {override_tflops:g} TFLOP/s)", override_tflops * 1e12, None)
    name = device_name.upper()
    for pattern, peak in PEAKS:
        if pattern in name:
            return peak
    return None


def mfu(flops_per_gpu: float, peak: Peak | None, fp8: bool) -> dict[str, float]:
    """``mfu`` against the BF16 peak; for FP8 runs also ``mfu_fp8_peak`` where the chip's FP8 peak is known."""
    if peak is None:
        return {}
    out = {"mfu": flops_per_gpu / peak.bf16}
    if fp8 and peak.fp8 is not None:
        out["mfu_fp8_peak"] = flops_per_gpu / peak.fp8
    return out
