"""What a run trained on, in words, for summary.json and the ablation tables (the issue's
"wall time and hardware" per arm): wall times only compare between runs on the same devices."""

from __future__ import annotations

import platform
from pathlib import Path

import torch


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else ``platform.processor()``, else
    the machine type (e.g. ``x86_64``)."""
    info = Path("/proc/cpuinfo")
    try:
        for line in info.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name") and ":" in line:
                return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_bf16_native() -> bool:
    """Whether this CPU has bf16 matrix kernels (oneDNN's check: AVX512 / AVX512-BF16 / AMX on
    x86, bf16 extensions on Arm). Without them torch emulates bf16 matmuls, many times slower
    than fp32 (bench/train.md: an AVX2-only AMD EPYC). False when torch cannot tell."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_features() -> str:
    """The vector instructions torch dispatches to on this CPU (``"AVX2"``, ``"AVX512"``, ...)
    and ``" + bf16"`` when ``cpu_bf16_native``: two CPUs sold under one model name (e.g. "AMD
    EPYC") can differ several-fold in speed, so a wall time names them too."""
    try:
        isa = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        isa = "unknown ISA"
    return isa + (" + bf16" if cpu_bf16_native() else "")


def describe_hardware(world_size: int) -> str:
    """``"<ranks> × <device>"`` of this job as rank 0 sees it, e.g. ``"1 × CPU (AMD EPYC 7B13;
    AVX512 + bf16), 1 thread"`` or ``"8 × NVIDIA A100-SXM4-80GB"``; every rank is assumed to
    run on the same kind of device (a mixed job is described by rank 0's)."""
    if torch.cuda.is_available():
        return f"{world_size} × {torch.cuda.get_device_name()}"
    threads = torch.get_num_threads()
    return f"{world_size} × CPU ({cpu_name()}; {cpu_features()}), {threads} thread{'s' if threads != 1 else ''}"
