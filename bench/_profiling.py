"""Text summaries of cProfile runs, for ``python -m bench --profile``."""

from __future__ import annotations

import cProfile
import io
import pstats
from pathlib import Path

__all__ = ["write_profile"]

_TOP = 45


def write_profile(profiler: cProfile.Profile, prefix: Path, title: str) -> None:
    """Write ``<prefix>.prof`` and the top functions to ``<prefix>-profile.txt``.

    The text lists the functions with the most own time, then the most
    cumulative time; load the ``.prof`` in pstats or snakeviz for more.
    """
    prefix.parent.mkdir(parents=True, exist_ok=True)
    profiler.dump_stats(f"{prefix}.prof")
    out = io.StringIO()
    out.write(f"{title}\n\n")
    for key in ("tottime", "cumulative"):
        out.write(f"==== sorted by {key}\n")
        stats = pstats.Stats(profiler, stream=out)
        stats.strip_dirs().sort_stats(key).print_stats(_TOP)
    Path(f"{prefix}-profile.txt").write_text(out.getvalue(), encoding="utf-8")
