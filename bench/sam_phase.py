"""SAM phase: activations per second of the Signature Activation Module.

Pending requests and the SADs that approve them are made beforehand, with
the simulated phone's own SAD builder, so that the measured loop is
``SignatureActivationModule.verify_and_sign`` alone: read the SAD header,
look up the device, verify the JWS, check every claim against the stored
request, consume it (pending to approved), sign in the HSM, store the
signatures (approved to signed) and append two audit records.

Its ceiling is the two pieces of cryptography it cannot avoid: one ES256
verification (joserfc, as sam/sad.py does it) and one raw PKCS#11
signature. The ratio of the measured rate to ``1 / (t_verify + t_sign)``
shows how much the store, the audit chain and the event loop add.
"""

from __future__ import annotations

import asyncio
import base64
import cProfile
import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from joserfc import jws
from joserfc.jwk import ECKey

from bench._profiling import write_profile
from bench._report import Plan, Row, detail, format_rate, percentile, progress
from hsm import HashAlg, Hsm, KeyType
from mobile_stub import DeviceClient, DeviceKey
from sam import ActivationError, SignatureActivationModule, verification_code
from store import (
    Client,
    Credential,
    Device,
    DeviceStatus,
    RequestState,
    SignatureRequest,
    User,
)
from store.sqlite import SqliteStore

__all__ = ["TARGET_RATIO", "SamResult", "run"]

TARGET_RATIO = 0.6
_AUDIENCE = "sigil-bench"
_USERS = 16
_CODE_SECRET = b"bench verification code secret"
_VERIFY_SAMPLES = 1000
# A whole run of activations stops after this, done or not.
_RUN_LIMIT = 120.0


@dataclass(frozen=True, slots=True)
class _Signer:
    user_id: str
    credential_id: str
    client: DeviceClient
    public_key: ECKey


@dataclass(frozen=True, slots=True)
class _Approval:
    request_id: str
    sad: str
    key: ECKey


@dataclass(frozen=True, slots=True)
class SamResult:
    rate: float
    ceiling: float
    rows: tuple[Row, ...]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


async def _signers(store: SqliteStore, hsm: Hsm, now: datetime) -> list[_Signer]:
    signers = []
    for index in range(_USERS):
        user_id = f"bench-{index:02d}"
        await store.add_user(
            User(
                user_id=user_id,
                display_name=f"Bench Signer {index}",
                key_algorithm=str(KeyType.EC_P256),
                created_at=now,
            )
        )
        key = await hsm.generate_key(KeyType.EC_P256, label=f"user:{user_id}")
        credential = Credential(
            credential_id=str(uuid.uuid4()),
            user_id=user_id,
            key_id=key.key_id,
            key_algorithm=str(KeyType.EC_P256),
            # The SAM never reads the certificate; enrolment is not measured.
            certificate_der=b"not a certificate",
            chain_der=(),
            status="active",
            created_at=now,
        )
        await store.add_credential(credential)
        device_key = DeviceKey()
        await store.add_device(
            Device(
                device_id=device_key.device_id,
                user_id=user_id,
                public_key_jwk=device_key.public_jwk(),
                push_subscription=None,
                status=DeviceStatus.ACTIVE,
                name=f"bench phone {index}",
                created_at=now,
            )
        )
        client = DeviceClient("http://127.0.0.1", device_key=device_key)
        client.audience = _AUDIENCE
        signers.append(
            _Signer(
                user_id=user_id,
                credential_id=credential.credential_id,
                client=client,
                public_key=ECKey.import_key(device_key.public_key),
            )
        )
    return signers


async def _approvals(
    store: SqliteStore, signers: list[_Signer], count: int, now: datetime
) -> list[_Approval]:
    """``count`` pending requests and the SAD that approves each."""
    approvals = []
    for index in range(count):
        signer = signers[index % len(signers)]
        request_id = secrets.token_urlsafe(16)
        nonce = secrets.token_urlsafe(24)
        hashes = (_b64(secrets.token_bytes(32)),)
        display_text = f"Sign bench document {index}"
        code = verification_code(
            secret=_CODE_SECRET, request_id=request_id, nonce=nonce, hashes=hashes
        )
        await store.create_request(
            SignatureRequest(
                request_id=request_id,
                client_id="bench",
                user_id=signer.user_id,
                credential_id=signer.credential_id,
                hash_algorithm=HashAlg.SHA256.oid,
                hashes=hashes,
                display_text=display_text,
                nonce=nonce,
                verification_code=code,
                state=RequestState.PENDING,
                created_at=now,
                updated_at=now,
                expires_at=now + timedelta(minutes=10),
            )
        )
        details: dict[str, Any] = {
            "request_id": request_id,
            "credential_id": signer.credential_id,
            "hash_algorithm": HashAlg.SHA256.oid,
            "hashes": list(hashes),
            "display_text": display_text,
            "nonce": nonce,
        }
        sad = signer.client.make_sad(details, vc=code)
        approvals.append(_Approval(request_id, sad, signer.public_key))
    return approvals


def _verify_seconds(approvals: list[_Approval]) -> float:
    """Mean time of one ES256 SAD verification, as sam/sad.py makes it."""
    sample = approvals[:_VERIFY_SAMPLES]
    for approval in sample[:20]:  # warm up
        jws.deserialize_compact(approval.sad, approval.key, algorithms=["ES256"])
    started = time.perf_counter()
    for approval in sample:
        jws.deserialize_compact(approval.sad, approval.key, algorithms=["ES256"])
    return (time.perf_counter() - started) / len(sample)


async def _activate(
    sam: SignatureActivationModule, approvals: list[_Approval], concurrency: int
) -> tuple[float, list[float], int]:
    """Run verify_and_sign on every approval; return time, latencies, failures.

    Only signed requests count, in the latencies and in the rate.
    """
    queue: asyncio.Queue[_Approval] = asyncio.Queue()
    for approval in approvals:
        queue.put_nowait(approval)
    latencies: list[float] = []
    failures = 0

    async def worker() -> None:
        nonlocal failures
        while not queue.empty():
            approval = queue.get_nowait()
            begun = time.perf_counter()
            try:
                signed = await sam.verify_and_sign(
                    request_id=approval.request_id, sad=approval.sad
                )
            except ActivationError:
                failures += 1
                continue
            if signed.state is not RequestState.SIGNED or not signed.signatures:
                failures += 1
                continue
            latencies.append(time.perf_counter() - begun)

    started = time.perf_counter()
    async with asyncio.timeout(_RUN_LIMIT):
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started, latencies, failures


async def _profiled(
    sam: SignatureActivationModule,
    approvals: list[_Approval],
    concurrency: int,
    prefix: Path,
) -> None:
    # After the measured runs, on approvals of its own: cProfile slows the
    # event loop thread several times over.
    progress(f"sam: {len(approvals)} more activations under cProfile")
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        await _activate(sam, approvals, concurrency)
    finally:
        profiler.disable()
    write_profile(
        profiler,
        prefix,
        f"verify_and_sign under cProfile, {len(approvals)} activations, "
        f"{concurrency} callers, event loop thread",
    )


async def run(
    hsm: Hsm,
    raw_sign_per_s: float,
    plan: Plan,
    directory: Path,
    profile_dir: Path | None = None,
) -> SamResult:
    now = datetime.now(UTC)
    store = SqliteStore(directory / "sam-bench.db")
    await store.open()
    try:
        await store.add_client(
            Client(
                client_id="bench",
                name="Bench Portal",
                api_key_hash=hashlib.sha256(secrets.token_bytes(32)).hexdigest(),
                created_at=now,
            )
        )
        signers = await _signers(store, hsm, now)
        extra = plan.sam_requests // 2 if profile_dir is not None else 0
        total = plan.sam_requests + plan.sam_sequential + extra
        progress(f"sam: {total} pending requests and their SADs")
        approvals = await _approvals(store, signers, total, now)
        t_verify = _verify_seconds(approvals)

        sam = SignatureActivationModule(store=store, hsm=hsm, audience=_AUDIENCE)
        progress(f"sam: {plan.sam_sequential} activations, 1 caller")
        one_time, one_latencies, one_failed = await _activate(
            sam, approvals[: plan.sam_sequential], 1
        )
        progress(
            f"sam: {plan.sam_requests} activations, "
            f"{plan.sam_concurrency} concurrent callers"
        )
        measured = approvals[
            plan.sam_sequential : plan.sam_sequential + plan.sam_requests
        ]
        many_time, latencies, failed = await _activate(
            sam, measured, plan.sam_concurrency
        )
        if profile_dir is not None:
            await _profiled(
                sam,
                approvals[plan.sam_sequential + plan.sam_requests :],
                plan.sam_concurrency,
                profile_dir / "bench-sam",
            )
    finally:
        await store.close()

    rate = len(latencies) / many_time
    one_rate = len(one_latencies) / one_time
    t_sign = 1 / raw_sign_per_s
    ceiling = 1 / (t_verify + t_sign)
    ratio = rate / ceiling
    verdict = "PASS" if ratio >= TARGET_RATIO else "BELOW TARGET"
    detail("== sam: verify_and_sign on SQLite (temporary file) and SoftHSM2")
    detail(f"  one SAD verification (joserfc ES256)   {t_verify * 1e6:7.1f} us")
    detail(f"  one raw PKCS#11 signature              {t_sign * 1e6:7.1f} us")
    detail(f"  ceiling 1/(t_verify + t_sign)          {ceiling:7.0f} /s")
    one_p50 = percentile(one_latencies, 0.5) * 1e3
    detail(
        f"  1 caller:   {one_rate:7.0f} /s  p50 {one_p50:.2f} ms  ({one_failed} failed)"
    )
    detail(
        f"  {plan.sam_concurrency} callers:  {rate:7.0f} /s  "
        f"p50 {percentile(latencies, 0.5) * 1e3:.2f} ms  "
        f"p95 {percentile(latencies, 0.95) * 1e3:.2f} ms  ({failed} failed)"
    )
    beyond = (
        f"{1e6 / rate - (t_verify + t_sign) * 1e6:.0f} us per activation"
        if rate
        else "no activation succeeded, nothing"
    )
    detail(
        f"  ratio to ceiling {ratio:.2f} (target >= {TARGET_RATIO}): {verdict}; "
        f"{beyond} beyond the cryptography"
    )
    if profile_dir is not None:
        detail(f"  cProfile of an extra pass: {profile_dir / 'bench-sam-profile.txt'}")
    detail("")
    rows = (
        Row(
            "sam",
            f"verify_and_sign/s ({plan.sam_concurrency} callers)",
            format_rate(rate),
            f"ceiling {format_rate(ceiling)}",
            f"{ratio:.2f} {verdict}",
        ),
        Row(
            "sam",
            "verify_and_sign/s (1 caller)",
            format_rate(one_rate),
            f"ceiling {format_rate(ceiling)}",
            f"{one_rate / ceiling:.2f}",
        ),
    )
    return SamResult(rate, ceiling, rows)
