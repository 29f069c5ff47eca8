"""Reduced precision only where the hardware runs it natively.

bfloat16 matmuls are native on CUDA GPUs and on CPUs with AMX or AVX512-BF16; elsewhere (an AVX2-only
CPU) torch emulates them, and a bf16 matmul measured 88x slower than fp32. So a precision knob set to
"auto" (`config.Bf16`) asks the hardware, and the run report prints what it found.
"""
from __future__ import annotations

import functools
from pathlib import Path

from ecr_ray.config import Bf16

_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
CPUINFO = Path("/proc/cpuinfo")


@functools.cache
def _cpuinfo(field: str) -> str:
    """A field of the first CPU in /proc/cpuinfo (Linux; empty elsewhere)."""
    try:
        lines = CPUINFO.read_text().splitlines()
    except OSError:
        return ""
    return next((ln.partition(":")[2].strip() for ln in lines if ln.split(":")[0].strip() == field), "")


def cpu_flags() -> frozenset[str]:
    return frozenset(_cpuinfo("flags").split())


def cpu_model() -> str:
    import platform

    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_capability() -> str:
    """One line for reports: torch's SIMD level, the CPU's bf16 flags and whether bf16 is native here."""
    import torch

    flags = [f for f in _BF16_CPU_FLAGS if f in cpu_flags()]
    return (f"{torch.backends.cpu.get_cpu_capability()}, bf16 flags: {', '.join(flags) or 'none'} "
            f"(bf16 {'native' if bf16_native('cpu') else 'emulated: float32 chosen'})")


def bf16_native(device: str) -> bool:
    """bfloat16 matmuls run in hardware on `device` ('cpu' or 'cuda')."""
    import torch

    if str(device).startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return any(f in cpu_flags() for f in _BF16_CPU_FLAGS)


def use_bf16(setting: Bf16, device: str) -> bool:
    """A precision knob resolved on this machine: "auto" -> native bf16 only; true/false as given."""
    return bf16_native(device) if setting == "auto" else bool(setting)


def inference_dtype(device: str):
    """Weights for inference of a model saved in reduced precision: bfloat16 where native, else float32."""
    import torch

    return torch.bfloat16 if bf16_native(device) else torch.float32
