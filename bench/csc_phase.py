"""csc phase: ``signatures/signHash`` of one hash, Sigil next to
certomancer-csc-dummy.

Both servers run as processes of their own and are driven, one after the
other, by the same load generator (``bench.csc_load``) in a third process,
with the same number of workers for the same time, over CSC v1 with the
same request body. Only what a call needs before the clock starts differs:

* Sigil (``sigil serve`` on a home made by ``sigil init``, SoftHSM2 and
  SQLite, as in the http phase): a user enrols a simulated phone, which
  approves authorisations of ``hashes_per_sad`` fresh hashes each (the
  server's default ``[csc] multisign`` of 32 unless the plan asks for more,
  which is then written to the home's sigil.toml). Every call spends one
  hash of a valid SAD: the server checks the SAD against the stored
  authorisation, reserves the hash, signs it in the HSM and stores the
  signature with a ``key.use`` audit record. No hash is used twice.
* certomancer-csc-dummy (``bench.csc_dummy_server``): keys in memory, one
  SCAL 1 SAD for every call, no accounting, no audit, signing on the event
  loop with ``cryptography``. It is the rate of a CSC server that does none
  of the work above, on this machine.

The ratio Sigil/dummy is the figure; the target is at least 1.0.
Afterwards the phase checks a few signatures of each server against its
certificate, sends one signed hash again (Sigil must refuse it, the dummy
signs it again), and counts Sigil's ``key.use`` records against the calls
that were answered with a signature.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import sqlite3
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
    run_tool,
)
from bench._report import Plan, Row, detail, format_rate, progress

__all__ = ["TARGET_RATIO", "CscPlan", "CscResult", "csc_plan", "run"]

TARGET_RATIO = 1.0
_START_LIMIT = 60.0
_SETUP_LIMIT = 120.0
DEFAULT_MULTISIGN = 32


@dataclass(frozen=True, slots=True)
class CscPlan:
    """Durations and sizes of the csc phase, for a full or a quick run."""

    warmup: float
    seconds: float
    concurrency: tuple[int, ...]
    hashes_per_sad: int
    # Hashes authorised before the clock starts, per concurrency level: more
    # than the fastest rate seen here times warm-up plus window. A level that
    # runs out stops early and says so; its rate stays a rate.
    budget: tuple[int, ...]


def csc_plan(plan: Plan) -> CscPlan:
    if plan.quick:
        return CscPlan(
            warmup=0.5,
            seconds=2.5,
            concurrency=(1, 16),
            hashes_per_sad=DEFAULT_MULTISIGN,
            budget=(1_600, 3_200),
        )
    return CscPlan(
        warmup=2.0,
        seconds=10.0,
        concurrency=(1, 16),
        hashes_per_sad=DEFAULT_MULTISIGN,
        budget=(6_000, 12_000),
    )


@dataclass(frozen=True, slots=True)
class Level:
    """One concurrency level of one server: what the load generator saw and
    the CPU both processes used in its window."""

    concurrency: int
    rate: float
    completed: int
    seconds: float
    latency: dict[str, float] | None
    failures: int
    errors: dict[str, int]
    exhausted: bool
    server_cores: float | None
    server_loop_cores: float | None
    loadgen_cores: float | None

    @property
    def p50(self) -> float | None:
        return None if self.latency is None else self.latency["p50"]

    @property
    def p95(self) -> float | None:
        return None if self.latency is None else self.latency["p95"]

    def server_cpu_per_call(self) -> float | None:
        if self.server_cores is None or not self.completed:
            return None
        return self.server_cores * self.seconds / self.completed


@dataclass(frozen=True, slots=True)
class Side:
    name: str
    levels: tuple[Level, ...]
    setup_seconds: float
    ok_calls: int
    checked: int
    verified: int
    replay: dict[str, Any] | None
    sads: int
    audit_key_use: int | None = None

    def level(self, concurrency: int) -> Level:
        return next(x for x in self.levels if x.concurrency == concurrency)


@dataclass(frozen=True, slots=True)
class CscResult:
    sigil: Side
    dummy: Side
    rows: tuple[Row, ...]


# -- processes ----------------------------------------------------------------


def _cpu(server: Child, loadgen: Child) -> tuple[float, Any, Any]:
    return (
        asyncio.get_running_loop().time(),
        cpu_seconds(server.pid),
        cpu_seconds(loadgen.pid),
    )


def _cores(
    before: tuple[float, Any, Any], after: tuple[float, Any, Any]
) -> tuple[float | None, float | None, float | None]:
    seconds = after[0] - before[0]
    if seconds <= 0:
        return None, None, None
    server = loop = loadgen = None
    if before[1] is not None and after[1] is not None:
        server = (after[1][0] - before[1][0]) / seconds
        loop = (after[1][1] - before[1][1]) / seconds
    if before[2] is not None and after[2] is not None:
        loadgen = (after[2][0] - before[2][0]) / seconds
    return server, loop, loadgen


async def _line(child: Child, exact: str, timeout: float) -> None:
    """Wait for a line that is exactly ``exact``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (await child.wait_for(exact, max(0.1, deadline - loop.time()))) != exact:
        pass


async def _drive(
    server: Child, name: str, cplan: CscPlan, extra: list[str], url: str
) -> Side:
    argv = [
        sys.executable,
        "-m",
        "bench.csc_load",
        "--url",
        url,
        "--concurrency",
        ",".join(str(c) for c in cplan.concurrency),
        "--warmup",
        str(cplan.warmup),
        "--seconds",
        str(cplan.seconds),
        *extra,
    ]
    loadgen = await Child.start(
        f"csc load generator ({name})", argv, env=child_env(), stderr_to_stdout=False
    )
    cores: dict[int, tuple[float | None, float | None, float | None]] = {}
    try:
        await loadgen.wait_for("ready ", _SETUP_LIMIT)
        for level in cplan.concurrency:
            workers = "1 worker" if level == 1 else f"{level} workers"
            progress(
                f"csc: {name}: {workers}, {cplan.warmup:g} s warm-up, "
                f"{cplan.seconds:g} s measured"
            )
            await _line(loadgen, f"window-start {level}", cplan.warmup + 30)
            before = _cpu(server, loadgen)
            await _line(loadgen, f"window-end {level}", cplan.seconds + 30)
            cores[level] = _cores(before, _cpu(server, loadgen))
        line = await loadgen.wait_for("result ", 60)
        await loadgen.finish(30)
    finally:
        await loadgen.stop()
    report = json.loads(line.removeprefix("result "))
    levels = []
    for window in report["windows"]:
        server_cores, loop_cores, loadgen_cores = cores.get(
            int(window["concurrency"]), (None, None, None)
        )
        levels.append(
            Level(
                concurrency=int(window["concurrency"]),
                rate=float(window["rate"]),
                completed=int(window["completed"]),
                seconds=float(window["seconds"]),
                latency=window["latency"],
                failures=int(window["failures"]),
                errors={str(k): int(v) for k, v in window["errors"].items()},
                exhausted=bool(window["exhausted"]),
                server_cores=server_cores,
                server_loop_cores=loop_cores,
                loadgen_cores=loadgen_cores,
            )
        )
    return Side(
        name=name,
        levels=tuple(levels),
        setup_seconds=float(report["setup_seconds"]),
        ok_calls=int(report["ok_calls"]),
        checked=int(report["checked"]),
        verified=int(report["verified"]),
        replay=report["replay"],
        sads=int(report["sads"]),
    )


def _set_multisign(config: Path, multisign: int) -> None:
    """Write ``[csc] multisign`` into the home's sigil.toml."""
    text = config.read_text(encoding="utf-8")
    if "\n[csc]\n" in text:
        text = text.replace("\n[csc]\n", f"\n[csc]\nmultisign = {multisign}\n", 1)
    else:
        text = text.rstrip("\n") + f"\n\n[csc]\nmultisign = {multisign}\n"
    config.write_text(text, encoding="utf-8")


def _count_key_use(database: Path) -> int | None:
    """Successful ``key.use`` audit records in a stopped server's SQLite file."""
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
            row = db.execute(
                "SELECT count(*) FROM audit WHERE event = 'key.use'"
                " AND outcome = 'success'"
            ).fetchone()
    except sqlite3.Error:
        return None
    return int(row[0])


async def _sigil(cplan: CscPlan, home: Path, profile_dir: Path | None) -> Side:
    env = child_env(SIGIL_HOME=str(home))
    progress("csc: sigil init in a temporary home (token, CA, SQLite)")
    await run_tool([str(BIN / "sigil"), "init"], env, "sigil init")
    if cplan.hashes_per_sad > DEFAULT_MULTISIGN:
        _set_multisign(home / "sigil.toml", cplan.hashes_per_sad)
    key_file = home / "bench-api-key"
    await run_tool(
        [
            str(BIN / "sigil"),
            "client",
            "create",
            "--name",
            "Bench CSC Client",
            "--key-file",
            str(key_file),
        ],
        env,
        "sigil client create",
    )
    port = free_port()
    argv = [str(BIN / "sigil"), "serve", "--port", str(port)]
    if profile_dir is not None:
        argv = [
            sys.executable,
            "-m",
            "bench.profiled_server",
            "--port",
            str(port),
            "--out",
            str(profile_dir / "bench-csc-server"),
        ]
    server = await Child.start("sigil serve", argv, env=env)
    sads = [math.ceil(b / cplan.hashes_per_sad) for b in cplan.budget]
    try:
        await server.wait_for("serving on", _START_LIMIT)
        progress(
            f"csc: sigil: enrolling a phone, which approves {sum(sads)} "
            f"authorisations of {cplan.hashes_per_sad} hashes"
        )
        side = await _drive(
            server,
            "sigil",
            cplan,
            [
                "--target",
                "sigil",
                "--api-key-file",
                str(key_file),
                "--hashes-per-sad",
                str(cplan.hashes_per_sad),
                "--sads",
                ",".join(str(s) for s in sads),
            ],
            f"http://127.0.0.1:{port}",
        )
    finally:
        status = await server.stop()
        if status not in (0, None):
            progress(f"csc: sigil serve exited with status {status}")
    return dataclasses.replace(side, audit_key_use=_count_key_use(home / "sigil.db"))


async def _dummy(cplan: CscPlan, folder: Path) -> Side:
    progress("csc: certomancer-csc-dummy: P-256 keys made for this run, SCAL 1")
    port = free_port()
    server = await Child.start(
        "certomancer-csc-dummy",
        [
            sys.executable,
            "-m",
            "bench.csc_dummy_server",
            "--port",
            str(port),
            "--keys",
            str(folder),
        ],
        env=child_env(),
    )
    try:
        await server.wait_for("serving on", _START_LIMIT)
        return await _drive(
            server,
            "dummy",
            cplan,
            ["--target", "dummy"],
            f"http://127.0.0.1:{port}",
        )
    finally:
        await server.stop()


# -- report -------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1e3:.2f} ms"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _level_line(label: str, level: Level) -> str:
    stats = level.latency or {}
    spread = "  ".join(
        f"{name} {_ms(stats.get(name))}" for name in ("p50", "p95", "p99")
    )
    return f"  {label:<8} {level.rate:7.0f} calls/s  {spread}"


def _level_detail(level: Level) -> list[str]:
    errors = ", ".join(f"{k} x{v}" for k, v in level.errors.items()) or "none"
    short = "; RAN OUT OF AUTHORISED HASHES, window cut short" * level.exhausted
    lines = [
        f"           {level.completed} signed in the {level.seconds:g} s window, "
        f"{level.failures} failed (errors: {errors}){short}",
        f"           CPU cores busy: server {_share(level.server_cores)} (event loop "
        f"{_share(level.server_loop_cores)}), load generator "
        f"{_share(level.loadgen_cores)}; server CPU per call "
        f"{_ms(level.server_cpu_per_call())}",
    ]
    if level.loadgen_cores is not None and level.loadgen_cores > 0.9:
        lines.append(
            "           the load generator was saturated: this rate is a lower "
            "bound of what the server can do"
        )
    return lines


def _replay(side: Side) -> str:
    if side.replay is None:
        return "not tried"
    return f"HTTP {side.replay['status']} ({side.replay['answer']})"


def _report(cplan: CscPlan, sigil: Side, dummy: Side, *, profiled: bool) -> list[Row]:
    detail(
        "== csc: signatures/signHash of one SHA-256 hash, EC P-256, CSC v1, "
        "same load generator"
    )
    if profiled:
        detail(
            "  sigil serve under cProfile, its rates are lower than in a plain "
            "run: build/bench-csc-server-profile.txt"
        )
    detail(
        f"  sigil: sigil serve, SoftHSM2, SQLite; {sigil.sads} authorisations of "
        f"{cplan.hashes_per_sad} hashes approved on a simulated phone in "
        f"{sigil.setup_seconds:.1f} s; each call spends one hash"
    )
    detail(
        "  dummy: certomancer-csc-dummy, keys in memory, one SCAL 1 SAD for "
        "every call, no accounting, no audit"
    )
    rows: list[Row] = []
    for concurrency in cplan.concurrency:
        ours, theirs = sigil.level(concurrency), dummy.level(concurrency)
        ratio = ours.rate / theirs.rate if theirs.rate else 0.0
        workers = "1 worker" if concurrency == 1 else f"{concurrency} workers"
        detail(f"  {workers}, {cplan.warmup:g} s warm-up, {cplan.seconds:g} s window")
        detail(_level_line("sigil", ours))
        for line in _level_detail(ours):
            detail(line)
        detail(_level_line("dummy", theirs))
        for line in _level_detail(theirs):
            detail(line)
        verdict = "PASS" if ratio >= TARGET_RATIO else "BELOW TARGET"
        detail(f"  sigil/dummy {ratio:.2f} (target >= {TARGET_RATIO:.1f}): {verdict}")
        rows.append(
            Row(
                "csc",
                f"signHash/s, 1 hash, {workers}",
                f"sigil {format_rate(ours.rate)}",
                f"dummy {format_rate(theirs.rate)}",
                f"{ratio:.2f} {verdict}",
            )
        )
        rows.append(
            Row(
                "csc",
                f"signHash p50 / p95, {workers}",
                f"{_ms(ours.p50)} / {_ms(ours.p95)}",
                f"{_ms(theirs.p50)} / {_ms(theirs.p95)}",
            )
        )
    detail(
        f"  signatures checked against the certificate: sigil {sigil.verified} of "
        f"{sigil.checked}, dummy {dummy.verified} of {dummy.checked}"
    )
    detail(f"  a signed hash sent again with its SAD: sigil {_replay(sigil)}")
    detail(f"                                       dummy {_replay(dummy)}")
    if sigil.audit_key_use is not None:
        detail(
            f"  sigil audit: {sigil.audit_key_use} key.use records for "
            f"{sigil.ok_calls} calls answered with a signature"
        )
    detail("")
    return rows


async def run(
    plan: Plan,
    directory: Path,
    profile_dir: Path | None = None,
    cplan: CscPlan | None = None,
) -> CscResult:
    """Run the phase. With ``profile_dir``, Sigil's server runs under cProfile
    (bench/profiled_server.py: build/bench-csc-server.prof and
    -profile.txt) and its rates are lower. ``cplan`` replaces the plan's
    sizes (for the tests)."""
    cplan = cplan or csc_plan(plan)
    sigil = await _sigil(cplan, directory / "sigil", profile_dir)
    dummy = await _dummy(cplan, directory / "dummy")
    rows = _report(cplan, sigil, dummy, profiled=profile_dir is not None)
    for side in (sigil, dummy):
        if not any(level.completed for level in side.levels):
            raise ChildFailed(f"no signHash call of the {side.name} completed")
    return CscResult(sigil, dummy, tuple(rows))
