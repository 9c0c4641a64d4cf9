"""A body the server cannot decode is the client's error, on every path."""

from __future__ import annotations

import logging

import pytest

from tests.conftest_server import Sigil


@pytest.mark.parametrize(
    ("path", "content_type", "authorised"),
    [
        ("/csc/v2/info", "application/json", False),
        ("/oauth2/token", "application/x-www-form-urlencoded", False),
        ("/device/v1/enrolment", "application/json", False),
        ("/csc/v1/credentials/list", "application/json", True),
        ("/api/v1/signature-requests", "application/json", True),
    ],
)
# A deflate body this short fails in aiohttp's parser, before any handler:
# server.runner answers those (tests/test_runner.py).
@pytest.mark.parametrize("encoding", ["gzip"])
async def test_body_that_does_not_decode_is_a_400_input1(
    sigil: Sigil,
    caplog: pytest.LogCaptureFixture,
    path: str,
    content_type: str,
    authorised: bool,
    encoding: str,
) -> None:
    headers = {"Content-Type": content_type, "Content-Encoding": encoding}
    if authorised:
        headers["Authorization"] = f"Bearer {sigil.rp.api_key}"

    with caplog.at_level(logging.WARNING):
        async with sigil.session.post(
            sigil.url + path, data=b"{} not compressed", headers=headers
        ) as response:
            status, body = response.status, await response.json()

    assert status == 400
    assert body == {
        "error": "invalid_request",
        "error_description": "the request body cannot be read: check its "
        "Content-Encoding",
    }
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
