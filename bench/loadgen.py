"""The load generator: relying app and simulated phones in their own process.

``python -m bench.loadgen`` runs one of two loads against a server on
127.0.0.1 and reports on standard output, one line per event:

* ``ready`` once set up, ``window-start`` and ``window-end`` around the
  measured window (the parent samples CPU time then), and last
  ``result <JSON>``;
* progress and warnings go to standard error.

``sigil`` mode enrols one :class:`mobile_stub.SimulatedPhone` per user and
runs one loop per user: create a request as the relying app, let the push
reach the phone, which fetches, shows and approves it with a SAD, and
long-poll the request until it is final. ``bare`` mode runs the same number
of loops of ``GET /`` against a trivial JSON handler.

Every loop stops starting work at the end of the window; the whole run is
bounded by a hard time limit.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench._report import percentile
from mobile_stub import Policy, ShownRequest, SimulatedPhone
from rp_client import ApiFailure, RelyingPartyClient

__all__ = ["main"]

# How long a phone waits for the code the relying app shows, and how long a
# transaction may take before it counts as failed.
_CODE_WAIT = 10.0
_TRANSACTION_LIMIT = 30.0
# Extra time, past warm-up and window, after which the process gives up.
_SLACK = 90.0
_SHOWN_WARNINGS = 10
_PERCENTILES = (("p50", 0.50), ("p95", 0.95), ("p99", 0.99))


def _say(line: str) -> None:
    print(line, flush=True)


def _note(text: str) -> None:
    print(f"[loadgen] {text}", file=sys.stderr, flush=True)


class _CappedHandler(logging.Handler):
    """Shows the first few warnings, counts the rest."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if self.count <= _SHOWN_WARNINGS:
            _note(f"{record.levelname.lower()} {record.name}: {record.getMessage()}")


class CodeBoard:
    """What the relying app shows, read by the simulated user on the phone.

    The push may reach the phone before the relying app has its answer, so
    a phone waits here for the code rather than guessing.
    """

    def __init__(self) -> None:
        self._codes: dict[str, asyncio.Future[str]] = {}

    def _slot(self, request_id: str) -> asyncio.Future[str]:
        slot = self._codes.get(request_id)
        if slot is None:
            slot = asyncio.get_running_loop().create_future()
            self._codes[request_id] = slot
        return slot

    def show(self, request_id: str, code: str) -> None:
        slot = self._slot(request_id)
        if not slot.done():
            slot.set_result(code)

    def forget(self, request_id: str) -> None:
        slot = self._codes.pop(request_id, None)
        if slot is not None and not slot.done():
            slot.cancel()

    async def read(self, request_id: str) -> str | None:
        # A slot forgotten (cancelled) after its transaction ended cancels
        # the phone's task that still waits on it, which is what we want.
        try:
            return await asyncio.wait_for(
                asyncio.shield(self._slot(request_id)), _CODE_WAIT
            )
        except TimeoutError:
            return None


@dataclass
class _Window:
    """The measured window and what completed inside it."""

    start: float
    end: float
    latencies: list[float] = field(default_factory=list)
    # sigil mode: from the request's creation until the phone's approval was
    # answered, and from then until the relying app had the result.
    to_answer: list[float] = field(default_factory=list)
    after_answer: list[float] = field(default_factory=list)
    failures: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)

    def record(self, begun: float, finished: float, outcome: Outcome) -> None:
        if not self.start <= finished <= self.end:
            return
        ok, answered = outcome
        if not ok:
            self.failures += 1
            return
        self.latencies.append(finished - begun)
        if answered is not None:
            self.to_answer.append(answered - begun)
            self.after_answer.append(finished - answered)

    def error(self, finished: float, error: BaseException) -> None:
        self.errors[type(error).__name__] += 1
        if self.start <= finished <= self.end:
            self.failures += 1


async def _announce(window: _Window) -> None:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, window.start - loop.time()))
    _say("window-start")
    await asyncio.sleep(max(0.0, window.end - loop.time()))
    _say("window-end")


# Whether a step succeeded, and (sigil mode) when the phone's approval was
# answered, in event loop time.
Outcome = tuple[bool, float | None]
Step = Callable[[], Awaitable[Outcome]]


async def _loop(step: Step, window: _Window) -> None:
    """Repeat ``step`` until the window ends; record each outcome."""
    loop = asyncio.get_running_loop()
    while loop.time() < window.end:
        begun = loop.time()
        try:
            async with asyncio.timeout(_TRANSACTION_LIMIT):
                outcome = await step()
        except (ApiFailure, aiohttp.ClientError, TimeoutError, KeyError) as e:
            window.error(loop.time(), e)
            await asyncio.sleep(0.05)  # no hot loop against a failing server
            continue
        window.record(begun, loop.time(), outcome)


async def _run_window(steps: Sequence[Step], warmup: float, seconds: float) -> _Window:
    loop = asyncio.get_running_loop()
    start = loop.time() + warmup
    window = _Window(start=start, end=start + seconds)
    announcer = asyncio.create_task(_announce(window))
    await asyncio.gather(*(_loop(step, window) for step in steps))
    await announcer
    return window


def _stats(values: list[float]) -> dict[str, float] | None:
    """Percentiles and the maximum, in seconds."""
    if not values:
        return None
    stats = {name: percentile(values, fraction) for name, fraction in _PERCENTILES}
    stats["max"] = max(values)
    return stats


def _result(mode: str, window: _Window, extra: dict[str, Any]) -> dict[str, Any]:
    seconds = window.end - window.start
    return {
        "mode": mode,
        "completed": len(window.latencies),
        "seconds": seconds,
        "rate": len(window.latencies) / seconds,
        "latency": _stats(window.latencies),
        "over_1s": sum(1 for value in window.latencies if value > 1.0),
        "to_answer": _stats(window.to_answer),
        "after_answer": _stats(window.after_answer),
        "failures": window.failures,
        "errors": dict(window.errors),
        **extra,
    }


async def _sigil(args: argparse.Namespace, warnings: _CappedHandler) -> dict[str, Any]:
    api_key: str = args.api_key
    board = CodeBoard()
    answered: dict[str, float] = {}
    suffix = secrets.token_hex(3)

    def on_shown(shown: ShownRequest) -> None:
        answered[shown.request_id] = asyncio.get_running_loop().time()

    timeout = aiohttp.ClientTimeout(total=_TRANSACTION_LIMIT + 10)
    async with AsyncExitStack() as stack:
        rp_session = await stack.enter_async_context(
            aiohttp.ClientSession(timeout=timeout)
        )
        phone_session = await stack.enter_async_context(
            aiohttp.ClientSession(timeout=timeout)
        )
        rp = RelyingPartyClient(args.url, api_key, rp_session)

        began = time.monotonic()
        users: list[str] = []
        for index in range(args.loops):
            user_id = f"bench-{suffix}-{index:02d}"
            await rp.create_user(f"Bench Signer {index}", user_id=user_id)
            code = await rp.activation_code(user_id)
            phone = SimulatedPhone(
                args.url,
                policy=Policy.APPROVE,
                name=f"bench phone {index}",
                expected_code=board.read,
                session=phone_session,
                on_shown=on_shown,
            )
            await stack.enter_async_context(phone)
            await phone.enrol(code)
            users.append(user_id)
        setup = time.monotonic() - began
        _note(f"{len(users)} phones enrolled in {setup:.1f} s")
        _say("ready")

        def transaction(user_id: str) -> Step:
            async def step() -> Outcome:
                created = await rp.request_signature(
                    user_id=user_id,
                    hashes=[secrets.token_bytes(32)],
                    display_text="Sign the bench document",
                )
                request_id = created["request_id"]
                board.show(request_id, created["verification_code"])
                try:
                    final = await rp.wait_final(request_id, timeout=_TRANSACTION_LIMIT)
                finally:
                    board.forget(request_id)
                ok = final["state"] == "signed" and bool(final.get("signatures"))
                return ok, answered.pop(request_id, None)

            return step

        window = await _run_window(
            [transaction(user) for user in users], args.warmup, args.seconds
        )
    return _result(
        "sigil",
        window,
        {"setup_seconds": setup, "warnings": warnings.count},
    )


async def _bare(args: argparse.Namespace, warnings: _CappedHandler) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=_TRANSACTION_LIMIT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        _say("ready")

        async def step() -> Outcome:
            async with session.get(args.url + "/") as response:
                body = await response.json()
            return response.status == 200 and body == {"ok": True}, None

        window = await _run_window([step] * args.loops, args.warmup, args.seconds)
    return _result("bare", window, {"warnings": warnings.count})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.loadgen",
        description="Drive a server on 127.0.0.1 with concurrent loops.",
    )
    parser.add_argument("--url", required=True, help="http://127.0.0.1:PORT")
    parser.add_argument("--mode", choices=["sigil", "bare"], required=True)
    parser.add_argument("--loops", type=int, default=32, help="concurrent loops")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds")
    parser.add_argument("--seconds", type=float, default=20.0, help="window")
    parser.add_argument("--api-key-file", help="relying app API key (sigil mode)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.url.startswith("http://127.0.0.1:"):
        print("error: the load generator targets 127.0.0.1 only", file=sys.stderr)
        return 2
    if args.mode == "sigil" and not args.api_key_file:
        print("error: sigil mode needs --api-key-file", file=sys.stderr)
        return 2
    if args.api_key_file:
        args.api_key = Path(args.api_key_file).read_text(encoding="utf-8").strip()
    warnings = _CappedHandler()
    logging.basicConfig(level=logging.WARNING, handlers=[warnings])
    run = _sigil if args.mode == "sigil" else _bare

    async def bounded() -> dict[str, Any]:
        async with asyncio.timeout(args.warmup + args.seconds + _SLACK):
            return await run(args, warnings)

    result = asyncio.run(bounded())
    if warnings.count > _SHOWN_WARNINGS:
        _note(f"{warnings.count - _SHOWN_WARNINGS} more warnings not shown")
    _say("result " + json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
