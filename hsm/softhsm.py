"""Development tokens in SoftHSM v2 (Debian package ``softhsm2``).

SoftHSM reads ``SOFTHSM2_CONF`` once, at the process's first C_Initialize,
and lists only the tokens that exist then. Make every token first, point
``SOFTHSM2_CONF`` at the configuration, then open the HSM.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

from .errors import TokenSetupError

__all__ = [
    "add_softhsm_token",
    "find_softhsm_module",
    "init_softhsm_token",
    "softhsm_token_labels",
]

logger = logging.getLogger(__name__)

_UTIL = "softhsm2-util"
# Where Debian's libsofthsm2 puts the module, newest layout first.
_MODULE_PATHS = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)
_MAX_LABEL = 32  # CK_TOKEN_INFO.label is 32 bytes, blank padded


def find_softhsm_module() -> str:
    """Path of the SoftHSM PKCS#11 module; TokenSetupError if absent."""
    for path in _MODULE_PATHS:
        if Path(path).is_file():
            return path
    raise TokenSetupError(
        "libsofthsm2.so not found; install the Debian package softhsm2"
    )


def init_softhsm_token(
    directory: Path, *, label: str, so_pin: str, user_pin: str
) -> Path:
    """Write ``directory/softhsm2.conf`` and make the token; return the conf.

    Idempotent: a token that already carries ``label`` is left alone.
    """
    directory = Path(directory)
    tokens = directory / "tokens"
    tokens.mkdir(mode=0o700, parents=True, exist_ok=True)
    conf = directory / "softhsm2.conf"
    text = (
        f"directories.tokendir = {tokens.resolve()}\n"
        "objectstore.backend = file\n"
        "log.level = ERROR\n"
    )
    if not conf.exists() or conf.read_text() != text:
        conf.write_text(text)
    add_softhsm_token(conf, label=label, so_pin=so_pin, user_pin=user_pin)
    return conf


def add_softhsm_token(conf: Path, *, label: str, so_pin: str, user_pin: str) -> None:
    """Make a token labelled ``label`` in the token directory of ``conf``.

    Does nothing if such a token exists. The PINs go to softhsm2-util as
    arguments (it is the token tool); they are never logged, and never put in
    an error message.
    """
    if not label or len(label.encode()) > _MAX_LABEL:
        raise ValueError(f"token label must be 1 to {_MAX_LABEL} bytes")
    if label in softhsm_token_labels(conf):
        logger.debug("SoftHSM token %r already exists", label)
        return
    result = _run_util(
        conf,
        [
            "--init-token",
            "--free",
            "--label",
            label,
            "--so-pin",
            so_pin,
            "--pin",
            user_pin,
        ],
    )
    if result.returncode != 0:
        raise TokenSetupError(
            f"{_UTIL} --init-token failed with exit code {result.returncode}: "
            f"{_scrub(result.stderr or result.stdout, (so_pin, user_pin))}"
        )
    logger.debug("made SoftHSM token %r (conf %s)", label, conf)


def softhsm_token_labels(conf: Path) -> list[str]:
    """Labels of the initialised tokens that ``conf`` points at."""
    result = _run_util(conf, ["--show-slots"])
    if result.returncode != 0:
        raise TokenSetupError(
            f"{_UTIL} --show-slots failed with exit code {result.returncode}: "
            f"{result.stderr.strip()}"
        )
    labels = []
    for line in result.stdout.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "Label" and value.strip():
            labels.append(value.strip())
    return labels


def _run_util(conf: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    util = shutil.which(_UTIL)
    if util is None:
        raise TokenSetupError(
            f"{_UTIL} not found on PATH; install the Debian package softhsm2"
        )
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    try:
        return subprocess.run(
            [util, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        # The exception text would show the command line, PINs included.
        raise TokenSetupError(f"{_UTIL} {args[0]} failed: {type(e).__name__}") from None


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text.strip()[:500]
