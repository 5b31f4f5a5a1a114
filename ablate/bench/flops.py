"""FLOPs of a train step and model FLOPs utilisation (MFU) for `ablate bench`.

FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` over one real step
(forward + backward; the optimiser's elementwise work is not counted, as in the
usual MFU definition). The count is taken once, outside the timed loop, with the
`math` attention kernel and no gradient checkpointing: the counter has no formula
for the CPU flash-attention kernel (SDPA on a CPU would count as zero) and a
checkpointed step recomputes activations, which is not model work. So MFU here is
*model* FLOPs per second over the datasheet peak: recomputation lowers it.

Peaks are NVIDIA datasheet numbers (dense, i.e. the "with sparsity" figure halved
where the sheet gives only that), not measured ones: real kernels reach perhaps
50-80% of them at best. Override with `--peak-tflops` for any other device, or
when your clocks or power cap differ. A CPU has no entry: its MFU is "n/a".
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

# Dense peak TFLOP/s: (bf16 tensor, tf32 tensor, fp32 non-tensor). Sources (datasheets,
# not re-checked online when this was written; no network here):
#   H100 SXM / PCIe / NVL: "NVIDIA H100 Tensor Core GPU" datasheet (BF16 1,979 / 1,513 /
#     1,671 TF with sparsity; TF32 989 / 756 / 835 with sparsity; FP32 67 / 51 / 60)
#   H200 SXM / NVL: "NVIDIA H200 Tensor Core GPU" datasheet (same compute as H100 SXM / NVL)
#   A100 (SXM and PCIe): "NVIDIA A100 Tensor Core GPU" datasheet (BF16 312, TF32 156, FP32 19.5)
#   L40S: "NVIDIA L40S" datasheet (BF16 733 / TF32 366 with sparsity, FP32 91.6)
#   RTX 4090: "NVIDIA Ada GPU Architecture" whitepaper, appendix (BF16 with FP32
#     accumulate 165.2, TF32 82.6, FP32 82.6)
#   A10: "NVIDIA A10 Tensor Core GPU" datasheet (BF16 125, TF32 62.5, FP32 31.2); AWS's
#     A10G has no NVIDIA datasheet and is assumed equal: pass --peak-tflops if you know better
#   V100 SXM2: "NVIDIA V100" datasheet: no bf16; its FP16 tensor peak (125) stands in,
#     no TF32 (the FP32 15.7 is used)
# Matched in order on torch.cuda.get_device_name (e.g. "NVIDIA H100 80GB HBM3").
PEAKS: list[tuple[tuple[str, ...], str, tuple[float, float, float]]] = [
    (("H100", "PCIE"), "H100 PCIe", (756.5, 378.0, 51.2)),
    (("H100", "NVL"), "H100 NVL", (835.5, 417.5, 60.0)),
    (("H100",), "H100 SXM", (989.4, 494.7, 66.9)),
    (("H200", "NVL"), "H200 NVL", (835.5, 417.5, 60.0)),
    (("H200",), "H200 SXM", (989.4, 494.7, 66.9)),
    (("A100",), "A100", (312.0, 156.0, 19.5)),
    (("L40S",), "L40S", (362.05, 183.0, 91.6)),
    (("4090",), "RTX 4090", (165.2, 82.6, 82.6)),
    (("A10",), "A10/A10G", (125.0, 62.5, 31.2)),
    (("V100",), "V100 SXM2", (125.0, 15.7, 15.7)),
]
NO_PEAK = "n/a (no peak known; pass --peak-tflops)"


@dataclass(frozen=True)
class Peak:
    """The peak FLOP/s one precision is judged against, and where the number came from."""

    tflops: float | None
    source: str


def datasheet_peak(gpu_name: str, precision: str, tf32: bool) -> Peak:
    """The dense datasheet peak of `gpu_name` for `precision` (bf16 | fp32); fp32 work is
    judged against the TF32 tensor peak when torch lets cuDNN or matmuls use TF32 (cuDNN
    does by default), since that is what its convolutions then run on."""
    name = gpu_name.upper()
    for keys, label, (bf16, tf32_peak, fp32) in PEAKS:
        if all(k in name for k in keys):
            if precision == "bf16":
                return Peak(bf16, f"{label} datasheet, dense bf16")
            if tf32:
                return Peak(tf32_peak, f"{label} datasheet, dense tf32 (TF32 enabled)")
            return Peak(fp32, f"{label} datasheet, fp32")
    return Peak(None, NO_PEAK)


def tf32_enabled() -> bool:
    """Whether fp32 convolutions or matmuls may run on TF32 tensor cores."""
    try:
        return bool(torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32)
    except (AttributeError, RuntimeError):  # a torch that only has fp32_precision
        return False


def peak_for(device: torch.device, precision: str, override: float | None) -> Peak:
    """`--peak-tflops` if given, else the datasheet entry of this GPU, else none (CPU)."""
    if override:
        return Peak(float(override), "--peak-tflops")
    if device.type != "cuda":
        return Peak(None, NO_PEAK)
    return datasheet_peak(torch.cuda.get_device_name(device), precision, tf32_enabled())


def count_flops(step: Callable[[], Any]) -> int:
    """FLOPs of one call of `step` (forward and backward, whatever it runs)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


def utilisation(flops: int | None, step_s: float, peak: Peak) -> dict[str, Any]:
    """FLOPs per step -> achieved TFLOP/s and MFU (None where no peak is known)."""
    achieved = flops / step_s / 1e12 if flops and step_s > 0 else None
    return {"flops_per_step": flops, "achieved_tflops": achieved, "peak_tflops": peak.tflops,
            "peak_source": peak.source,
            "mfu": achieved / peak.tflops if achieved is not None and peak.tflops else None}


def format_mfu(u: dict[str, Any]) -> str:
    """One line: FLOPs, achieved TFLOP/s, MFU or why there is none."""
    if not u.get("flops_per_step"):
        return "MFU: no FLOPs counted"
    line = (f"FLOPs/step {u['flops_per_step'] / 1e9:.2f} G, achieved "
            f"{u['achieved_tflops']:.4f} TFLOP/s, ")
    if u["mfu"] is None:
        return line + f"MFU {NO_PEAK}"
    return line + f"MFU {u['mfu']:.1%} of {u['peak_tflops']:g} TFLOP/s ({u['peak_source']})"


def guided_step_flops(detector: Any, batch: dict, optimizer: torch.optim.Optimizer,
                      device: torch.device, grad_clip: float | None, speed: Any,
                      cache: Any = None) -> int:
    """Model FLOPs of one guided train step with `speed`'s settings, counted with the math
    attention kernel and no checkpointing (see the module docstring), then `speed` restored.
    Compiled modules run eagerly meanwhile (the counter sees each op)."""
    # lazy: loads diffusers and timm only when called
    from ablate.model.speed import configure_detector, reference_stance
    from ablate.train import train_step

    counted = replace(speed, attention="math", grad_checkpointing=False)
    configure_detector(detector, counted)
    try:
        with reference_stance() if speed.compile else contextlib.nullcontext():
            return count_flops(lambda: train_step(detector, batch, optimizer, device,
                                                  grad_clip, counted, cache))
    finally:
        configure_detector(detector, speed)
