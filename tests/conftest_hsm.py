"""pytest plugin: a SoftHSM token for the test session and an open ``Hsm``.

Register it with ``pytest_plugins = ["tests.conftest_hsm"]`` in
``tests/conftest.py``.

python-pkcs11 loads a PKCS#11 module once per process and SoftHSM reads
``SOFTHSM2_CONF`` at that moment, so the whole test session shares one
configuration: the first fixture to need a token sets the variable, later
ones add their tokens to the same token directory.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pkcs11
import pytest

from hsm import Hsm, HsmConfig
from hsm._session import module_lock
from hsm.softhsm import add_softhsm_token, find_softhsm_module, init_softhsm_token


def _make_token_visible(module_path: str, label: str) -> None:
    # SoftHSM lists tokens at C_Initialize. If an earlier fixture already
    # initialised the module, re-initialise it so the new token shows up.
    # That ends every open session of the process; the Hsm instances still
    # open reopen theirs on their next call (HSM-3).
    with module_lock(module_path):
        lib = pkcs11.lib(module_path)
        labels = {token.label for token in lib.get_tokens()}
        if label not in labels:
            lib.reinitialize()


@pytest.fixture(scope="session")
def hsm_config(tmp_path_factory: pytest.TempPathFactory) -> HsmConfig:
    """A fresh token with random label and PINs, in the session's SoftHSM."""
    label = f"test-{secrets.token_hex(6)}"
    so_pin = secrets.token_hex(8)
    user_pin = secrets.token_hex(8)
    existing = os.environ.get("SOFTHSM2_CONF")
    if existing:
        add_softhsm_token(Path(existing), label=label, so_pin=so_pin, user_pin=user_pin)
    else:
        conf = init_softhsm_token(
            tmp_path_factory.mktemp("softhsm"),
            label=label,
            so_pin=so_pin,
            user_pin=user_pin,
        )
        os.environ["SOFTHSM2_CONF"] = str(conf)
    module_path = find_softhsm_module()
    _make_token_visible(module_path, label)
    return HsmConfig(
        module_path=module_path, token_label=label, pin=user_pin, pool_size=4
    )


@pytest.fixture
async def hsm(hsm_config: HsmConfig) -> AsyncIterator[Hsm]:
    """An open ``Hsm`` on the session token, closed after the test."""
    opened = await Hsm.open(hsm_config)
    try:
        yield opened
    finally:
        await opened.close()
