"""Signature Activation Module: the only way to a signer's key."""

from sam.activation import (
    SignatureActivationModule,
    display_text_hash,
    mechanism_for,
    signing_key_label,
)
from sam.codes import code_choices, verification_code
from sam.errors import *  # noqa: F403
from sam.errors import __all__ as _errors

__all__ = [
    "SignatureActivationModule",
    "code_choices",
    "display_text_hash",
    "mechanism_for",
    "signing_key_label",
    "verification_code",
    *_errors,
]
