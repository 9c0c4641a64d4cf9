"""Device API: enrolment and approvals, every call signed (AUTH-2)."""

from __future__ import annotations

import logging

from aiohttp import web

from server.errors import ApiError
from server.state import DEVICE_AUTH, SERVICE
from server.validation import parse_json
from server.views import b64, iso, request_for_device
from store import Device, RequestState

__all__ = ["routes"]

log = logging.getLogger(__name__)

routes = web.RouteTableDef()


async def _device(request: web.Request, body: bytes) -> Device:
    proof = await request.app[DEVICE_AUTH].verify(request, body)
    if proof.device is None:  # only enrolment proofs lack a device
        raise ApiError(401, "unauthorized", "the device is not enrolled")
    return proof.device


@routes.post("/device/v1/enrolment/challenge")
async def challenge(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    value, lifetime = await service.new_challenge()
    return web.json_response(
        {
            "challenge": value,
            "expires_in": lifetime,
            "vapid_public_key": service.vapid_public_key,
            "audience": service.sam.audience,
        },
        status=201,
    )


@routes.post("/device/v1/enrolment")
async def enrol(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    raw = await request.read()
    proof = await request.app[DEVICE_AUTH].verify(request, raw, enrolment=True)
    body = parse_json(raw, "enrol")
    enrolled = await service.enrol(
        device_id=proof.device_id, public_jwk=proof.public_jwk, body=body
    )
    answer = {
        "device_id": enrolled.device.device_id,
        "user_id": enrolled.device.user_id,
        "credential_id": enrolled.credential.credential_id,
        "certificate": b64(enrolled.credential.certificate_der),
    }
    if enrolled.totp_uri is not None:
        # The TOTP secret, once and only here (AUTH-3); never logged.
        answer["totp_uri"] = enrolled.totp_uri
    return web.json_response(answer, status=201, headers={"Cache-Control": "no-store"})


@routes.get("/device/v1/requests")
async def pending(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    device = await _device(request, b"")
    found = await service.store.list_requests(
        user_id=device.user_id, states=(RequestState.PENDING,)
    )
    visible = [await service.current(r) for r in found]
    return web.json_response(
        {
            "requests": [
                {"request_id": r.request_id, "expires_at": iso(r.expires_at)}
                for r in visible
                if r.state is RequestState.PENDING
            ]
        }
    )


@routes.get("/device/v1/requests/{request_id}")
async def details(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    device = await _device(request, b"")
    found = await service.visible_request(
        request.match_info["request_id"], user_id=device.user_id
    )
    return web.json_response(
        request_for_device(
            found,
            choices=service.choices(found),
            audience=service.sam.audience,
            relying_party=await service.client_name(found.client_id),
            second_factor=await service.second_factor_for(found),
        )
    )


@routes.post("/device/v1/requests/{request_id}/approve")
async def approve(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    raw = await request.read()
    device = await _device(request, raw)
    body = parse_json(raw, "approve")
    signed = await service.approve(
        request.match_info["request_id"],
        body["sad"],
        device,
        pin=body.get("pin"),
        otp=body.get("otp"),
    )
    return web.json_response(
        {"request_id": signed.request_id, "state": str(signed.state)}
    )


@routes.post("/device/v1/requests/{request_id}/reject")
async def reject(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    raw = await request.read()
    device = await _device(request, raw)
    body = parse_json(raw, "sad")
    rejected = await service.reject(
        request.match_info["request_id"], body["sad"], device
    )
    return web.json_response(
        {"request_id": rejected.request_id, "state": str(rejected.state)}
    )
