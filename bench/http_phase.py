"""HTTP phase: whole transactions per second against a bare aiohttp handler.

The real server runs as ``sigil serve`` in its own process, on a home made
for the run by ``sigil init`` (its own SoftHSM2 token, CA, VAPID key and
SQLite file). The relying app and the 32 simulated phones run in a
separate load-generator process (``bench.loadgen``), so the server's CPU
is its own. One transaction is five HTTP exchanges with the server and one
from it: create the request, the encrypted Web Push to the phone, the
phone's fetch, its approval with the SAD, and the relying app's long poll
that returns the signature (the push goes from the server to the phone).

The same load generator then drives a trivial aiohttp JSON handler with the
same number of loops for the same time; the ratio of the two rates shows
how far the signing path is from aiohttp's own request rate.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._procs import (
    BIN,
    Child,
    ChildFailed,
    child_env,
    cpu_seconds,
    free_port,
    peak_rss_kib,
)
from bench._report import Plan, Row, detail, format_rate, progress

__all__ = ["TARGET_RATE", "HttpResult", "run"]

TARGET_RATE = 500.0
_TOOL_LIMIT = 120.0
_START_LIMIT = 60.0
_SETUP_LIMIT = 180.0


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What the load generator measured, and the CPU both sides used."""

    rate: float
    completed: int
    p50: float | None
    p95: float | None
    p99: float | None
    failures: int
    errors: dict[str, int]
    server_cores: float | None
    loadgen_cores: float | None
    server_peak_rss_kib: int | None

    @classmethod
    def parse(
        cls,
        report: dict[str, Any],
        cores: tuple[float | None, float | None],
        rss: int | None,
    ) -> LoadResult:
        return cls(
            rate=float(report["rate"]),
            completed=int(report["completed"]),
            p50=report["p50"],
            p95=report["p95"],
            p99=report["p99"],
            failures=int(report["failures"]),
            errors={str(k): int(v) for k, v in report["errors"].items()},
            server_cores=cores[0],
            loadgen_cores=cores[1],
            server_peak_rss_kib=rss,
        )


@dataclass(frozen=True, slots=True)
class HttpResult:
    sigil: LoadResult
    bare: LoadResult
    rows: tuple[Row, ...]


async def _tool(argv: list[str], env: dict[str, str], what: str) -> None:
    child = await Child.start(what, argv, env=env)
    status = await child.finish(_TOOL_LIMIT)
    if status != 0:
        raise child.failure(f"exited with status {status}")


def _cpu_pair(server: Child, loadgen: Child) -> tuple[float | None, float | None]:
    return cpu_seconds(server.pid), cpu_seconds(loadgen.pid)


def _cores(before: float | None, after: float | None, seconds: float) -> float | None:
    if before is None or after is None or seconds <= 0:
        return None
    return (after - before) / seconds


async def _drive(
    server: Child, url: str, plan: Plan, mode: str, extra: list[str]
) -> LoadResult:
    """Run the load generator against ``server``; sample CPU over the window."""
    argv = [
        sys.executable,
        "-m",
        "bench.loadgen",
        "--url",
        url,
        "--mode",
        mode,
        "--loops",
        str(plan.phones),
        "--warmup",
        str(plan.http_warmup),
        "--seconds",
        str(plan.http_seconds),
        *extra,
    ]
    loadgen = await Child.start(
        f"load generator ({mode})", argv, env=child_env(), stderr_to_stdout=False
    )
    try:
        await loadgen.wait_for("ready", _SETUP_LIMIT)
        progress(
            f"http: {mode}: {plan.phones} loops, {plan.http_warmup:g} s warm-up, "
            f"{plan.http_seconds:g} s measured"
        )
        await loadgen.wait_for("window-start", plan.http_warmup + 30)
        loop = asyncio.get_running_loop()
        started, before = loop.time(), _cpu_pair(server, loadgen)
        await loadgen.wait_for("window-end", plan.http_seconds + 30)
        elapsed, after = loop.time() - started, _cpu_pair(server, loadgen)
        rss = peak_rss_kib(server.pid)
        line = await loadgen.wait_for("result ", 60)
        await loadgen.finish(30)
    finally:
        await loadgen.stop()
    report = json.loads(line.removeprefix("result "))
    cores = (
        _cores(before[0], after[0], elapsed),
        _cores(before[1], after[1], elapsed),
    )
    return LoadResult.parse(report, cores, rss)


async def _sigil(plan: Plan, home: Path, profile_dir: Path | None) -> LoadResult:
    env = child_env(SIGIL_HOME=str(home))
    progress("http: sigil init in a temporary home (token, CA, VAPID key)")
    await _tool([str(BIN / "sigil"), "init"], env, "sigil init")
    key_file = home / "bench-api-key"
    await _tool(
        [
            str(BIN / "sigil"),
            "client",
            "create",
            "--name",
            "Bench Portal",
            "--key-file",
            str(key_file),
        ],
        env,
        "sigil client create",
    )
    port = free_port()
    if profile_dir is None:
        argv = [str(BIN / "sigil"), "serve", "--port", str(port)]
    else:
        argv = [
            sys.executable,
            "-m",
            "bench.profiled_server",
            "--port",
            str(port),
            "--out",
            str(profile_dir / "bench-server"),
        ]
    server = await Child.start("sigil serve", argv, env=env)
    try:
        await server.wait_for("serving on", _START_LIMIT)
        progress(f"http: enrolling {plan.phones} simulated phones")
        return await _drive(
            server,
            f"http://127.0.0.1:{port}",
            plan,
            "sigil",
            ["--api-key-file", str(key_file)],
        )
    finally:
        status = await server.stop()
        if status not in (0, None):
            progress(f"http: sigil serve exited with status {status}")


async def _bare(plan: Plan) -> LoadResult:
    port = free_port()
    server = await Child.start(
        "bare aiohttp server",
        [sys.executable, "-m", "bench.bare_server", "--port", str(port)],
        env=child_env(),
    )
    try:
        await server.wait_for("serving on", _START_LIMIT)
        return await _drive(server, f"http://127.0.0.1:{port}", plan, "bare", [])
    finally:
        await server.stop()


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1e3:.1f} ms"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _report(result: LoadResult, label: str, unit: str, seconds: float) -> None:
    detail(
        f"  {label:<20} {result.rate:7.0f} {unit}/s   p50 {_ms(result.p50)}   "
        f"p95 {_ms(result.p95)}   p99 {_ms(result.p99)}"
    )
    errors = ", ".join(f"{k} {v}" for k, v in result.errors.items()) or "none"
    detail(
        f"      {result.completed} completed in the {seconds:g} s window, "
        f"{result.failures} failed (errors: {errors})"
    )
    detail(
        f"      CPU cores busy: server {_share(result.server_cores)}, "
        f"load generator {_share(result.loadgen_cores)}"
    )
    if result.loadgen_cores is not None and result.loadgen_cores > 0.9:
        detail(
            "      the load generator was saturated: this rate is a lower bound "
            "of what the server can do"
        )


def _per_tx(cores: float | None, result: LoadResult, seconds: float) -> float | None:
    if cores is None or not result.completed:
        return None
    return cores * seconds / result.completed


async def run(plan: Plan, home: Path, profile_dir: Path | None) -> HttpResult:
    sigil = await _sigil(plan, home, profile_dir)
    progress("http: bare aiohttp JSON handler, same load generator")
    bare = await _bare(plan)

    ratio = sigil.rate / bare.rate if bare.rate else 0.0
    detail(f"== http: loopback, {plan.phones} concurrent loops, real server process")
    if profile_dir is not None:
        detail("  (server under cProfile: rates are lower than in a plain run)")
    _report(sigil, "sigil transactions", "tx", plan.http_seconds)
    _report(bare, "bare aiohttp GET", "req", plan.http_seconds)
    server_tx = _per_tx(sigil.server_cores, sigil, plan.http_seconds)
    loadgen_tx = _per_tx(sigil.loadgen_cores, sigil, plan.http_seconds)
    if server_tx is not None and loadgen_tx is not None:
        cores = os.cpu_count() or 1
        detail(
            f"  CPU per transaction: server {server_tx * 1e3:.2f} ms, "
            f"load generator {loadgen_tx * 1e3:.2f} ms; one core bounds the "
            f"server at {1 / server_tx:.0f} tx/s, and {cores} cores shared by "
            f"both at {cores / (server_tx + loadgen_tx):.0f} tx/s"
        )
    rss = sigil.server_peak_rss_kib
    if rss is not None:
        detail(f"  sigil serve peak RSS (VmHWM): {rss / 1024:.1f} MiB")
    gap = TARGET_RATE - sigil.rate
    verdict = "PASS" if gap <= 0 else f"BELOW TARGET by {gap:.0f} tx/s"
    detail(
        f"  target >= {TARGET_RATE:.0f} tx/s: {verdict} "
        f"({sigil.rate / TARGET_RATE:.2f} of the target)"
    )
    detail("")
    if sigil.completed == 0:
        raise ChildFailed("no transaction completed in the HTTP phase")

    rows = [
        Row(
            "http",
            f"transactions/s ({plan.phones} phones)",
            format_rate(sigil.rate),
            f"bare aiohttp {format_rate(bare.rate)}",
            f"{ratio:.3f}",
        ),
        Row(
            "http",
            "transaction p50 / p95",
            f"{_ms(sigil.p50)} / {_ms(sigil.p95)}",
        ),
        Row(
            "http",
            f"target {TARGET_RATE:.0f} tx/s",
            format_rate(sigil.rate),
            f"target {TARGET_RATE:.0f}",
            f"{sigil.rate / TARGET_RATE:.2f} {'PASS' if gap <= 0 else 'BELOW TARGET'}",
        ),
    ]
    if rss is not None:
        rows.append(Row("http", "server peak RSS (VmHWM)", f"{rss / 1024:.1f} MiB"))
    return HttpResult(sigil, bare, tuple(rows))
