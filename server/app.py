"""The aiohttp application: routes, middleware and the parts' life cycle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import aiohttp
from aiohttp import web

from hsm import Hsm
from sam import SignatureActivationModule
from sam.checkpoint import audit_key_id
from server import csc_api, device_api, oauth, rp_api
from server.auth import ClientAuthenticator, DeviceAuthenticator
from server.ca import load_ca
from server.config import ConfigError, Settings
from server.errors import error_middleware
from server.push import PushSender, load_or_create_vapid, vapid_public_key
from server.service import Service
from server.shared_secret import load_shared_secret
from server.state import CLIENT_AUTH, DEVICE_AUTH, SERVICE
from store import Store, StoreUnavailable

__all__ = ["Parts", "build_service", "create_app", "open_parts"]

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
SWEEP_INTERVAL = 1.0
_VERIFICATION_SETTING = "verification.secret"
_AUTHORISATION_SETTING = "csc.sad_secret"
# A signed audit checkpoint every this many sweeps (and one at stop).
CHECKPOINT_EVERY = 60


@dataclass(slots=True)
class Parts:
    """The store and HSM a server runs on, owned by whoever opened them."""

    store: Store
    hsm: Hsm

    async def close(self) -> None:
        await self.hsm.close()
        await self.store.close()


async def open_parts(settings: Settings) -> Parts:
    settings.apply_environment()
    store = settings.open_store()
    await store.open()
    try:
        hsm = await Hsm.open(settings.hsm_config())
    except BaseException:
        await store.close()
        raise
    return Parts(store=store, hsm=hsm)


async def build_service(
    settings: Settings, parts: Parts, session: aiohttp.ClientSession | None
) -> Service:
    ca = await load_ca(parts.hsm, parts.store)
    if ca is None:
        raise ConfigError("no development CA in the store: run `sigil init` first")
    if settings.vapid_key_file is None:
        raise ConfigError("no VAPID key file configured: run `sigil init` first")
    vapid = load_or_create_vapid(settings.vapid_key_file)
    pusher = (
        PushSender(
            store=parts.store,
            vapid=vapid,
            subject=settings.vapid_subject,
            session=session,
            timeout=settings.push_timeout,
        )
        if session is not None
        else None
    )
    sam = SignatureActivationModule(
        store=parts.store,
        hsm=parts.hsm,
        audience=settings.audience,
        authorisation_secret=await load_shared_secret(
            parts.store, _AUTHORISATION_SETTING
        ),
        authorisation_lifetime=timedelta(seconds=settings.csc_sad_lifetime),
    )
    audit_key = await audit_key_id(parts.store)
    if audit_key is None:
        log.warning("no audit key: run `sigil init`; audit checkpoints are off")
    return Service(
        audit_key_id=audit_key,
        code_secret=await _code_secret(parts.store),
        settings=settings,
        store=parts.store,
        hsm=parts.hsm,
        ca=ca,
        sam=sam,
        pusher=pusher,
        vapid_public_key=vapid_public_key(vapid),
    )


def create_app(settings: Settings, parts: Parts) -> web.Application:
    """An application on parts that the caller opened and will close."""
    app = web.Application(middlewares=[error_middleware], client_max_size=MAX_BODY)
    app.add_routes(rp_api.routes)
    app.add_routes(device_api.routes)
    app.add_routes(oauth.routes)
    app.add_routes(csc_api.routes)
    tokens = oauth.AccessTokens(
        parts.store, issuer=settings.audience, ttl=settings.oauth_token_ttl
    )
    app[oauth.ACCESS_TOKENS] = tokens
    app[DEVICE_AUTH] = DeviceAuthenticator(parts.store)
    app[CLIENT_AUTH] = ClientAuthenticator(parts.store, tokens=tokens)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession() as session:
            service = await build_service(settings, parts, session)
            app[SERVICE] = service
            await service.recover()
            sweeper = asyncio.create_task(_sweep_forever(service))
            # Where the store can tell (MongoDB change streams), long polls
            # wake at once for changes other processes make.
            feed = parts.store.change_feed()
            follower = (
                None
                if feed is None
                else asyncio.create_task(_follow_changes(service, feed))
            )
            await parts.store.append_audit(
                time=_now(),
                event="server.start",
                actor="server",
                subject="server",
                outcome="success",
            )
            try:
                yield
            finally:
                for task in (sweeper, follower):
                    if task is not None:
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await task
                await service.close()
                try:
                    await parts.store.append_audit(
                        time=_now(),
                        event="server.stop",
                        actor="server",
                        subject="server",
                        outcome="success",
                    )
                    await service.checkpoint()
                except StoreUnavailable as e:
                    log.warning("stopping without the closing audit records: %s", e)
                except Exception:
                    log.exception("the closing audit checkpoint failed")

    async def wake_long_polls(app: web.Application) -> None:
        app[SERVICE].watch.close()

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(wake_long_polls)
    return app


async def _code_secret(store: Store) -> bytes:
    """The secret under which verification codes are derived. Codes already
    issued are stored with their request, so a new secret never invalidates
    them."""
    return await load_shared_secret(store, _VERIFICATION_SETTING)


async def _sweep_forever(service: Service) -> None:
    sweeps = 0
    unavailable = False
    while True:
        await asyncio.sleep(SWEEP_INTERVAL)
        sweeps += 1
        try:
            await service.sweep()
            if sweeps % CHECKPOINT_EVERY == 0:
                await service.checkpoint()
        except StoreUnavailable as e:
            # Once per outage, not once a second.
            if not unavailable:
                log.warning("housekeeping paused, the store is unreachable: %s", e)
            unavailable = True
            continue
        except Exception:
            log.exception("housekeeping failed")
        if unavailable:
            log.warning("the store is reachable again; housekeeping resumed")
            unavailable = False


async def _follow_changes(service: Service, feed: AsyncIterator[str]) -> None:
    async for request_id in feed:
        service.watch.changed(request_id)


def _now() -> datetime:
    return datetime.now(UTC)
