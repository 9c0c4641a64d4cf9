"""The benchmark's csc phase, in miniature: Sigil and certomancer-csc-dummy,
a fraction of a second each."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import csc_phase
from bench._report import Plan
from bench.cli import PHASES, build_parser


def test_csc_is_a_phase_of_its_own() -> None:
    assert "csc" in PHASES
    assert build_parser().parse_args(["--only", "csc"]).only == ["csc"]


@pytest.mark.parametrize(
    "text",
    [
        "[server]\nport = 1\n",
        "[server]\nport = 1\n\n[csc]\nsad_lifetime_seconds = 60\n",
    ],
)
def test_multisign_is_written_into_the_config(tmp_path: Path, text: str) -> None:
    import tomllib

    config = tmp_path / "sigil.toml"
    config.write_text(text, encoding="utf-8")

    csc_phase._set_multisign(config, 100)

    data = tomllib.loads(config.read_text(encoding="utf-8"))
    assert data["csc"]["multisign"] == 100
    assert data["server"]["port"] == 1


@pytest.mark.timeout(180)
async def test_csc_phase_sets_sigil_beside_the_dummy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny = csc_phase.CscPlan(
        warmup=0.1, seconds=0.4, concurrency=(1, 2), hashes_per_sad=8, budget=(400, 400)
    )

    result = await csc_phase.run(Plan.smoke(), tmp_path, cplan=tiny)

    assert [row.measure for row in result.rows] == [
        "signHash/s, 1 hash, 1 worker",
        "signHash p50 / p95, 1 worker",
        "signHash/s, 1 hash, 2 workers",
        "signHash p50 / p95, 2 workers",
    ]
    sigil, dummy = result.sigil, result.dummy
    assert all(level.completed > 0 for level in (*sigil.levels, *dummy.levels))
    assert sigil.verified == sigil.checked > 0
    assert dummy.verified == dummy.checked > 0
    # Sigil signs a hash once; the dummy signs it again.
    assert sigil.replay is not None and sigil.replay["status"] == 400
    assert dummy.replay is not None and dummy.replay["status"] == 200
    # One key.use audit record for every signature handed out.
    assert sigil.audit_key_use == sigil.ok_calls
    assert "sigil/dummy" in capsys.readouterr().out
