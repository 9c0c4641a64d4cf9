"""The benchmark's store phase, in miniature: both backends, a few calls each."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from bench import store_phase
from bench._report import Plan
from bench.cli import PHASES, build_parser


def _tiny_plan() -> Plan:
    return dataclasses.replace(Plan.smoke(), store_seconds=0.05, store_callers=(1, 4))


def test_store_is_a_phase_of_its_own() -> None:
    assert "store" in PHASES
    assert build_parser().parse_args(["--only", "store"]).only == ["store"]


async def test_store_phase_sets_mongodb_beside_sqlite(
    mongodb_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = store_phase.MongoTarget(uri=mongodb_server.uri)

    result = await store_phase.run(_tiny_plan(), tmp_path, target)

    label = "FerretDB" if mongodb_server.name == "ferretdb" else "MongoDB"
    assert [row.measure for row in result.rows] == [
        f"{unit}, {callers}"
        for callers in ("1 caller", "4 callers")
        for unit in ("creates/s", "state changes/s", "reads/s")
    ]
    for row in result.rows:
        assert row.value.startswith(f"{label} ")
        assert row.baseline.startswith("SQLite ")
        assert float(row.value.split()[1]) > 0
        assert float(row.baseline.split()[1]) > 0
        assert float(row.ratio) > 0
    out = capsys.readouterr().out
    assert "found no request" not in out


async def test_store_phase_measures_sqlite_without_a_mongodb(tmp_path: Path) -> None:
    target = store_phase.MongoTarget(uri=None, problem="no Go here")

    result = await store_phase.run(_tiny_plan(), tmp_path, target)

    assert len(result.rows) == 6
    assert {row.value for row in result.rows} == {"MongoDB not measured"}
    assert all(float(row.baseline.split()[1]) > 0 for row in result.rows)
