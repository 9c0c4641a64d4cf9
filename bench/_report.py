"""Rows of the summary table, progress lines and small statistics."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "Plan",
    "Row",
    "detail",
    "format_rate",
    "percentile",
    "progress",
    "summary_table",
]

_STARTED = time.monotonic()


@dataclass(frozen=True, slots=True)
class Plan:
    """How long and how much each phase runs; ``quick`` is the smoke run."""

    quick: bool
    hsm_seconds: float
    sam_requests: int
    sam_concurrency: int
    sam_sequential: int
    phones: int
    http_warmup: float
    http_seconds: float
    store_seconds: float
    store_callers: tuple[int, ...]

    @classmethod
    def full(cls) -> Plan:
        return cls(
            quick=False,
            hsm_seconds=3.0,
            sam_requests=3000,
            sam_concurrency=16,
            sam_sequential=300,
            phones=32,
            http_warmup=3.0,
            http_seconds=20.0,
            store_seconds=3.0,
            store_callers=(1, 16),
        )

    @classmethod
    def smoke(cls) -> Plan:
        return cls(
            quick=True,
            hsm_seconds=1.0,
            sam_requests=400,
            sam_concurrency=16,
            sam_sequential=50,
            phones=32,
            http_warmup=1.0,
            http_seconds=5.0,
            store_seconds=0.75,
            store_callers=(1, 16),
        )


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the summary: a figure, and the baseline it is set against."""

    phase: str
    measure: str
    value: str
    baseline: str = "-"
    ratio: str = "-"


def progress(text: str) -> None:
    """One progress line on stderr, stamped with the time since start."""
    elapsed = time.monotonic() - _STARTED
    print(f"[bench {elapsed:6.1f}s] {text}", file=sys.stderr, flush=True)


def detail(text: str) -> None:
    """A line of a phase's detailed report, on stdout."""
    print(text, flush=True)


def format_rate(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.1f}"


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def summary_table(rows: Sequence[Row]) -> str:
    header = Row("phase", "measure", "value", "baseline", "ratio")
    table = [header, *rows]
    widths = [
        max(len(row.phase) for row in table),
        max(len(row.measure) for row in table),
        max(len(row.value) for row in table),
        max(len(row.baseline) for row in table),
    ]
    lines = []
    for row in table:
        cells = (row.phase, row.measure, row.value, row.baseline)
        padded = "  ".join(
            cell.ljust(width) for cell, width in zip(cells, widths, strict=True)
        )
        lines.append(f"{padded}  {row.ratio}")
    return "\n".join(lines)
