"""What this machine computes with: the CPU's model, the cores this process may use and
the instruction sets that decide how fast training runs (read from Linux's
``/proc/cpuinfo``; elsewhere only the platform's name). The benchmarks print it beside
every time, and run.json's ``runtime.cpu`` records it beside every run's wall time.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
from dataclasses import dataclass
from pathlib import Path

SIMD = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
        "amx_bf16", "amx_int8", "asimd", "sve", "bf16")
"""The instruction sets worth naming (x86's and Arm's flags as Linux spells them): the
vector widths, and bfloat16 and int8 arithmetic in hardware (without it TensorFlow
emulates bfloat16, slowly)."""


@dataclass(frozen=True)
class Cpu:
    model: str
    cores: int
    instruction_sets: tuple[str, ...]

    def __str__(self) -> str:
        flags = ", ".join(self.instruction_sets) or "none listed"
        return f"{self.model}, {self.cores} cores ({flags})"


@functools.cache
def cpu(cpuinfo: Path = Path("/proc/cpuinfo")) -> Cpu:
    """This machine's CPU (its first processor's entry in ``cpuinfo``)."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else os.cpu_count() or 1
    return Cpu(model=fields.get("model name") or platform.processor() or platform.machine(),
               cores=cores, instruction_sets=tuple(f for f in SIMD if f in flags))
