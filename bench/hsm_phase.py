"""HSM phase: PKCS#11 signing rate, raw and through :class:`hsm.Hsm`.

The raw figure is the floor of every signature the server makes: ECDSA
P-256 (CKM_ECDSA) over a 32-byte digest, one python-pkcs11 session, a tight
loop, no thread hand-off. ``Hsm.sign_digest`` adds the executor hand-off,
the module lock, the key cache and the DER encoding of HSM-2; with 1 caller
each signature waits for the previous one, with 16 the pool's workers take
queued jobs in batches.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import pkcs11
from pkcs11 import Mechanism, ObjectClass
from pkcs11.types import SignMixin

from bench._report import Plan, Row, detail, format_rate, progress
from hsm import HashAlg, Hsm, HsmConfig, KeyHandle, KeyType, SignMechanism
from hsm._session import module_lock
from hsm.softhsm import find_softhsm_module, init_softhsm_token

__all__ = ["HsmResult", "make_token", "measure_raw", "run"]

_SOFTHSM_LABEL = "sigil-bench"
# Most signatures one measurement makes, whatever its time budget.
_MAX_SIGNATURES = 200_000


@dataclass(frozen=True, slots=True)
class HsmResult:
    raw_per_s: float
    hsm_1_per_s: float
    hsm_16_per_s: float
    rows: tuple[Row, ...]


def make_token(directory: Path) -> HsmConfig:
    """A fresh SoftHSM2 token in ``directory``, for this process only.

    SoftHSM reads ``SOFTHSM2_CONF`` at the first C_Initialize of the process,
    so this must run before anything loads the module; the server's token
    in ``var/`` is never touched.
    """
    pin = secrets.token_hex(8)
    conf = init_softhsm_token(
        directory, label=_SOFTHSM_LABEL, so_pin=secrets.token_hex(8), user_pin=pin
    )
    os.environ["SOFTHSM2_CONF"] = str(conf)
    return HsmConfig(
        module_path=find_softhsm_module(),
        token_label=_SOFTHSM_LABEL,
        pin=pin,
        pool_size=4,
    )


def _raw_loop(config: HsmConfig, key_id: str, seconds: float) -> tuple[int, float]:
    # The Hsm of this process already logged in, and the login belongs to
    # the application (PKCS#11 v2.40 section 5.6): a session opened without
    # a PIN sees the private key, and closing it issues no C_Logout, so the
    # Hsm's login survives. SoftHSM runs without its own mutexes here (see
    # hsm._session), so the loop holds the module lock, uncontended while
    # the Hsm is idle.
    lib = pkcs11.lib(config.module_path)
    token = lib.get_token(token_label=config.token_label)
    digest = secrets.token_bytes(32)
    with module_lock(config.module_path):
        session = token.open()
        try:
            key = session.get_key(
                object_class=ObjectClass.PRIVATE_KEY, id=bytes.fromhex(key_id)
            )
            if not isinstance(key, SignMixin):
                raise TypeError("the bench key cannot sign")
            key.sign(digest, mechanism=Mechanism.ECDSA)  # warm up
            count = 0
            started = time.perf_counter()
            deadline = started + seconds
            while count < _MAX_SIGNATURES:
                key.sign(digest, mechanism=Mechanism.ECDSA)
                count += 1
                if count % 64 == 0 and time.perf_counter() >= deadline:
                    break
            elapsed = time.perf_counter() - started
        finally:
            session.close()
    return count, elapsed


async def measure_raw(config: HsmConfig, key: KeyHandle, seconds: float) -> float:
    """Raw python-pkcs11 signatures per second, on a worker thread."""
    count, elapsed = await asyncio.to_thread(_raw_loop, config, key.key_id, seconds)
    return count / elapsed


async def _sign_loop(
    hsm: Hsm, key: KeyHandle, deadline: float, counter: list[int]
) -> None:
    digest = secrets.token_bytes(32)
    while counter[0] < _MAX_SIGNATURES and time.perf_counter() < deadline:
        await hsm.sign_digest(
            key.key_id, digest, mechanism=SignMechanism.ECDSA, hash_alg=HashAlg.SHA256
        )
        counter[0] += 1


async def _measure_hsm(hsm: Hsm, key: KeyHandle, callers: int, seconds: float) -> float:
    await _sign_loop(hsm, key, time.perf_counter() + 0.2, [0])  # warm up
    counter = [0]
    started = time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(
        *(_sign_loop(hsm, key, deadline, counter) for _ in range(callers))
    )
    return counter[0] / (time.perf_counter() - started)


async def run(hsm: Hsm, config: HsmConfig, plan: Plan) -> HsmResult:
    key = await hsm.generate_key(KeyType.EC_P256, label="bench-hsm")

    progress(f"hsm: raw python-pkcs11 ECDSA P-256 signing for {plan.hsm_seconds:g} s")
    raw = await measure_raw(config, key, plan.hsm_seconds)
    progress(f"hsm: Hsm.sign_digest with 1 caller for {plan.hsm_seconds:g} s")
    one = await _measure_hsm(hsm, key, 1, plan.hsm_seconds)
    progress(f"hsm: Hsm.sign_digest with 16 callers for {plan.hsm_seconds:g} s")
    sixteen = await _measure_hsm(hsm, key, 16, plan.hsm_seconds)

    detail("== hsm: ECDSA P-256 over a 32-byte digest, SoftHSM2, temporary token")
    detail(
        f"  raw python-pkcs11, 1 session     {raw:8.0f} /s  {1e6 / raw:6.1f} us each"
    )
    for label, rate in (("1 caller", one), ("16 callers", sixteen)):
        overhead = 1e6 / rate - 1e6 / raw
        detail(
            f"  Hsm.sign_digest, {label:<11}     {rate:8.0f} /s  "
            f"{1e6 / rate:6.1f} us each ({overhead:+.1f} us over raw)"
        )
    detail("")
    rows = (
        Row("hsm", "raw PKCS#11 P-256 sign/s", format_rate(raw)),
        Row(
            "hsm",
            "Hsm.sign_digest/s, 1 caller",
            format_rate(one),
            f"raw {format_rate(raw)}",
            f"{one / raw:.2f}",
        ),
        Row(
            "hsm",
            "Hsm.sign_digest/s, 16 callers",
            format_rate(sixteen),
            f"raw {format_rate(raw)}",
            f"{sixteen / raw:.2f}",
        ),
    )
    return HsmResult(raw, one, sixteen, rows)
