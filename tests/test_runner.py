"""The production runner answers what aiohttp's parser refuses in JSON, and
never echoes or logs the refused bytes (INPUT-1, SAD-6)."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from server.errors import error_middleware
from server.runner import SigilRunner


@pytest.fixture
async def port() -> AsyncIterator[int]:
    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/", hello)
    runner = SigilRunner(app)
    await runner.setup()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    site = web.TCPSite(runner, "127.0.0.1", free)
    await site.start()
    try:
        yield free
    finally:
        await runner.cleanup()


async def _raw(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    await writer.wait_closed()
    return answer


async def test_oversized_header_gets_json_and_its_bytes_stay_out_of_logs(
    port: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "sk_" + "S" * 40
    header = f"Authorization: Bearer {secret} {'x' * 9000}\r\n".encode()

    answer = await _raw(port, b"GET / HTTP/1.1\r\nHost: x\r\n" + header + b"\r\n")

    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"400"
    assert b"application/json" in head
    assert b'"error": "invalid_request"' in body
    assert secret.encode() not in answer
    assert secret not in "\n".join(r.getMessage() for r in caplog.records)
    assert all(r.exc_info is None for r in caplog.records)


async def test_broken_request_line_gets_json(port: int) -> None:
    answer = await _raw(port, b"NOT HTTP AT ALL\r\n\r\n")

    assert answer.split(b" ")[1] == b"400"
    assert b'"error_description"' in answer


async def test_good_request_is_served(port: int) -> None:
    answer = await _raw(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")

    assert answer.startswith(b"HTTP/1.1 200")
    assert answer.endswith(b'{"ok": true}')


@pytest.mark.parametrize("encoding", [b"gzip", b"deflate"])
async def test_body_that_does_not_decode_gets_json_without_a_traceback(
    port: int, caplog: pytest.LogCaptureFixture, encoding: bytes
) -> None:
    body = b'{"not": "compressed"}'
    answer = await _raw(
        port,
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Encoding: "
        + encoding
        + b"\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\nConnection: close\r\n\r\n"
        + body,
    )

    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] in (b"200", b"400")  # the handler never reads it
    assert all(r.exc_info is None for r in caplog.records)
    if head.split(b" ")[1] == b"400":
        assert b'"error_description"' in payload
