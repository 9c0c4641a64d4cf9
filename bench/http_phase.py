"""HTTP phase: whole transactions per second against a bare aiohttp handler.

The real server runs as ``sigil serve`` in its own process, on a home made
for the run by ``sigil init`` (its own SoftHSM2 token, CA, VAPID key and
SQLite file). The relying app and the 32 simulated phones run in a
separate load-generator process (``bench.loadgen``), so the server's CPU
is its own. One transaction is four HTTP requests to the server and one
from it: the relying app creates the request, the server sends the
encrypted Web Push to the phone, the phone fetches the details and posts
its approval with the SAD, and the relying app's long poll returns the
signature.

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
    run_tool,
)
from bench._report import Plan, Row, detail, format_rate, progress

__all__ = ["TARGET_RATE", "HttpResult", "run"]

TARGET_RATE = 500.0
_START_LIMIT = 60.0
_SETUP_LIMIT = 180.0


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What the load generator measured, and the CPU both sides used."""

    rate: float
    completed: int
    latency: dict[str, float] | None
    over_1s: int
    to_answer: dict[str, float] | None
    after_answer: dict[str, float] | None
    failures: int
    errors: dict[str, int]
    server_cores: float | None
    server_loop_cores: float | None
    loadgen_cores: float | None
    server_peak_rss_kib: int | None

    @property
    def p50(self) -> float | None:
        return None if self.latency is None else self.latency["p50"]

    @property
    def p95(self) -> float | None:
        return None if self.latency is None else self.latency["p95"]

    @classmethod
    def parse(
        cls,
        report: dict[str, Any],
        cores: tuple[float | None, float | None, float | None],
        rss: int | None,
    ) -> LoadResult:
        return cls(
            rate=float(report["rate"]),
            completed=int(report["completed"]),
            latency=report["latency"],
            over_1s=int(report["over_1s"]),
            to_answer=report["to_answer"],
            after_answer=report["after_answer"],
            failures=int(report["failures"]),
            errors={str(k): int(v) for k, v in report["errors"].items()},
            server_cores=cores[0],
            server_loop_cores=cores[1],
            loadgen_cores=cores[2],
            server_peak_rss_kib=rss,
        )


@dataclass(frozen=True, slots=True)
class HttpResult:
    sigil: LoadResult
    bare: LoadResult
    rows: tuple[Row, ...]


@dataclass(frozen=True, slots=True)
class _CpuSample:
    at: float
    server: tuple[float, float] | None
    loadgen: tuple[float, float] | None

    @classmethod
    def take(cls, server: Child, loadgen: Child) -> _CpuSample:
        return cls(
            asyncio.get_running_loop().time(),
            cpu_seconds(server.pid),
            cpu_seconds(loadgen.pid),
        )


def _cores(
    before: _CpuSample, after: _CpuSample
) -> tuple[float | None, float | None, float | None]:
    """Cores busy between two samples: server, its event loop, load generator."""
    seconds = after.at - before.at
    if seconds <= 0:
        return None, None, None
    server = loop = loadgen = None
    if before.server is not None and after.server is not None:
        server = (after.server[0] - before.server[0]) / seconds
        loop = (after.server[1] - before.server[1]) / seconds
    if before.loadgen is not None and after.loadgen is not None:
        loadgen = (after.loadgen[0] - before.loadgen[0]) / seconds
    return server, loop, loadgen


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
        before = _CpuSample.take(server, loadgen)
        await loadgen.wait_for("window-end", plan.http_seconds + 30)
        after = _CpuSample.take(server, loadgen)
        rss = peak_rss_kib(server.pid)
        line = await loadgen.wait_for("result ", 60)
        await loadgen.finish(30)
    finally:
        await loadgen.stop()
    report = json.loads(line.removeprefix("result "))
    return LoadResult.parse(report, _cores(before, after), rss)


async def _sigil(plan: Plan, home: Path, profile_dir: Path | None) -> LoadResult:
    env = child_env(SIGIL_HOME=str(home))
    progress("http: sigil init in a temporary home (token, CA, VAPID key)")
    await run_tool([str(BIN / "sigil"), "init"], env, "sigil init")
    key_file = home / "bench-api-key"
    await run_tool(
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


def _spread(stats: dict[str, float] | None) -> str:
    if stats is None:
        return "-"
    return "  ".join(
        f"{name} {stats[name] * 1e3:.1f} ms" for name in ("p50", "p95", "p99", "max")
    )


def _report(result: LoadResult, label: str, unit: str, seconds: float) -> None:
    detail(f"  {label:<20} {result.rate:7.0f} {unit}/s   {_spread(result.latency)}")
    errors = ", ".join(f"{k} {v}" for k, v in result.errors.items()) or "none"
    detail(
        f"      {result.completed} completed in the {seconds:g} s window, "
        f"{result.failures} failed (errors: {errors}), {result.over_1s} over 1 s"
    )
    if result.to_answer is not None:
        detail(f"      until the phone had its answer: {_spread(result.to_answer)}")
        detail(
            f"      then until the relying app had it: {_spread(result.after_answer)}"
        )
    detail(
        f"      CPU cores busy: server {_share(result.server_cores)} (event loop "
        f"thread {_share(result.server_loop_cores)}), load generator "
        f"{_share(result.loadgen_cores)}"
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
        detail(
            "  server under cProfile, rates are lower than in a plain run: "
            f"{profile_dir / 'bench-server-profile.txt'}"
        )
    _report(sigil, "sigil transactions", "tx", plan.http_seconds)
    _report(bare, "bare aiohttp GET", "req", plan.http_seconds)
    server_tx = _per_tx(sigil.server_cores, sigil, plan.http_seconds)
    loop_tx = _per_tx(sigil.server_loop_cores, sigil, plan.http_seconds)
    loadgen_tx = _per_tx(sigil.loadgen_cores, sigil, plan.http_seconds)
    if server_tx is not None and loop_tx is not None and loadgen_tx is not None:
        cores = os.cpu_count() or 1
        detail(
            f"  CPU per transaction: server {server_tx * 1e3:.2f} ms (event loop "
            f"{loop_tx * 1e3:.2f} ms, worker threads "
            f"{(server_tx - loop_tx) * 1e3:.2f} ms), load generator "
            f"{loadgen_tx * 1e3:.2f} ms"
        )
        detail(
            f"  so one event loop caps the server near {1 / loop_tx:.0f} tx/s, and "
            f"{cores} cores shared by server and load generator near "
            f"{cores / (server_tx + loadgen_tx):.0f} tx/s"
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
    if server_tx is not None:
        rows.append(
            Row("http", "server CPU per transaction", f"{server_tx * 1e3:.2f} ms")
        )
    if rss is not None:
        rows.append(Row("http", "server peak RSS (VmHWM)", f"{rss / 1024:.1f} MiB"))
    return HttpResult(sigil, bare, tuple(rows))
