"""Key objects on the token: templates, look-up and public-key encoding.

Everything here is blocking PKCS#11 work; callers hold the module lock and
run it on a worker thread. Attribute names follow PKCS#11 v2.40 section 4.
"""

from __future__ import annotations

import contextlib
from typing import Any, cast

import pkcs11
from asn1crypto import core, keys
from pkcs11 import Attribute, MechanismFlag, ObjectClass, _pkcs11
from pkcs11 import KeyType as P11KeyType
from pkcs11 import exceptions as p11e
from pkcs11.types import SignMixin

from .algorithms import KeyType
from .errors import HsmError, MechanismUnsupported

__all__ = [
    "destroy_key_objects",
    "find_objects",
    "find_private_key",
    "find_public_key",
    "generate_key_pair",
    "key_type_of",
    "subject_public_key_info",
]

_EC_PARAMS = {
    key_type: keys.ECDomainParameters(name="named", value=key_type.curve_name).dump()
    for key_type in (KeyType.EC_P256, KeyType.EC_P384)
}
_EC_TYPE_BY_PARAMS = {params: key_type for key_type, params in _EC_PARAMS.items()}
_RSA_TYPE_BY_BITS = {
    key_type.bits: key_type for key_type in (KeyType.RSA_2048, KeyType.RSA_3072)
}

# HSM-1: the private half is a token object that never leaves the token in
# clear (CKA_SENSITIVE, not CKA_EXTRACTABLE), needs a login to be used
# (CKA_PRIVATE) and can sign and nothing else.
_PRIVATE_TEMPLATE: dict[Attribute, Any] = {
    Attribute.TOKEN: True,
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
    Attribute.SIGN: True,
    Attribute.DECRYPT: False,
    Attribute.UNWRAP: False,
    Attribute.DERIVE: False,
}
_PUBLIC_TEMPLATE: dict[Attribute, Any] = {
    Attribute.TOKEN: True,
    Attribute.PRIVATE: False,
    Attribute.VERIFY: True,
    Attribute.ENCRYPT: False,
    Attribute.WRAP: False,
}
_CAPABILITIES = MechanismFlag.SIGN | MechanismFlag.VERIFY


def generate_key_pair(
    session: pkcs11.Session, key_type: KeyType, *, key_id: bytes, label: str
) -> tuple[pkcs11.PublicKey, SignMixin]:
    """C_GenerateKeyPair in the token (HSM-1); both halves share CKA_ID."""
    common: dict[str, Any] = {
        "id": key_id,
        "label": label,
        "store": True,
        "capabilities": _CAPABILITIES,
        "public_template": dict(_PUBLIC_TEMPLATE),
        "private_template": dict(_PRIVATE_TEMPLATE),
    }
    if key_type.is_ec:
        params = session.create_domain_parameters(
            P11KeyType.EC, {Attribute.EC_PARAMS: _EC_PARAMS[key_type]}, local=True
        )
        public_key, private_key = params.generate_keypair(**common)
    else:
        public_key, private_key = session.generate_keypair(
            P11KeyType.RSA, key_type.bits, **common
        )
    # python-pkcs11 mixes the operations an object allows (CKA_SIGN here)
    # into its class at run time; its annotations cannot say so.
    return public_key, cast(SignMixin, private_key)


def find_objects(session: pkcs11.Session, attrs: dict[Attribute, Any]) -> list[Any]:
    """C_FindObjects for ``attrs``, leaving no search open if it fails.

    python-pkcs11 0.10's ``Session.get_objects`` leaves its search context
    active when C_FindObjectsInit fails (on a lost session, say); the
    context's finaliser then calls C_FindObjectsFinal and its error surfaces
    as an unraisable exception. Finishing the context here avoids that.
    """
    # The stub of the Cython module declares only `lib`.
    search = _pkcs11.SearchIter(session, attrs, 16)  # type: ignore[attr-defined]
    try:
        search.__enter__()
        return [obj for batch in search for obj in batch]
    finally:
        # Ends a search still active (releasing the session's operation
        # lock); does nothing once the search ran to its end.
        with contextlib.suppress(p11e.PKCS11Error):
            search.__exit__(None, None, None)


def _find_one(session: pkcs11.Session, object_class: ObjectClass, key_id: bytes) -> Any:
    found = find_objects(session, {Attribute.CLASS: object_class, Attribute.ID: key_id})
    if len(found) > 1:
        raise HsmError(
            f"{len(found)} {object_class.name.lower()} objects share id "
            f"{key_id.hex()}; refusing to guess"
        )
    return found[0] if found else None


def find_private_key(session: pkcs11.Session, key_id: bytes) -> SignMixin | None:
    key: SignMixin | None = _find_one(session, ObjectClass.PRIVATE_KEY, key_id)
    return key


def find_public_key(session: pkcs11.Session, key_id: bytes) -> pkcs11.PublicKey | None:
    key: pkcs11.PublicKey | None = _find_one(session, ObjectClass.PUBLIC_KEY, key_id)
    return key


def key_type_of(private_key: SignMixin) -> KeyType:
    """Which of our key types a token key is; MechanismUnsupported otherwise."""
    p11_type = private_key[Attribute.KEY_TYPE]
    if p11_type == P11KeyType.EC:
        key_type = _EC_TYPE_BY_PARAMS.get(bytes(private_key[Attribute.EC_PARAMS]))
        if key_type is None:
            raise MechanismUnsupported("EC key on a curve other than P-256 or P-384")
        return key_type
    if p11_type == P11KeyType.RSA:
        bits = len(private_key[Attribute.MODULUS]) * 8
        rsa_type = _RSA_TYPE_BY_BITS.get(bits)
        if rsa_type is None:
            raise MechanismUnsupported(f"RSA key of {bits} bits is not supported")
        return rsa_type
    raise MechanismUnsupported(f"key type {p11_type!r} is not supported")


def _ec_point(raw: bytes, key_type: KeyType) -> bytes:
    # PKCS#11 v2.40 wants CKA_EC_POINT as a DER OCTET STRING; some modules
    # hand back the bare uncompressed point. Tell them apart by length.
    coordinate = (key_type.bits + 7) // 8
    if len(raw) == 1 + 2 * coordinate and raw[0] == 0x04:
        return raw
    point: bytes = core.OctetString.load(raw).native
    return point


def subject_public_key_info(public_key: pkcs11.PublicKey, key_type: KeyType) -> bytes:
    """RFC 5280 SubjectPublicKeyInfo (RFC 5480 for EC, RFC 3279 for RSA)."""
    if key_type.is_ec:
        info = keys.PublicKeyInfo(
            {
                "algorithm": {
                    "algorithm": "ec",
                    "parameters": keys.ECDomainParameters(
                        name="named", value=key_type.curve_name
                    ),
                },
                "public_key": _ec_point(
                    bytes(public_key[Attribute.EC_POINT]), key_type
                ),
            }
        )
    else:
        info = keys.PublicKeyInfo(
            {
                "algorithm": {"algorithm": "rsa", "parameters": core.Null()},
                "public_key": keys.RSAPublicKey(
                    {
                        "modulus": int.from_bytes(public_key[Attribute.MODULUS]),
                        "public_exponent": int.from_bytes(
                            public_key[Attribute.PUBLIC_EXPONENT]
                        ),
                    }
                ),
            }
        )
    der: bytes = info.dump()
    return der


def destroy_key_objects(session: pkcs11.Session, key_id: bytes) -> int:
    """C_DestroyObject on every key object with this CKA_ID; returns count."""
    destroyed = 0
    for object_class in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
        found = find_objects(
            session, {Attribute.CLASS: object_class, Attribute.ID: key_id}
        )
        for obj in found:
            obj.destroy()
            destroyed += 1
    return destroyed
