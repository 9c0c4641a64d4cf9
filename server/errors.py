"""JSON errors in the CSC style, for every failure on every path (INPUT-1).

Handlers raise :class:`ApiError`; the middleware turns it, aiohttp's own
HTTP errors and anything unexpected into ``{"error", "error_description"}``
with a fitting status. Nothing unexpected ever shows a stack trace or an
internal message to the caller.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from sam import ActivationError
from store import StoreBusy, StoreUnavailable

__all__ = ["ApiError", "error_middleware", "json_error"]

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_KIND_STATUS = {
    "invalid": 400,
    "forbidden": 403,
    "not_found": 404,
    "conflict": 409,
    "failed": 500,
}

_STATUS_ERROR = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "request_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    503: "service_unavailable",
}


class ApiError(Exception):
    """An error answer: HTTP status, CSC error code and a clear description."""

    def __init__(
        self,
        status: int,
        error: str,
        description: str,
        *,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description
        self.headers = headers or {}


def json_error(
    status: int, error: str, description: str, headers: dict[str, str] | None = None
) -> web.Response:
    body: dict[str, Any] = {"error": error, "error_description": description}
    return web.json_response(body, status=status, headers=headers)


@web.middleware
async def error_middleware(
    request: web.Request, handler: Handler
) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as e:
        return json_error(e.status, e.error, e.description, e.headers)
    except ActivationError as e:
        status = _KIND_STATUS[e.kind]
        return json_error(status, e.code, str(e))
    except StoreBusy:
        log.warning("store busy while serving %s", request.path)
        return json_error(
            503,
            "service_unavailable",
            "another call is changing the same record; try again shortly",
            {"Retry-After": "1"},
        )
    except StoreUnavailable:
        log.warning("store unavailable while serving %s", request.path)
        return json_error(
            503,
            "service_unavailable",
            "the database cannot be reached; try again shortly",
            {"Retry-After": "5"},
        )
    except RequestPayloadError:
        # A body that cannot be decoded (a Content-Encoding it does not
        # have, a broken chunked stream) is the client's to fix.
        response = json_error(
            400,
            "invalid_request",
            "the request body cannot be read: check its Content-Encoding",
        )
        # The rest of such a body cannot be read either: close the
        # connection after the answer, and do not drain the body first
        # (aiohttp would hit the same error again and log it).
        response.force_close()
        request.content.feed_eof()
        return response
    except web.HTTPException as e:
        if e.status < 400:
            raise
        too_large = e.status == 413
        description = "the request body is too large" if too_large else e.reason
        error = _STATUS_ERROR.get(e.status, "invalid_request")
        headers = {k: v for k, v in e.headers.items() if k in ("Allow", "Retry-After")}
        return json_error(e.status, error, description, headers)
    except ConnectionResetError:
        # The client went away mid-request: nothing to answer, nothing wrong.
        log.debug("client left during %s %s", request.method, request.path)
        raise
    except Exception:
        log.exception(
            "unexpected error while serving %s %s", request.method, request.path
        )
        return json_error(500, "server_error", "an internal error occurred")
