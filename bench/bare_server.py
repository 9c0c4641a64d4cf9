"""The baseline server: one aiohttp GET handler answering ``{"ok": true}``.

It runs the way ``sigil serve`` does (``web.AppRunner`` without an access
log, one process, the default event loop), so the ratio of the two shows
what the signing work costs on top of aiohttp itself.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Sequence

from aiohttp import web

__all__ = ["main"]


async def _ok(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def _serve(port: int) -> None:
    app = web.Application()
    app.router.add_get("/", _ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        print(f"bare aiohttp serving on http://127.0.0.1:{port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bare_server")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
