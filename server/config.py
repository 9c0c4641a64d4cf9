"""Server configuration: a TOML file, overridden by the environment.

Secrets (the HSM PIN) come from a file or the environment, never from the
command line, so they do not show in process listings or shell history.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from hsm import HsmConfig
from store import Store, open_store

__all__ = ["ConfigError", "Settings", "load_settings"]

DEFAULT_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
CONFIG_NAME = "sigil.toml"


class ConfigError(Exception):
    """The configuration is missing or invalid."""


@dataclass(frozen=True, slots=True)
class Settings:
    home: Path
    config_file: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str | None = None
    audience: str = "sigil"
    store: str = ""
    mongodb_database: str = "sigil"
    pkcs11_module: str = DEFAULT_MODULE
    token_label: str = "sigil"  # noqa: S105 - a label, not a secret
    hsm_pin: str = field(default="", repr=False)
    softhsm2_conf: str | None = None
    hsm_pool_size: int = 4
    vapid_key_file: Path | None = None
    vapid_subject: str = "mailto:operator@sigil.invalid"
    allow_http_push: bool = False
    max_pending_per_user: int = 20
    default_ttl: int = 120
    min_ttl: int = 30
    max_ttl: int = 600
    finished_retention: int = 3600
    max_hashes: int = 32
    activation_code_ttl: int = 900
    long_poll_max: int = 30
    csc_sad_lifetime: int = 300
    csc_multisign: int = 32
    push_timeout: float = 10.0
    oauth_token_ttl: int = 3600
    pin_max_tries: int = 5
    pin_lock_seconds: int = 900

    def hsm_config(self) -> HsmConfig:
        if not self.hsm_pin:
            raise ConfigError(
                "no HSM PIN: set SIGIL_HSM_PIN or hsm.pin_file in the configuration"
            )
        return HsmConfig(
            module_path=self.pkcs11_module,
            token_label=self.token_label,
            pin=self.hsm_pin,
            pool_size=self.hsm_pool_size,
        )

    def open_store(self) -> Store:
        """The configured store, not opened yet (see store.open_store)."""
        return open_store(
            self.store,
            database=self.mongodb_database,
            finished_retention=timedelta(seconds=self.finished_retention),
        )

    def apply_environment(self) -> None:
        """Point SoftHSM2 at the project's token folder before the first use."""
        if self.softhsm2_conf and "SOFTHSM2_CONF" not in os.environ:
            os.environ["SOFTHSM2_CONF"] = self.softhsm2_conf


def _home() -> Path:
    return Path(os.environ.get("SIGIL_HOME", "var")).resolve()


def load_settings(home: Path | None = None) -> Settings:
    """Read ``$SIGIL_CONFIG`` or ``<home>/sigil.toml``, then the environment."""
    home = (home or _home()).resolve()
    path = Path(os.environ.get("SIGIL_CONFIG", home / CONFIG_NAME))
    data: dict[str, Any] = {}
    config_file = path if path.exists() else None
    if config_file is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"cannot read {path}: {e}") from e
    server = data.get("server", {})
    hsm = data.get("hsm", {})
    push = data.get("push", {})
    requests = data.get("requests", {})
    store = data.get("store", {})
    oauth = data.get("oauth", {})
    factors = data.get("factors", {})
    env = os.environ

    pin = env.get("SIGIL_HSM_PIN", "")
    pin_file = hsm.get("pin_file")
    if not pin and pin_file:
        try:
            pin = (home / pin_file).read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ConfigError(f"cannot read the HSM PIN file: {e.strerror}") from e

    vapid = push.get("vapid_key_file")
    conf = hsm.get("softhsm2_conf")
    try:
        return Settings(
            home=home,
            config_file=config_file,
            host=env.get("SIGIL_HOST", server.get("host", "127.0.0.1")),
            port=int(env.get("SIGIL_PORT", server.get("port", 8080))),
            public_url=_public_url(
                env.get("SIGIL_PUBLIC_URL") or server.get("public_url")
            ),
            audience=server.get("audience", "sigil"),
            store=env.get("SIGIL_STORE")
            or env.get("MONGODB_URI")
            or store.get("url", str(home / "sigil.db")),
            mongodb_database=env.get(
                "SIGIL_MONGODB_DB", store.get("database", "sigil")
            ),
            pkcs11_module=env.get(
                "SIGIL_PKCS11_MODULE", hsm.get("module", DEFAULT_MODULE)
            ),
            token_label=env.get("SIGIL_TOKEN_LABEL", hsm.get("token_label", "sigil")),
            hsm_pin=pin,
            softhsm2_conf=str(home / conf) if conf else None,
            hsm_pool_size=int(hsm.get("pool_size", 4)),
            vapid_key_file=home / vapid if vapid else None,
            vapid_subject=push.get("subject", "mailto:operator@sigil.invalid"),
            allow_http_push=bool(push.get("allow_http_endpoints", False)),
            max_pending_per_user=int(requests.get("max_pending_per_user", 20)),
            default_ttl=int(requests.get("default_ttl_seconds", 120)),
            min_ttl=int(requests.get("min_ttl_seconds", 30)),
            max_ttl=int(requests.get("max_ttl_seconds", 600)),
            finished_retention=int(requests.get("finished_retention_seconds", 3600)),
            max_hashes=_bounded(
                requests.get("max_hashes", 32), "requests.max_hashes", 1, 100
            ),
            csc_sad_lifetime=int(data.get("csc", {}).get("sad_lifetime_seconds", 300)),
            # The phone's SAD lists every hash and is capped at 16 KiB: 128
            # SHA-512 hashes fit, 100 with room to spare.
            csc_multisign=_bounded(
                data.get("csc", {}).get("multisign", 32), "csc.multisign", 1, 100
            ),
            activation_code_ttl=int(
                data.get("enrolment", {}).get("activation_code_ttl_seconds", 900)
            ),
            oauth_token_ttl=_token_ttl(oauth.get("token_ttl_seconds", 3600)),
            pin_max_tries=_bounded(
                factors.get("pin_max_tries", 5), "factors.pin_max_tries", 1, 100
            ),
            pin_lock_seconds=_bounded(
                factors.get("pin_lock_seconds", 900),
                "factors.pin_lock_seconds",
                1,
                30 * 86_400,
            ),
        )
    except (TypeError, ValueError) as e:
        raise ConfigError(
            f"invalid value in {path} or a SIGIL_* environment variable: {e}"
        ) from e


def _token_ttl(value: Any) -> int:
    ttl = int(value)
    if not 60 <= ttl <= 86_400:
        raise ValueError("oauth.token_ttl_seconds must be between 60 and 86400")
    return ttl


def _bounded(value: Any, name: str, low: int, high: int) -> int:
    number = int(value)
    if not low <= number <= high:
        raise ValueError(f"{name} must be between {low} and {high}")
    return number


def _public_url(value: Any) -> str | None:
    """``server.public_url``: scheme, host and port only, e.g.
    ``https://sign.example.com``; None when not configured."""
    if value is None or value == "":
        return None
    problem = ValueError(
        "server.public_url must be an http or https URL without a path, query "
        "or credentials, e.g. https://sign.example.com"
    )
    if not isinstance(value, str) or not value.isprintable() or " " in value:
        raise problem
    parts = urlsplit(value)
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or "@" in parts.netloc
        or parts.path not in ("", "/")
        or "?" in value
        or "#" in value
    ):
        raise problem
    try:
        _ = parts.port  # a port that is no number, or out of range
    except ValueError:
        raise problem from None
    return f"{parts.scheme}://{parts.netloc}"
