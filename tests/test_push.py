"""What the server does with each answer of a push service (PUSH-1 to
PUSH-3), against the simulated phone's real push endpoint."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from mobile_stub import Policy
from tests.conftest_server import EnrolFactory, Enrolled, Sigil, sha256


async def _eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def _request(sigil: Sigil, user: Enrolled, enrol: EnrolFactory) -> str:
    created = await sigil.rp.request_signature(
        user_id=user.user_id, hashes=[sha256(b"doc")], display_text="Sign?"
    )
    enrol.expected[created["request_id"]] = created["verification_code"]  # type: ignore[attr-defined]
    return str(created["request_id"])


@pytest.mark.parametrize("status", [404, 410])
async def test_gone_subscription_is_removed_push2(
    sigil: Sigil, enrol: EnrolFactory, status: int
) -> None:
    user = await enrol()
    user.phone.push_status = status

    rid = await _request(sigil, user, enrol)

    async def removed() -> bool:
        device = await sigil.store.get_device(user.phone.device_id)
        return device is not None and device.push_subscription is None

    await _eventually(removed)
    events = [(r.event, r.outcome) for r in await sigil.store.audit_records()]
    assert ("device.subscription_removed", f"push_status:{status}") in events
    # The request stays approvable: the phone finds it by polling.
    shown = await user.phone.poll_once()
    assert [s.request_id for s in shown] == [rid]
    assert (await sigil.rp.wait_final(rid, timeout=5))["state"] == "signed"
    # Later requests no longer try the removed subscription.
    attempts = user.phone.push_attempts
    await _request(sigil, user, enrol)
    await asyncio.sleep(0.3)
    assert user.phone.push_attempts == attempts


async def test_retry_after_is_honoured_on_429_push2(
    sigil: Sigil, enrol: EnrolFactory
) -> None:
    user = await enrol()
    user.phone.push_status = 429
    user.phone.push_retry_after = 1

    started = time.monotonic()
    rid = await _request(sigil, user, enrol)
    await _eventually(lambda: _true(user.phone.push_attempts >= 1))
    user.phone.push_status = 201
    await user.phone.wait_for(rid, timeout=5)

    assert user.phone.push_attempts == 2
    assert time.monotonic() - started >= 0.9
    assert (await sigil.rp.wait_final(rid, timeout=5))["state"] == "signed"


@pytest.mark.parametrize("status", [413, 500, 503])
async def test_refused_push_keeps_subscription_and_request_approvable_push2(
    sigil: Sigil, enrol: EnrolFactory, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    user = await enrol()
    user.phone.push_status = status

    rid = await _request(sigil, user, enrol)
    await _eventually(lambda: _true(user.phone.push_attempts >= 1))
    await asyncio.sleep(0.1)

    device = await sigil.store.get_device(user.phone.device_id)
    assert device is not None and device.push_subscription is not None
    assert any(
        r.name == "server.push" and r.levelname == "WARNING" for r in caplog.records
    )
    shown = await user.phone.poll_once()
    assert [s.request_id for s in shown] == [rid]
    assert (await sigil.rp.wait_final(rid, timeout=5))["state"] == "signed"


async def test_one_bad_subscription_does_not_stop_the_others_push3(
    sigil: Sigil, enrol: EnrolFactory
) -> None:
    user = await enrol()
    user.phone.push_status = 500
    code = await sigil.operator_code(user.user_id)
    second = user.phone.clone_with_new_key(policy=Policy.APPROVE)
    async with second:
        await second.enrol(code)
        rid = await _request(sigil, user, enrol)
        shown = await second.wait_for(rid, timeout=5)

    assert shown.outcome is not None and shown.outcome[0] == 200
    assert (await sigil.rp.get(rid))["state"] == "signed"


async def test_unreachable_push_endpoint_leaves_request_pending_push2(
    sigil: Sigil, enrol: EnrolFactory
) -> None:
    user = await enrol(policy=Policy.SILENT)
    code = await sigil.operator_code(user.user_id)
    gone = user.phone.clone_with_new_key(policy=Policy.SILENT)
    async with gone:
        await gone.enrol(code)
    # The second phone's endpoint is closed now: connection refused.

    rid = await _request(sigil, user, enrol)
    await user.phone.wait_for(rid, timeout=5)

    assert (await sigil.rp.get(rid))["state"] == "pending"
    devices = await sigil.store.list_devices(user_id=user.user_id)
    assert all(d.push_subscription is not None for d in devices)


async def _true(value: bool) -> bool:
    return value
