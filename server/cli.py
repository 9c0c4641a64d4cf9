"""`sigil`: the operator's command line.

Secrets never go on the command line: the HSM PIN comes from the
configuration's PIN file or ``SIGIL_HSM_PIN``. The API keys and activation
codes that a command makes are printed once, to standard output only.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import logging
import os
import secrets
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from hsm import HsmError
from server.config import CONFIG_NAME, ConfigError, Settings, load_settings
from server.errors import ApiError
from store import (
    AuditRecord,
    Client,
    DuplicateError,
    RequestState,
    Store,
    StoreError,
)

__all__ = ["main"]

log = logging.getLogger(__name__)

Command = Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int]]


def _printable(value: object) -> str:
    """Escape control characters: stored text must not drive the terminal."""
    text = str(value)
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    rows = [{c: _printable(r.get(c, "")) for c in columns} for r in rows]
    if not rows:
        print("(none)")
        return
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in rows:
        print(
            "  ".join(
                str(row.get(c, "")).ljust(w)
                for c, w in zip(columns, widths, strict=True)
            )
        )


@contextlib.asynccontextmanager
async def _opened_store(settings: Settings) -> AsyncIterator[Store]:
    store = settings.open_store()
    await store.open()
    try:
        yield store
    finally:
        await store.close()


# -- init and serve -----------------------------------------------------------


def _write_secret(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(value + "\n")


def _write_config(home: Path, *, softhsm: bool) -> None:
    path = home / CONFIG_NAME
    if path.exists():
        return
    lines = [
        "# Sigil configuration. Environment variables SIGIL_* override these.",
        "[server]",
        'host = "127.0.0.1"',
        "port = 8080",
        f'audience = "sigil-{secrets.token_hex(6)}"',
        "",
        "[store]",
        f'url = "{home / "sigil.db"}"',
        "",
        "[hsm]",
        'module = "/usr/lib/softhsm/libsofthsm2.so"',
        'token_label = "sigil"',
        'pin_file = "hsm-pin"',
    ]
    if softhsm:
        lines.append('softhsm2_conf = "softhsm2.conf"')
    lines += [
        "pool_size = 4",
        "",
        "[push]",
        'vapid_key_file = "vapid.pem"',
        'subject = "mailto:operator@sigil.invalid"',
        "# Plain-HTTP push endpoints are for simulated phones on loopback only.",
        "allow_http_endpoints = true",
        "",
        "[requests]",
        "default_ttl_seconds = 120",
        "max_ttl_seconds = 600",
        "finished_retention_seconds = 3600",
        "max_hashes = 32",
        "max_pending_per_user = 20",
        "",
        "[factors]",
        "# Signers' PINs and one-time codes (AUTH-3): wrong tries before the",
        "# factor locks, and how long each wrong try counts.",
        "pin_max_tries = 5",
        "pin_lock_seconds = 900",
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")


async def cmd_init(args: argparse.Namespace, settings: Settings) -> int:
    from hsm.softhsm import init_softhsm_token
    from sam.checkpoint import ensure_audit_key
    from server.app import open_parts
    from server.ca import ensure_ca
    from server.push import load_or_create_vapid

    home = settings.home
    home.mkdir(parents=True, exist_ok=True)
    # The folder holds the database, the token and the PIN files: its owner's.
    home.chmod(0o700)
    softhsm = "softhsm" in settings.pkcs11_module
    pin_file = home / "hsm-pin"
    if softhsm:
        if not pin_file.exists() and not os.environ.get("SIGIL_HSM_PIN"):
            _write_secret(pin_file, secrets.token_hex(8))
        if not (home / "so-pin").exists():
            _write_secret(home / "so-pin", secrets.token_hex(8))
        user_pin = os.environ.get("SIGIL_HSM_PIN") or pin_file.read_text().strip()
        conf = init_softhsm_token(
            home,
            label=settings.token_label,
            so_pin=(home / "so-pin").read_text().strip(),
            user_pin=user_pin,
        )
        print(f"SoftHSM2 token '{settings.token_label}' ready ({conf})")
    _write_config(home, softhsm=softhsm)
    settings = load_settings(home)
    parts = await open_parts(settings)
    try:
        ca = await ensure_ca(parts.hsm, parts.store, common_name="Sigil Development CA")
        await ensure_audit_key(parts.hsm, parts.store)
        if settings.vapid_key_file is not None:
            load_or_create_vapid(settings.vapid_key_file)
        cert = x509.load_der_x509_certificate(ca.certificate_der)
        print(f"development CA: {cert.subject.rfc4514_string()}")
        await parts.store.append_audit(
            time=datetime.now(UTC),
            event="config.initialised",
            actor="operator",
            subject="server",
            outcome="success",
        )
    finally:
        await parts.close()
    print(f"initialised {home}")
    return 0


async def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from aiohttp import web

    from server.app import create_app, open_parts
    from server.runner import SigilRunner

    host = args.host or settings.host
    port = args.port if args.port is not None else settings.port
    parts = await open_parts(settings)
    app = create_app(settings, parts)
    runner = SigilRunner(app, access_log=None, shutdown_timeout=5.0)
    try:
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as e:
            print(
                f"error: cannot listen on {host}:{port}: {e.strerror}", file=sys.stderr
            )
            return 2
        print(f"sigil serving on http://{host}:{port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
        await parts.close()
    return 0


# -- clients, users, codes ----------------------------------------------------


async def cmd_client_create(args: argparse.Namespace, settings: Settings) -> int:
    from server.auth import api_key_hash, new_api_key
    from server.validation import check_body

    body = {"name": args.name}
    if args.client_id:
        body["client_id"] = args.client_id
    check_body("create_client", body)
    key = new_api_key()
    key_file = Path(args.key_file) if args.key_file else None
    if key_file is not None:
        # Written first: a client whose key was lost is never stored.
        _write_secret(key_file, key)
    try:
        async with _opened_store(settings) as store:
            if any(c.name == args.name for c in await store.list_clients()):
                raise ApiError(409, "client_exists", "a relying app has this name")
            client = Client(
                client_id=args.client_id or str(uuid.uuid4()),
                name=args.name,
                api_key_hash=api_key_hash(key),
                created_at=datetime.now(UTC),
            )
            await store.add_client(client)
            await store.append_audit(
                time=datetime.now(UTC),
                event="client.created",
                actor="operator",
                subject=f"client:{client.client_id}",
                outcome="success",
            )
    except BaseException:
        if key_file is not None:
            key_file.unlink(missing_ok=True)
        raise
    if key_file is not None:
        print(f"client {client.client_id}: API key written to {key_file}")
    else:
        print(f"client {client.client_id}")
        print(f"api key (shown once): {key}")
    return 0


async def cmd_client_revoke(args: argparse.Namespace, settings: Settings) -> int:
    async with _opened_store(settings) as store:
        client = await store.revoke_client(args.client_id, now=datetime.now(UTC))
        if client is None:
            print(f"error: no client {args.client_id}", file=sys.stderr)
            return 2
        await store.append_audit(
            time=datetime.now(UTC),
            event="client.revoked",
            actor="operator",
            subject=f"client:{client.client_id}",
            outcome="success",
        )
    print(f"client {client.client_id}: API key revoked (running servers: within 30 s)")
    return 0


async def cmd_client_list(args: argparse.Namespace, settings: Settings) -> int:
    async with _opened_store(settings) as store:
        clients = await store.list_clients()
    _print_table(
        [
            {
                "client_id": c.client_id,
                "name": c.name,
                "created": c.created_at.isoformat(timespec="seconds"),
                "status": "revoked" if c.revoked_at else "active",
            }
            for c in clients
        ],
        ["client_id", "name", "created", "status"],
    )
    return 0


async def cmd_user_create(args: argparse.Namespace, settings: Settings) -> int:
    from server.enrolment import add_user
    from server.validation import check_body

    body = {
        "display_name": args.display_name,
        "key_algorithm": args.key_algorithm,
        "second_factor": args.second_factor,
    }
    if args.user_id:
        body["user_id"] = args.user_id
    check_body("create_user", body)  # the API's rules hold here too
    async with _opened_store(settings) as store:
        user = await add_user(
            store,
            display_name=args.display_name,
            key_algorithm=args.key_algorithm,
            user_id=args.user_id,
            created_by="operator",
            second_factor=args.second_factor,
        )
    print(user.user_id)
    return 0


async def cmd_user_code(args: argparse.Namespace, settings: Settings) -> int:
    from server.enrolment import issue_activation_code

    async with _opened_store(settings) as store:
        issued = await issue_activation_code(
            store, args.user_id, ttl=settings.activation_code_ttl, client=None
        )
    print(issued.code)
    print(f"expires {issued.expires_at.isoformat(timespec='seconds')}", file=sys.stderr)
    return 0


async def cmd_user_list(args: argparse.Namespace, settings: Settings) -> int:
    async with _opened_store(settings) as store:
        users = await store.list_users()
    _print_table(
        [
            {
                "user_id": u.user_id,
                "display_name": u.display_name,
                "key": u.key_algorithm,
                "second_factor": u.second_factor,
                "created": u.created_at.isoformat(timespec="seconds"),
            }
            for u in users
        ],
        ["user_id", "display_name", "key", "second_factor", "created"],
    )
    return 0


async def cmd_user_unlock(args: argparse.Namespace, settings: Settings) -> int:
    from sam.factors import SecondFactors

    async with _opened_store(settings) as store:
        if await store.get_user(args.user_id) is None:
            print(f"error: no user {args.user_id}", file=sys.stderr)
            return 2
        cleared = await SecondFactors(store).unlock(args.user_id, actor="operator")
    print(f"user {args.user_id} unlocked: {cleared} failed tries cleared")
    return 0


async def cmd_device_list(args: argparse.Namespace, settings: Settings) -> int:
    async with _opened_store(settings) as store:
        devices = await store.list_devices(user_id=args.user)
    _print_table(
        [
            {
                "device_id": d.device_id,
                "user_id": d.user_id,
                "name": d.name,
                "status": d.status,
                "push": "yes" if d.push_subscription else "no",
            }
            for d in devices
        ],
        ["device_id", "user_id", "name", "status", "push"],
    )
    return 0


async def cmd_device_revoke(args: argparse.Namespace, settings: Settings) -> int:
    from server.enrolment import revoke_device

    async with _opened_store(settings) as store:
        revoked = await revoke_device(store, args.device_id)
    if revoked is None:
        print(f"error: no device {args.device_id}", file=sys.stderr)
        return 2
    _, ended = revoked
    print(f"device {args.device_id} revoked")
    if ended:
        print(f"{ended} unspent CSC authorisation(s) of its signer ended")
    return 0


async def cmd_credential_list(args: argparse.Namespace, settings: Settings) -> int:
    async with _opened_store(settings) as store:
        credentials = await store.list_credentials(user_id=args.user)
    rows = []
    for c in credentials:
        cert = x509.load_der_x509_certificate(c.certificate_der)
        rows.append(
            {
                "credential_id": c.credential_id,
                "user_id": c.user_id,
                "key": c.key_algorithm,
                "status": c.status,
                "subject": cert.subject.rfc4514_string(),
                "not_after": cert.not_valid_after_utc.date().isoformat(),
            }
        )
    _print_table(
        rows, ["credential_id", "user_id", "key", "status", "subject", "not_after"]
    )
    return 0


async def cmd_request_list(args: argparse.Namespace, settings: Settings) -> int:
    async with _opened_store(settings) as store:
        states = [RequestState(args.state)] if args.state else None
        found = await store.list_requests(
            user_id=args.user, states=states, limit=args.limit
        )
    _print_table(
        [
            {
                "request_id": r.request_id,
                "user_id": r.user_id,
                "state": r.state,
                "hashes": len(r.hashes),
                "created": r.created_at.isoformat(timespec="seconds"),
                "text": r.display_text[:40],
            }
            for r in found
        ],
        ["request_id", "user_id", "state", "hashes", "created", "text"],
    )
    return 0


async def cmd_audit_verify(args: argparse.Namespace, settings: Settings) -> int:
    from sam.checkpoint import (
        AUDIT_KEY_LABEL,
        CHECKPOINT_EVENT,
        audit_key_id,
        verify_checkpoints,
    )
    from server.app import open_parts
    from store.audit import verify_chain

    parts = await open_parts(settings)
    try:
        records: list[AuditRecord] = []
        after = 0
        try:
            while page := await parts.store.audit_records(after_seq=after, limit=1000):
                records.extend(page)
                after = page[-1].seq
        except (ValueError, TypeError) as e:
            print(
                f"audit trail BROKEN: a record after {after} cannot be read ({e})",
                file=sys.stderr,
            )
            return 1
        key_id = await audit_key_id(parts.store)
        key = await parts.hsm.get_key(key_id) if key_id is not None else None
    finally:
        await parts.close()

    chain = verify_chain(records)
    if not chain.ok:
        print(
            f"audit chain BROKEN at record {chain.first_bad_seq}: {chain.reason}",
            file=sys.stderr,
        )
        return 1
    print(f"audit chain intact: {chain.checked} records")
    if key is None or key.label != AUDIT_KEY_LABEL:
        # The id is read from the database; only the token's label is trusted.
        print("audit checkpoints BROKEN: no audit key in the HSM", file=sys.stderr)
        return 1
    seals = verify_checkpoints(records, key.public_key_der)
    if not seals.ok:
        print(f"audit checkpoints BROKEN: {seals.problem}", file=sys.stderr)
        return 1
    head = records[-1] if records else None
    if args.known_head:
        seq_text, _, known_hash = args.known_head.partition(":")
        known = next((r for r in records if str(r.seq) == seq_text), None)
        if known is None or known.hash != known_hash:
            print(
                f"audit trail BROKEN: the head noted earlier ({seq_text}) is gone "
                "or changed: records were cut or rewritten",
                file=sys.stderr,
            )
            return 1
    cutoff = datetime.now(UTC) - timedelta(seconds=args.max_unsealed_age)
    unsealed = [
        r for r in records if r.seq > seals.covered_seq and r.event != CHECKPOINT_EVENT
    ]
    print(
        f"signed checkpoints: {seals.checkpoints}, covering records 1 to "
        f"{seals.covered_seq}; {len(unsealed)} later record(s) rest on the chain alone"
    )
    if head is not None:
        print(f"head: {head.seq}:{head.hash}  (note it; check later with --known-head)")
    stale = [r for r in unsealed if r.time < cutoff]
    if stale:
        print(
            f"audit checkpoints MISSING: {len(stale)} record(s) older than "
            f"{args.max_unsealed_age} s carry no signed checkpoint; run `sigil audit "
            "checkpoint` if the server was down, else checkpoints were removed",
            file=sys.stderr,
        )
        return 1
    return 0


async def cmd_audit_checkpoint(args: argparse.Namespace, settings: Settings) -> int:
    from sam.checkpoint import audit_key_id, write_checkpoint
    from server.app import open_parts

    parts = await open_parts(settings)
    try:
        key_id = await audit_key_id(parts.store)
        if key_id is None:
            print("error: no audit key: run `sigil init`", file=sys.stderr)
            return 2
        record = await write_checkpoint(
            parts.store, parts.hsm, key_id, now=datetime.now(UTC)
        )
    finally:
        await parts.close()
    if record is None:
        print("the last record is a checkpoint already")
    else:
        print(f"checkpoint {record.seq} signs records up to {record.seq - 1}")
    return 0


async def cmd_audit_list(args: argparse.Namespace, settings: Settings) -> int:
    async with _opened_store(settings) as store:
        records = await store.audit_records(after_seq=args.after, limit=args.limit)
        more = bool(records) and bool(
            await store.audit_records(after_seq=records[-1].seq, limit=1)
        )
    _print_table(
        [
            {
                "seq": r.seq,
                "time": r.time.isoformat(timespec="seconds"),
                "event": r.event,
                "actor": r.actor,
                "subject": r.subject,
                "outcome": r.outcome,
            }
            for r in records
        ],
        ["seq", "time", "event", "actor", "subject", "outcome"],
    )
    if more:
        print(f"(more records follow: --after {records[-1].seq})")
    return 0


# -- verify a signature file --------------------------------------------------


def _read_maybe_base64(path: Path) -> bytes:
    data = path.read_bytes()
    stripped = data.strip()
    try:
        return base64.b64decode(stripped, validate=True)
    except (binascii.Error, ValueError):
        return data


def _load_certificate(path: Path) -> x509.Certificate:
    data = path.read_bytes()
    if b"-----BEGIN CERTIFICATE-----" in data:
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(_read_maybe_base64(path))


async def cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    return verify_signature_file(
        document=Path(args.file),
        signature=Path(args.signature),
        certificate=Path(args.certificate),
        ca=Path(args.ca) if args.ca else None,
        hash_name=args.hash_algorithm,
        pss=args.pss,
    )


def verify_signature_file(
    *,
    document: Path,
    signature: Path,
    certificate: Path,
    ca: Path | None,
    hash_name: str,
    pss: bool = False,
) -> int:
    """Check a detached signature over a file with a certificate (and CA)."""
    algorithm: hashes.HashAlgorithm = {
        "SHA-256": hashes.SHA256(),
        "SHA-384": hashes.SHA384(),
        "SHA-512": hashes.SHA512(),
    }[hash_name]
    try:
        cert = _load_certificate(certificate)
        sig = _read_maybe_base64(signature)
        data = document.read_bytes()
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    key = cert.public_key()
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(sig, data, ec.ECDSA(algorithm))
        elif isinstance(key, rsa.RSAPublicKey):
            pad: padding.AsymmetricPadding = (
                padding.PSS(
                    mgf=padding.MGF1(algorithm), salt_length=algorithm.digest_size
                )
                if pss
                else padding.PKCS1v15()
            )
            key.verify(sig, data, pad, algorithm)
        else:
            print("error: unsupported key type in the certificate", file=sys.stderr)
            return 2
    except InvalidSignature:
        print("signature INVALID", file=sys.stderr)
        return 1
    print(f"signature valid, signed by {cert.subject.rfc4514_string()}")
    if ca is not None:
        try:
            cert.verify_directly_issued_by(_load_certificate(ca))
        except (ValueError, TypeError, InvalidSignature):
            print("certificate NOT issued by the given CA", file=sys.stderr)
            return 1
        print("certificate chains to the given CA")
    return 0


# -- parser -------------------------------------------------------------------


def _port(text: str) -> int:
    value = _positive(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sigil",
        description="Operate the Sigil remote signing server. Configuration is "
        "read from $SIGIL_HOME/sigil.toml (default ./var) and SIGIL_* variables.",
    )
    parser.add_argument(
        "--home", help="folder holding configuration, token and database (./var)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("init", help="make the HSM token, CA, VAPID key and database")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("serve", help="run the HTTP server")
    p.add_argument("--host", help="address to bind (default from configuration)")
    p.add_argument(
        "--port", type=_port, help="port to bind (default from configuration)"
    )
    p.set_defaults(func=cmd_serve)

    client = sub.add_parser("client", help="relying applications").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = client.add_parser("create", help="register a relying app and make its API key")
    p.add_argument("--name", required=True, help="name shown to users on the phone")
    p.add_argument("--client-id", help="id to use (default: a new UUID)")
    p.add_argument("--key-file", help="write the API key to this file (mode 0600)")
    p.set_defaults(func=cmd_client_create)
    p = client.add_parser("revoke", help="revoke a relying app's API key for good")
    p.add_argument("client_id")
    p.set_defaults(func=cmd_client_revoke)
    p = client.add_parser("list", help="list relying apps")
    p.set_defaults(func=cmd_client_list)

    user = sub.add_parser("user", help="signers").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = user.add_parser("create", help="create a user")
    p.add_argument("--display-name", required=True, help="name in the certificate")
    p.add_argument("--user-id", help="id to use (default: a new UUID)")
    p.add_argument(
        "--key-algorithm",
        default="EC-P256",
        choices=["EC-P256", "EC-P384", "RSA-2048", "RSA-3072"],
        help="signing key made at enrolment (default EC-P256)",
    )
    p.add_argument(
        "--second-factor",
        default="none",
        choices=["none", "pin", "totp"],
        help="what approvals need besides the phone: a PIN set at enrolment, "
        "a TOTP provisioned at enrolment, or nothing (default none)",
    )
    p.set_defaults(func=cmd_user_create)
    p = user.add_parser("code", help="issue a one-time activation code for enrolment")
    p.add_argument("user_id", help="the user to enrol")
    p.set_defaults(func=cmd_user_code)
    p = user.add_parser("list", help="list users")
    p.set_defaults(func=cmd_user_list)
    p = user.add_parser(
        "unlock", help="clear a user's failed PIN or one-time code tries"
    )
    p.add_argument("user_id")
    p.set_defaults(func=cmd_user_unlock)

    device = sub.add_parser("device", help="enrolled phones").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = device.add_parser("list", help="list devices")
    p.add_argument("--user", help="only this user's devices")
    p.set_defaults(func=cmd_device_list)
    p = device.add_parser("revoke", help="revoke a device: its approvals stop counting")
    p.add_argument("device_id")
    p.set_defaults(func=cmd_device_revoke)

    credential = sub.add_parser("credential", help="signing keys").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = credential.add_parser("list", help="list credentials and their certificates")
    p.add_argument("--user", help="only this user's credentials")
    p.set_defaults(func=cmd_credential_list)

    request = sub.add_parser("request", help="signature requests").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = request.add_parser("list", help="list signature requests, newest first")
    p.add_argument("--user", help="only this user's requests")
    p.add_argument("--state", choices=[s.value for s in RequestState])
    p.add_argument("--limit", type=_positive, default=50)
    p.set_defaults(func=cmd_request_list)

    audit = sub.add_parser("audit", help="the audit trail").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = audit.add_parser(
        "verify", help="check the hash chain and the signed checkpoints"
    )
    p.add_argument(
        "--known-head",
        metavar="SEQ:HASH",
        help="a head printed by an earlier verify: it must still be in the trail",
    )
    p.add_argument(
        "--max-unsealed-age",
        type=_positive,
        default=600,
        metavar="SECONDS",
        help="fail when records older than this lack a signed checkpoint (600)",
    )
    p.set_defaults(func=cmd_audit_verify)
    p = audit.add_parser(
        "checkpoint", help="sign the audit trail so far with the HSM's audit key"
    )
    p.set_defaults(func=cmd_audit_checkpoint)
    p = audit.add_parser("list", help="show audit records, oldest first")
    p.add_argument("--after", type=int, default=0, help="start after this record")
    p.add_argument(
        "--limit", type=_positive, default=100, help="show at most this many (100)"
    )
    p.set_defaults(func=cmd_audit_list)

    p = sub.add_parser("verify", help="verify a detached signature over a file")
    p.add_argument("--file", required=True, help="the signed document")
    p.add_argument("--signature", required=True, help="signature, DER or base64")
    p.add_argument("--certificate", required=True, help="signer certificate, PEM/DER")
    p.add_argument("--ca", help="CA certificate the signer's must be issued by")
    p.add_argument(
        "--hash-algorithm", default="SHA-256", choices=["SHA-256", "SHA-384", "SHA-512"]
    )
    p.add_argument("--pss", action="store_true", help="RSA signature is RSA-PSS")
    p.set_defaults(func=cmd_verify)
    return parser


# Libraries whose debug records carry what this server keeps secret:
# PyMongo's command monitoring logs whole commands and replies (settings
# holding secrets, PIN hashes, TOTP secrets).
_QUIET_LIBRARIES = ("pymongo",)


def configure_logging(*, verbose: bool) -> None:
    """Log to standard error; ``verbose`` turns on debug for this server's
    own modules, never for libraries that would log secrets (SAD-6)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for name in _QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    # `sigil device list | head` ends quietly, as other command-line tools do.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    args = build_parser().parse_args(argv)
    configure_logging(verbose=args.verbose)
    func: Command = args.func
    try:
        settings = load_settings(Path(args.home) if args.home else None)
        if func not in (cmd_init, cmd_verify) and settings.config_file is None:
            raise ConfigError(
                f"no configuration in {settings.home}: run `sigil init` there, "
                "or point SIGIL_HOME (or --home) at an initialised folder"
            )
        return asyncio.run(func(args, settings))
    except ApiError as e:
        print(f"error: {e.description}", file=sys.stderr)
        return 2
    except DuplicateError:
        print("error: a record with this id exists already", file=sys.stderr)
        return 2
    except (ConfigError, StoreError, HsmError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except UnicodeError:
        print("error: arguments must be valid UTF-8", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
