"""The machine a run measured, and how busy other processes kept it.

Figures from a 2-core machine mean little without knowing whether
something else ran meanwhile: :class:`CpuLedger` compares the CPU time the
whole machine spent (``/proc/stat``) with what this process and its
children spent (``os.times``), and reports the difference.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CpuLedger", "describe"]

# /proc/stat "cpu" fields that count as busy: user nice system irq softirq.
# Steal (field 7) is time the hypervisor gave to other machines: reported
# on its own, since it slows this machine without showing as a process.
_BUSY_FIELDS = (0, 1, 2, 5, 6)
_STEAL_FIELD = 7
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _model_name() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor() or "unknown"
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return "unknown"


def _memory_gib() -> float | None:
    try:
        text = Path("/proc/meminfo").read_text(encoding="ascii")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024 / 1024
    return None


def _softhsm_version() -> str:
    util = shutil.which("softhsm2-util")
    if util is None:
        return "not installed"
    try:
        result = subprocess.run(
            [util, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return result.stdout.strip() or "unknown"


def describe() -> str:
    memory = _memory_gib()
    return (
        f"machine: {os.cpu_count()} cores ({_model_name()}), "
        f"{'?' if memory is None else f'{memory:.1f}'} GiB, "
        f"Python {platform.python_version()}, SoftHSM2 {_softhsm_version()}"
    )


def _machine_seconds() -> tuple[float, float] | None:
    """Busy and stolen CPU seconds of the whole machine since boot."""
    try:
        first = Path("/proc/stat").read_text(encoding="ascii").splitlines()[0]
    except (OSError, IndexError):
        return None
    fields = [int(value) for value in first.split()[1:]]
    busy = sum(fields[i] for i in _BUSY_FIELDS if i < len(fields))
    steal = fields[_STEAL_FIELD] if len(fields) > _STEAL_FIELD else 0
    return busy / _CLOCK_TICKS, steal / _CLOCK_TICKS


def _own_seconds() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


@dataclass
class CpuLedger:
    """CPU seconds of the machine and of this process tree since ``start``."""

    wall: float
    machine: tuple[float, float] | None
    own: float

    @classmethod
    def start(cls) -> CpuLedger:
        return cls(time.monotonic(), _machine_seconds(), _own_seconds())

    def report(self) -> str:
        wall = time.monotonic() - self.wall
        machine_now = _machine_seconds()
        own = _own_seconds() - self.own
        if self.machine is None or machine_now is None:
            return f"run took {wall:.0f} s (machine CPU use not readable)"
        capacity = wall * (os.cpu_count() or 1)
        others = max(0.0, machine_now[0] - self.machine[0] - own)
        steal = max(0.0, machine_now[1] - self.machine[1])
        text = (
            f"run took {wall:.0f} s; this benchmark used {own:.1f} CPU-s, "
            f"other processes {others:.1f} CPU-s ({others / capacity:.0%} of the "
            f"machine), hypervisor steal {steal:.1f} CPU-s "
            f"({steal / capacity:.0%})"
        )
        if (others + steal) / capacity > 0.05:
            text += ": the machine was not quiet, figures may be low"
        return text
