"""Where a run computes: the device, what reduced precision it can do, and the peak host
memory a run used.

Its own module so that training, evaluation and the benchmark all ask one place
(and no two of them import each other for it).
"""

from __future__ import annotations

import resource
import sys

import torch

from ablate.core.errors import AblateError


def pick_device(name: str) -> torch.device:
    """`auto` -> cuda if visible, else cpu; an explicit cuda without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise AblateError("train.device=cuda but no CUDA device is visible; use train.device=cpu")
    return torch.device(name)


def supports_dtype(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether `device` computes in `dtype` natively (not by slow emulation).

    CPUs: bf16 needs AVX512-BF16/AMX (oneDNN reports it); fp16 matmuls on CPU are
    emulated almost everywhere, so only bf16 counts there.
    """
    if dtype == torch.float32:
        return True
    if device.type == "cuda":
        if dtype != torch.bfloat16:
            return True
        with torch.cuda.device(device):  # emulated bf16 (pre-Ampere) does not count
            try:
                return torch.cuda.is_bf16_supported(including_emulation=False)
            except TypeError:  # older torch: no emulation flag
                return torch.cuda.get_device_capability(device)[0] >= 8
    if dtype == torch.bfloat16:
        check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
        return bool(check()) if check is not None else False
    return False


def reset_host_peak() -> None:
    """Start this process's peak resident memory afresh (Linux: VmHWM, via clear_refs), so
    a second run in a reused process (a Ray worker's next trial) reports its own peak,
    not the largest of every run before it. Elsewhere a no-op."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        pass


def host_peak_mb() -> float:
    """This process's peak resident memory in MB since `reset_host_peak` (Linux VmHWM),
    else since it started (ru_maxrss: KiB on Linux, bytes on macOS)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024

