"""The operator's command line, run as an operator would: a real process on
its own home folder and SoftHSM2 token."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

SIGIL = [sys.executable, "-m", "server"]

SUBCOMMANDS = [
    [],
    ["init"],
    ["serve"],
    ["client", "create"],
    ["client", "list"],
    ["client", "revoke"],
    ["user", "create"],
    ["user", "code"],
    ["user", "list"],
    ["user", "unlock"],
    ["device", "list"],
    ["device", "revoke"],
    ["credential", "list"],
    ["request", "list"],
    ["audit", "verify"],
    ["audit", "checkpoint"],
    ["audit", "list"],
    ["verify"],
]


def _run(
    home: Path, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("SIGIL_", "SOFTHSM"))
    }
    env["SIGIL_HOME"] = str(home)
    return subprocess.run(
        [*SIGIL, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        input=stdin,
        check=False,
    )


@pytest.mark.parametrize("words", SUBCOMMANDS, ids=lambda w: " ".join(w) or "sigil")
def test_every_subcommand_has_help(tmp_path: Path, words: list[str]) -> None:
    result = _run(tmp_path, *words, "--help")

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: sigil")
    assert not (tmp_path / "sigil.db").exists()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("sigil-home")
    result = _run(home, "init")
    assert result.returncode == 0, result.stderr
    return home


def test_init_makes_token_ca_and_keeps_secrets_private(home: Path) -> None:
    again = _run(home, "init")

    assert again.returncode == 0, again.stderr
    for name in ("sigil.toml", "softhsm2.conf", "sigil.db", "vapid.pem", "hsm-pin"):
        assert (home / name).exists(), name
    assert home.stat().st_mode & 0o077 == 0
    for secret in ("hsm-pin", "so-pin", "vapid.pem"):
        assert (home / secret).stat().st_mode & 0o077 == 0, secret
    pin = (home / "hsm-pin").read_text().strip()
    assert pin not in again.stdout + again.stderr


def test_operator_enrols_a_user_and_lists_everything(home: Path) -> None:
    created = _run(
        home, "user", "create", "--display-name", "Dana", "--user-id", "dana"
    )
    code = _run(home, "user", "code", "dana")
    unknown = _run(home, "user", "code", "nobody")
    key_file = home / "portal.key"
    client = _run(
        home, "client", "create", "--name", "Portal", "--key-file", str(key_file)
    )

    assert created.returncode == 0 and created.stdout.strip() == "dana"
    assert code.returncode == 0 and len(code.stdout.strip()) == 23
    assert unknown.returncode == 2 and "no such user" in unknown.stderr
    assert client.returncode == 0 and key_file.read_text().startswith("sk_")
    assert key_file.read_text().strip() not in client.stdout
    assert "dana" in _run(home, "user", "list").stdout
    assert "Portal" in _run(home, "client", "list").stdout
    for words in (["device", "list"], ["credential", "list"], ["request", "list"]):
        result = _run(home, *words)
        assert result.returncode == 0, result.stderr
    audit = _run(home, "audit", "verify")
    assert audit.returncode == 0 and "audit chain intact" in audit.stdout
    listing = _run(home, "audit", "list")
    assert "activation_code.issued" in listing.stdout
    assert code.stdout.strip() not in listing.stdout


def test_operator_sets_a_signers_second_factor_and_unlocks_it_auth3(
    home: Path,
) -> None:
    created = _run(
        home,
        "user",
        "create",
        "--display-name",
        "Pin Holder",
        "--user-id",
        "pinned",
        "--second-factor",
        "pin",
    )
    unlocked = _run(home, "user", "unlock", "pinned")
    unknown = _run(home, "user", "unlock", "nobody")
    wrong = _run(
        home, "user", "create", "--display-name", "S", "--second-factor", "sms"
    )

    assert created.returncode == 0, created.stderr
    (row,) = [
        line
        for line in _run(home, "user", "list").stdout.splitlines()
        if "pinned" in line
    ]
    assert row.split()[-2] == "pin"
    assert unlocked.returncode == 0 and "unlocked" in unlocked.stdout
    assert unknown.returncode == 2 and "no user nobody" in unknown.stderr
    assert wrong.returncode == 2
    listing = _run(home, "audit", "list", "--limit", "1000").stdout
    assert any(
        "factor.unlocked" in line and "operator" in line and "user:pinned" in line
        for line in listing.splitlines()
    )


@pytest.mark.parametrize(
    "args",
    [
        ["user", "create", "--display-name", "A", "--user-id", "x\ny"],
        ["user", "create", "--display-name", "A", "--user-id", "../../etc"],
        ["user", "create", "--display-name", "a\u202eb"],
        ["user", "create", "--display-name", "Pay\u2028later"],
        ["client", "create", "--name", ""],
        ["serve", "--port", "99999"],
        ["request", "list", "--limit", "0"],
    ],
    ids=[
        "newline id",
        "path id",
        "bidi name",
        "separator name",
        "empty client",
        "port",
        "limit",
    ],
)
def test_operator_input_follows_the_api_rules(home: Path, args: list[str]) -> None:
    result = _run(home, *args)

    assert result.returncode == 2, result.stdout
    assert "Traceback" not in result.stderr
    assert result.stderr.strip()


def test_client_with_an_unwritable_key_file_is_not_stored(home: Path) -> None:
    result = _run(
        home, "client", "create", "--name", "Ghost", "--key-file", "/nonexistent/k"
    )

    assert result.returncode == 2
    assert "Ghost" not in _run(home, "client", "list").stdout


def test_two_relying_apps_cannot_share_a_name(home: Path, tmp_path: Path) -> None:
    first = _run(home, "client", "create", "--name", "Twin")
    second = _run(
        home, "client", "create", "--name", "Twin", "--key-file", str(tmp_path / "k")
    )

    assert first.returncode == 0
    assert second.returncode == 2 and "has this name" in second.stderr
    assert not (tmp_path / "k").exists()


def test_operator_revokes_a_relying_app(home: Path) -> None:
    created = _run(home, "client", "create", "--name", "Leaving")
    client_id = created.stdout.split()[1]

    revoked = _run(home, "client", "revoke", client_id)
    unknown = _run(home, "client", "revoke", "nobody")
    listing = _run(home, "client", "list").stdout

    assert revoked.returncode == 0, revoked.stderr
    assert unknown.returncode == 2
    assert any("Leaving" in line and "revoked" in line for line in listing.splitlines())


def test_revoking_an_unknown_device_fails_cleanly(home: Path) -> None:
    result = _run(home, "device", "revoke", "no-such-device")

    assert result.returncode == 2
    assert "no device" in result.stderr
    assert "Traceback" not in result.stderr


def test_verify_accepts_a_good_signature_and_refuses_a_tampered_file(
    tmp_path: Path,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Signer")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    document = tmp_path / "doc.txt"
    document.write_bytes(b"the document")
    (tmp_path / "doc.sig").write_bytes(
        key.sign(b"the document", ec.ECDSA(hashes.SHA256()))
    )
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    args = [
        "verify",
        "--file",
        str(document),
        "--signature",
        str(tmp_path / "doc.sig"),
        "--certificate",
        str(tmp_path / "cert.pem"),
        "--ca",
        str(tmp_path / "cert.pem"),
    ]

    good = _run(tmp_path, *args)
    document.write_bytes(b"the document, changed")
    bad = _run(tmp_path, *args)

    assert good.returncode == 0, good.stderr
    assert "signature valid" in good.stdout
    assert bad.returncode == 1
    assert "INVALID" in bad.stderr


def test_operator_seals_the_audit_trail_aud3(home: Path) -> None:
    sealed = _run(home, "audit", "checkpoint")
    again = _run(home, "audit", "checkpoint")
    checked = _run(home, "audit", "verify")

    assert sealed.returncode == 0 and "signs records up to" in sealed.stdout
    assert "checkpoint already" in again.stdout
    assert checked.returncode == 0, checked.stderr
    assert "signed checkpoints: 1" in checked.stdout
    assert "0 later record(s)" in checked.stdout


def test_broken_audit_chain_is_detected_aud3(home: Path) -> None:
    import sqlite3

    # Someone with write access to the file drops the guard and edits a record.
    with sqlite3.connect(home / "sigil.db") as db:
        db.execute("DROP TRIGGER audit_no_update")
        db.execute("UPDATE audit SET outcome = 'forged' WHERE seq = 1")
    result = _run(home, "audit", "verify")

    assert result.returncode == 1
    assert "BROKEN at record 1" in result.stderr


def test_cut_or_unsealed_trail_fails_verification_aud3(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    import sqlite3

    home = tmp_path_factory.mktemp("cut-home")
    assert _run(home, "init").returncode == 0
    _run(home, "user", "create", "--display-name", "Eve", "--user-id", "eve")
    assert _run(home, "audit", "checkpoint").returncode == 0
    first = _run(home, "audit", "verify")
    head = next(
        line.split()[1]
        for line in first.stdout.splitlines()
        if line.startswith("head:")
    )
    _run(home, "user", "code", "eve")

    intact = _run(home, "audit", "verify", "--known-head", head)
    seq = int(head.split(":")[0])
    with sqlite3.connect(home / "sigil.db") as db:
        db.execute("DROP TRIGGER audit_no_delete")
        db.execute("DELETE FROM audit WHERE seq >= ?", (seq,))
    cut = _run(home, "audit", "verify", "--known-head", head)

    assert first.returncode == 0 and intact.returncode == 0, intact.stderr
    assert cut.returncode == 1
    assert "is gone or changed" in cut.stderr


def test_records_without_a_checkpoint_fail_when_old_aud3(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Removing every checkpoint leaves old records unsealed: verify says so."""
    import time

    home = tmp_path_factory.mktemp("unsealed-home")
    assert _run(home, "init").returncode == 0
    time.sleep(1.2)

    result = _run(home, "audit", "verify", "--max-unsealed-age", "1")

    assert result.returncode == 1
    assert "checkpoints MISSING" in result.stderr
