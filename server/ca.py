"""The embedded development CA: its key lives in the HSM.

The CA certificate and its key id are kept in the store's settings so that
every server process sharing the store issues from the same CA.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import NameOID

from hsm import Hsm, KeyHandle, KeyPurposeMismatch, KeyType
from hsm.x509 import create_ca_certificate, issue_certificate
from store import Store

__all__ = ["CA_KEY_LABEL", "DevelopmentCA", "ensure_ca", "load_ca"]

log = logging.getLogger(__name__)

CA_KEY_LABEL = "sigil-development-ca"
_KEY_ID = "ca.key_id"
_CERT = "ca.certificate"


@dataclass(frozen=True, slots=True)
class DevelopmentCA:
    hsm: Hsm
    key: KeyHandle
    certificate_der: bytes

    async def issue(self, csr_der: bytes) -> bytes:
        return await issue_certificate(
            self.hsm,
            ca_key=self.key,
            ca_certificate_der=self.certificate_der,
            csr_der=csr_der,
        )


async def load_ca(hsm: Hsm, store: Store) -> DevelopmentCA | None:
    key_id = await store.get_setting(_KEY_ID)
    cert = await store.get_setting(_CERT)
    if key_id is None or cert is None:
        return None
    key = await hsm.get_key(key_id)
    if key.label != CA_KEY_LABEL:
        # The id came from the database; the token says what the key is for.
        raise KeyPurposeMismatch("the CA key id in the store names no CA key")
    return DevelopmentCA(hsm=hsm, key=key, certificate_der=base64.b64decode(cert))


async def ensure_ca(hsm: Hsm, store: Store, *, common_name: str) -> DevelopmentCA:
    """Load the CA, or make its HSM key and self-signed certificate once."""
    existing = await load_ca(hsm, store)
    if existing is not None:
        return existing
    key = await hsm.generate_key(KeyType.EC_P256, label=CA_KEY_LABEL)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Sigil development CA"),
        ]
    )
    der = await create_ca_certificate(hsm, key, subject=subject)
    await store.put_setting(_KEY_ID, key.key_id)
    await store.put_setting(_CERT, base64.b64encode(der).decode("ascii"))
    await store.append_audit(
        time=x509.load_der_x509_certificate(der).not_valid_before_utc,
        event="key.generated",
        actor="operator",
        subject=f"ca:{key.key_id}",
        outcome="success",
        details={"purpose": "development CA", "key_type": str(key.key_type)},
    )
    log.info("development CA created")
    return DevelopmentCA(hsm=hsm, key=key, certificate_der=der)
