"""The HTTP runner: aiohttp's, with JSON answers for unparseable requests.

aiohttp answers a request its parser refuses (a broken request line, a header
over the size limit) before any middleware runs: in plain text that quotes
the offending bytes, which may be an API key, and with the same bytes in an
ERROR log record. This runner answers those in the API's JSON error shape and
logs only the kind of error (INPUT-1, SAD-6).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler, RequestPayloadError
from aiohttp.web_request import BaseRequest

__all__ = ["SigilRunner"]

log = logging.getLogger(__name__)


class _JsonErrorHandler(RequestHandler):
    def log_exception(self, *args: Any, **kw: Any) -> None:
        # A body the client sent undecodable (a false Content-Encoding) and
        # the handler left unread fails again when aiohttp drains it: the
        # client's error, not the server's, and no traceback for the log.
        exc = kw.get("exc_info")
        if isinstance(exc, RequestPayloadError | HttpProcessingError):
            log.warning("dropped a request body: %s", type(exc).__name__)
            return
        super().log_exception(*args, **kw)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        log.warning(
            "refused a request from %s with %s: %s",
            request.remote,
            status,
            type(exc).__name__ if exc is not None else "no detail",
        )
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send the error")
        if status >= 500:
            body = {"error": "server_error", "error_description": "an internal error"}
        else:
            body = {
                "error": "invalid_request",
                "error_description": "the HTTP request could not be parsed",
            }
        response = web.Response(
            status=status, text=json.dumps(body), content_type="application/json"
        )
        response.force_close()
        return response


class _JsonErrorServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _JsonErrorHandler(self, loop=self._loop, **self._kwargs)


class SigilRunner(web.AppRunner):
    """An ``AppRunner`` whose protocol handler answers parser errors in JSON."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # aiohttp builds its low-level server from the application; only the
        # class that makes per-connection handlers differs here.
        server.__class__ = _JsonErrorServer
        return server
