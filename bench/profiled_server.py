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
import logging
from collections.abc import Sequence
from pathlib import Path

from bench._profiling import write_profile
from server.cli import cmd_serve
from server.config import load_settings

__all__ = ["main"]


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

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        status = asyncio.run(cmd_serve(serve_args, settings))
    finally:
        profiler.disable()
        write_profile(
            profiler,
            Path(args.out),
            "sigil serve under cProfile, event loop thread, python -m bench --profile",
        )
    return status


if __name__ == "__main__":
    raise SystemExit(main())
