"""Relying-party API: users, activation codes and signature requests."""

from __future__ import annotations

import logging

from aiohttp import web

from server.errors import ApiError
from server.state import CLIENT_AUTH, SERVICE
from server.validation import read_json
from server.views import b64, iso, request_for_client, user_view

__all__ = ["routes"]

log = logging.getLogger(__name__)

routes = web.RouteTableDef()


@routes.post("/api/v1/users")
async def create_user(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    client = await request.app[CLIENT_AUTH].verify(request)
    _, body = await read_json(request, "create_user")
    user = await service.create_user(
        display_name=body["display_name"],
        key_algorithm=body.get("key_algorithm", "EC-P256"),
        user_id=body.get("user_id"),
        client=client,
        second_factor=body.get("second_factor", "none"),
    )
    log.debug("client %s created user %s", client.client_id, user.user_id)
    return web.json_response(user_view(user), status=201)


@routes.post("/api/v1/users/{user_id}/activation-codes")
async def create_activation_code(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    client = await request.app[CLIENT_AUTH].verify(request)
    issued = await service.issue_activation_code(
        request.match_info["user_id"], client=client
    )
    return web.json_response(
        {"activation_code": issued.code, "expires_at": iso(issued.expires_at)},
        status=201,
        headers={"Cache-Control": "no-store"},
    )


@routes.post("/api/v1/signature-requests")
async def create_request(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    client = await request.app[CLIENT_AUTH].verify(request)
    _, body = await read_json(request, "create_request")
    created, new = await service.create_request(client, body)
    credential = await service.sam.credential(created.credential_id)
    return web.json_response(
        request_for_client(created, credential), status=201 if new else 200
    )


@routes.get("/api/v1/signature-requests/{request_id}")
async def get_request(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    client = await request.app[CLIENT_AUTH].verify(request)
    raw_wait = request.query.get("wait", "0")
    try:
        wait = float(raw_wait)
    except ValueError as e:
        raise ApiError(
            400, "invalid_request", "wait must be a number of seconds"
        ) from e
    if not 0 <= wait <= service.settings.long_poll_max:
        raise ApiError(
            400,
            "invalid_request",
            f"wait must be between 0 and {service.settings.long_poll_max} seconds",
        )
    found = await service.wait_for_change(
        request.match_info["request_id"], client.client_id, wait
    )
    credential = await service.sam.credential(found.credential_id)
    return web.json_response(request_for_client(found, credential))


@routes.post("/api/v1/signature-requests/{request_id}/cancel")
async def cancel_request(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    client = await request.app[CLIENT_AUTH].verify(request)
    cancelled = await service.cancel(request.match_info["request_id"], client)
    return web.json_response(request_for_client(cancelled, None))


@routes.get("/api/v1/ca")
async def ca_certificate(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    return web.json_response({"certificate": b64(service.ca.certificate_der)})
