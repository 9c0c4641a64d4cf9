"""certomancer-csc-dummy in a process of its own, for the csc phase.

``python -m bench.csc_dummy_server --port P --keys DIR`` makes a P-256 root
key and a P-256 signer key with ``cryptography`` in ``DIR/keys`` (the
benchmark's temporary folder: no private key is committed), loads
``bench/csc_dummy/certomancer.yml`` with ``DIR`` as the key search folder
and serves the dummy's CSC v1 routes on 127.0.0.1:P.

It runs the dummy's own application (``csc_dummy.CSCWithCertomancer``) the
way ``sigil serve`` runs Sigil: ``web.AppRunner`` without access log, no
debug logging, one process, the default event loop. The package's own
``certomancer-csc CONFIG PORT SCAL`` would also log every request at DEBUG
on standard error, which would slow the dummy down; this is its best case.
SCAL 1 by default: a SAD names a number of signatures, not the hashes, and
the dummy counts nothing, so one SAD serves every call.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web
from certomancer.registry import CertomancerConfig
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from csc_dummy.csc_dummy_server import CSCWithCertomancer, DummyServiceParams

__all__ = ["CONFIG", "CREDENTIAL_ID", "main"]

CONFIG = Path(__file__).resolve().parent / "csc_dummy" / "certomancer.yml"
CREDENTIAL_ID = "bench/signer-p256"
_KEYS = ("root", "signer-p256")


def make_keys(folder: Path) -> None:
    """Unencrypted PKCS#8 P-256 keys where the config looks for them."""
    keys = folder / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    for name in _KEYS:
        path = keys / f"{name}.key.pem"
        if path.exists():
            continue
        pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path.write_bytes(pem)
        path.chmod(0o600)


async def _serve(port: int, folder: Path, scal: int, multisign: int) -> None:
    config = CertomancerConfig.from_file(str(CONFIG), key_search_dir=str(folder))
    csc = CSCWithCertomancer(
        config,
        service_params=DummyServiceParams(
            hash_pinning_required=scal >= 2, multisign=multisign
        ),
    )
    csc.register_routes()
    runner = web.AppRunner(csc.app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        print(
            f"certomancer-csc-dummy (SCAL {scal}) serving on http://127.0.0.1:{port}",
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.csc_dummy_server")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--keys", required=True, help="folder for the generated keys (keys/*.pem)"
    )
    parser.add_argument("--scal", type=int, choices=[1, 2], default=1)
    parser.add_argument("--multisign", type=int, default=10)
    args = parser.parse_args(argv)
    folder = Path(args.keys)
    make_keys(folder)
    asyncio.run(_serve(args.port, folder, args.scal, args.multisign))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
