"""Keys under which the application keeps its shared parts."""

from __future__ import annotations

from aiohttp import web

from server.auth import ClientAuthenticator, DeviceAuthenticator
from server.service import Service

__all__ = ["CLIENT_AUTH", "DEVICE_AUTH", "SERVICE"]

SERVICE = web.AppKey("service", Service)
DEVICE_AUTH = web.AppKey("device_auth", DeviceAuthenticator)
CLIENT_AUTH = web.AppKey("client_auth", ClientAuthenticator)
