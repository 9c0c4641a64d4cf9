"""``python -m bench``: options, the order of the phases, the summary table."""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bench._machine import CpuLedger, describe
from bench._procs import BENCH_ROOT, ChildFailed
from bench._report import Plan, Row, detail, progress, summary_table

if TYPE_CHECKING:
    from bench.store_phase import MongoTarget

__all__ = ["main"]

PHASES = ("hsm", "sam", "http", "store", "csc")
# Whatever happens, the whole run ends after this many seconds.
_RUN_LIMIT = {False: 600.0, True: 180.0}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark the signing path against raw baselines: PKCS#11 "
        "signing, SAM activations, whole transactions over loopback HTTP "
        "with 32 simulated phones, the store's calls on SQLite and MongoDB "
        "side by side (the server of MONGODB_URI, else FerretDB), and CSC "
        "signHash next to certomancer-csc-dummy. Everything runs on 127.0.0.1 "
        "in temporary folders; var/ is never touched. A full run takes about "
        "165 s.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="short smoke run (about 50 s) with smaller counts and durations",
    )
    parser.add_argument(
        "--only",
        choices=PHASES,
        action="append",
        help="run only this phase (repeatable); default: all of them",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also profile with cProfile: an extra SAM pass "
        "(build/bench-sam.prof, build/bench-sam-profile.txt), the HTTP "
        "phase's server (build/bench-server.prof, "
        "build/bench-server-profile.txt) and the csc phase's Sigil server "
        "(build/bench-csc-server.*); their figures are lower then",
    )
    return parser


async def _run(
    phases: Sequence[str],
    plan: Plan,
    profile: bool,
    mongodb: MongoTarget | None,
) -> list[Row]:
    rows: list[Row] = []
    profile_dir = BENCH_ROOT / "build" if profile else None
    with tempfile.TemporaryDirectory(prefix="sigil-bench-") as tmp:
        directory = Path(tmp)
        if "hsm" in phases or "sam" in phases:
            rows += await _hsm_and_sam(phases, plan, directory, profile_dir)
        if "http" in phases:
            from bench import http_phase

            result = await http_phase.run(plan, directory / "http", profile_dir)
            rows += result.rows
        if "store" in phases and mongodb is not None:
            from bench import store_phase

            stored = await store_phase.run(plan, directory / "store", mongodb)
            rows += stored.rows
        if "csc" in phases:
            from bench import csc_phase

            csc = await csc_phase.run(plan, directory / "csc", profile_dir)
            rows += csc.rows
    return rows


async def _hsm_and_sam(
    phases: Sequence[str], plan: Plan, directory: Path, profile_dir: Path | None
) -> list[Row]:
    # SoftHSM must see SOFTHSM2_CONF before the module loads: make the token
    # first, then import the modules that load python-pkcs11's library.
    from bench import hsm_phase

    progress("hsm: making a temporary SoftHSM2 token")
    config = hsm_phase.make_token(directory / "softhsm")

    from hsm import Hsm, KeyType

    rows: list[Row] = []
    hsm = await Hsm.open(config)
    try:
        raw_rate: float | None = None
        if "hsm" in phases:
            result = await hsm_phase.run(hsm, config, plan)
            rows += result.rows
            raw_rate = result.raw_per_s
        if "sam" in phases:
            from bench import sam_phase

            if raw_rate is None:
                progress("sam: raw PKCS#11 signing rate for the ceiling (1 s)")
                key = await hsm.generate_key(KeyType.EC_P256, label="bench-raw")
                raw_rate = await hsm_phase.measure_raw(config, key, 1.0)
            sam = await sam_phase.run(hsm, raw_rate, plan, directory, profile_dir)
            rows += sam.rows
    finally:
        await hsm.close()
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    phases: list[str] = args.only or list(PHASES)
    plan = Plan.smoke() if args.quick else Plan.full()
    limit = _RUN_LIMIT[plan.quick]
    mongodb = None
    if "store" in phases:
        from bench import store_phase

        # Outside the run's time limit: building FerretDB can take minutes.
        mongodb = store_phase.find_mongodb()

    async def bounded() -> list[Row]:
        async with asyncio.timeout(limit):
            return await _run(phases, plan, args.profile, mongodb)

    detail(describe())
    detail(
        f"plan: {'quick smoke run' if plan.quick else 'full run'}, {', '.join(phases)}"
    )
    detail("")
    ledger = CpuLedger.start()
    try:
        rows = asyncio.run(bounded())
    except TimeoutError:
        progress(f"the run took longer than {limit:.0f} s and was stopped")
        return 1
    except ChildFailed as e:
        progress(f"a child process failed: {e}")
        return 1
    except KeyboardInterrupt:
        return 130
    detail(summary_table(rows))
    detail("")
    detail(ledger.report())
    return 0
