"""`make demo`: the whole job, end to end, on the embedded defaults.

Starts the server and a simulated phone as their own processes, plays a
relying app that asks for a signature over the SHA-256 of README.md, and
verifies the result with `cryptography`. Everything it starts, it stops.
Any failure exits non-zero with the reason.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.serialization import Encoding

from rp_client import ApiFailure, RelyingPartyClient

__all__ = ["main"]

BIN = Path(sys.executable).parent


class DemoFailed(Exception):
    pass


def _step(text: str) -> None:
    print(f"==> {text}", flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _api_key(home: Path) -> str:
    key_file = home / "demo-api-key"
    if not key_file.exists():
        subprocess.run(
            [
                str(BIN / "sigil"),
                "client",
                "create",
                "--name",
                "Demo Document Portal",
                "--key-file",
                str(key_file),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return key_file.read_text(encoding="utf-8").strip()


async def _wait_for_line(
    process: asyncio.subprocess.Process, marker: str, timeout: float
) -> None:
    assert process.stdout is not None
    async with asyncio.timeout(timeout):
        while True:
            raw = await process.stdout.readline()
            if not raw:
                raise DemoFailed(f"process exited before printing {marker!r}")
            line = raw.decode(errors="replace").rstrip()
            print(f"    | {line}", flush=True)
            if marker in line:
                return


async def _echo(process: asyncio.subprocess.Process) -> None:
    assert process.stdout is not None
    while raw := await process.stdout.readline():
        print(f"    | {raw.decode(errors='replace').rstrip()}", flush=True)


async def _stop(process: asyncio.subprocess.Process | None) -> None:
    if process is None or process.returncode is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), 10)
    except TimeoutError:
        process.kill()
        await process.wait()


def _verify(
    chain: list[x509.Certificate], ca: x509.Certificate, signature: bytes, digest: bytes
) -> None:
    leaf = chain[0]
    key = leaf.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(signature, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    elif isinstance(key, rsa.RSAPublicKey):
        key.verify(signature, digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
    else:
        raise DemoFailed("unexpected key type in the signer certificate")
    if chain[-1] != ca:
        raise DemoFailed("the chain does not end in the development CA")
    leaf.verify_directly_issued_by(ca)
    ca.verify_directly_issued_by(ca)


def _store_name() -> str:
    """What the server will run on, as the configuration picks it."""
    if os.environ.get("SIGIL_STORE", "").startswith("mongodb") or (
        "SIGIL_STORE" not in os.environ and os.environ.get("MONGODB_URI")
    ):
        database = os.environ.get("SIGIL_MONGODB_DB", "sigil")
        return f"MongoDB store, database {database}"
    return "embedded SQLite store"


async def run(document: Path, digest: bytes, home: Path) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, SIGIL_HOME=str(home), PYTHONUNBUFFERED="1")
    server = phone = None
    try:
        _step(f"starting the server on {url} ({_store_name()}, SoftHSM2)")
        server = await asyncio.create_subprocess_exec(
            str(BIN / "sigil"),
            "serve",
            "--port",
            str(port),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
        )
        await _wait_for_line(server, "serving on", 30)
        server_echo = asyncio.create_task(_echo(server))

        async with aiohttp.ClientSession() as session:
            rp = RelyingPartyClient(url, _api_key(home), session)
            user_id = f"demo-{secrets.token_hex(4)}"
            _step(f"relying app creates user {user_id} and an activation code")
            await rp.create_user("Demo Signer", user_id=user_id)
            code = await rp.activation_code(user_id)

            _step("starting the simulated phone; it enrols with the code")
            codes = home / "demo-codes.txt"
            codes.write_text("", encoding="utf-8")
            phone = await asyncio.create_subprocess_exec(
                str(BIN / "sigil-phone"),
                "enrol-and-run",
                "--server",
                url,
                "--state",
                str(home / "demo-phone.json"),
                "--force",
                "--policy",
                "approve",
                "--code-file",
                str(codes),
                "--count",
                "1",
                "--timeout",
                "60",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=dict(env, SIGIL_ACTIVATION_CODE=code),
            )
            await _wait_for_line(phone, "enrolled device", 60)
            phone_echo = asyncio.create_task(_echo(phone))

            _step(
                f"relying app asks for a signature over SHA-256({document.name}) "
                f"= {digest.hex()[:16]}..."
            )
            created = await rp.request_signature(
                user_id=user_id,
                hashes=[digest],
                display_text=f"Sign {document.name} for the demo portal",
            )
            request_id = created["request_id"]
            print(
                f"    verification code shown by the relying app: "
                f"{created['verification_code']}",
                flush=True,
            )
            with codes.open("a", encoding="utf-8") as f:
                f.write(f"{request_id} {created['verification_code']}\n")

            _step("waiting for the phone's approval (long poll)")
            result = await rp.wait_final(request_id, timeout=60)
            if result["state"] != "signed":
                raise DemoFailed(
                    f"request ended {result['state']}: {result.get('error', '')}"
                )
            await asyncio.wait_for(phone.wait(), 30)
            await phone_echo
            if phone.returncode != 0:
                raise DemoFailed(f"the phone exited with {phone.returncode}")

            _step("verifying the signature and the certificate chain")
            chain = [
                x509.load_der_x509_certificate(base64.b64decode(c))
                for c in result["certificate_chain"]
            ]
            ca = x509.load_der_x509_certificate(await rp.ca_certificate())
            signature = base64.b64decode(result["signatures"][0])
            try:
                _verify(chain, ca, signature, digest)
            except InvalidSignature as e:
                raise DemoFailed("the signature does not verify") from e
            (home / "demo.sig").write_bytes(signature)
            (home / "demo-signer.pem").write_bytes(chain[0].public_bytes(Encoding.PEM))

        print()
        print(f"  document:   {document} (SHA-256 {digest.hex()})")
        print(f"  signer:     {chain[0].subject.rfc4514_string()}")
        print(f"  issuer:     {ca.subject.rfc4514_string()}")
        print(f"  algorithm:  {result['signature_algorithm']}")
        print(f"  signature:  {home / 'demo.sig'} ({len(signature)} bytes, DER)")
        print("signature verified", flush=True)
        server_echo.cancel()
    finally:
        await _stop(phone)
        await _stop(server)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rp_client.demo",
        description="Start sigil serve and a simulated phone, enrol the phone, "
        "sign the SHA-256 of DOCUMENT with the phone's approval and verify the "
        "signature. Uses the initialised home in $SIGIL_HOME (./var); "
        "`make demo` runs it.",
    )
    parser.add_argument(
        "document", nargs="?", default="README.md", help="file to sign (README.md)"
    )
    document = Path(parser.parse_args(argv).document)
    home = Path(os.environ.get("SIGIL_HOME", "var")).resolve()
    started = time.monotonic()
    try:
        digest = hashlib.sha256(document.read_bytes()).digest()
        asyncio.run(run(document, digest, home))
    except (
        DemoFailed,
        ApiFailure,
        OSError,
        subprocess.CalledProcessError,
        TimeoutError,
    ) as e:
        print(f"demo FAILED: {e or type(e).__name__}", file=sys.stderr)
        return 1
    print(f"(demo took {time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
