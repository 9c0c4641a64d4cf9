"""``sigil serve`` under cProfile, for ``python -m bench --profile``.

Runs the server's own serve command in this process with the profiler on
for the event loop thread (the HSM and SQLite worker threads are not
profiled), and on SIGTERM writes the raw statistics and a text summary of
the top functions by own time and by cumulative time.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import logging
import pstats
from collections.abc import Sequence
from pathlib import Path

from server.cli import cmd_serve
from server.config import load_settings

__all__ = ["main", "write_summary"]

_TOP = 45


def write_summary(profiler: cProfile.Profile, path: Path, title: str) -> None:
    """The top functions by own and by cumulative time, as text."""
    out = io.StringIO()
    out.write(f"{title}\n\n")
    for key in ("tottime", "cumulative"):
        out.write(f"==== sorted by {key}\n")
        stats = pstats.Stats(profiler, stream=out)
        stats.strip_dirs().sort_stats(key).print_stats(_TOP)
    path.write_text(out.getvalue(), encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profiled_server")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--out", required=True, help="path prefix for .prof and -profile.txt"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = load_settings()
    serve_args = argparse.Namespace(host="127.0.0.1", port=args.port)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        status = asyncio.run(cmd_serve(serve_args, settings))
    finally:
        profiler.disable()
        profiler.dump_stats(f"{out}.prof")
        write_summary(
            profiler,
            Path(f"{out}-profile.txt"),
            "sigil serve under cProfile during python -m bench --profile",
        )
    return status


if __name__ == "__main__":
    raise SystemExit(main())
