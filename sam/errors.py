"""Reasons the Signature Activation Module refuses an activation.

Every refusal is its own class so that callers, tests and the audit trail
name the exact rule that failed (SAD-3). ``code`` is the stable machine
name; ``kind`` says what sort of failure it is, so that a front end can
choose a status without the SAM knowing anything of HTTP.
"""

from __future__ import annotations

from typing import ClassVar, Literal

__all__ = [
    "ActivationError",
    "AudienceMismatch",
    "AuthorisationExpired",
    "AuthorisationSpent",
    "BadSadSignature",
    "CredentialMismatch",
    "CredentialUnusable",
    "DecisionMismatch",
    "DeviceRevoked",
    "DisplayTextMismatch",
    "ExtensionRefused",
    "ForeignDevice",
    "HashAlreadySigned",
    "HashMismatch",
    "HashNotAuthorised",
    "InvalidAuthorisation",
    "IssuerMismatch",
    "MalformedSad",
    "NonceMismatch",
    "RequestExpired",
    "RequestMismatch",
    "RequestNotFound",
    "RequestNotPending",
    "SadExpired",
    "SadNotYetValid",
    "SadReplayed",
    "SignAlgorithmMismatch",
    "SignatureCountMismatch",
    "SigningFailed",
    "TooManySignatures",
    "UnknownDevice",
    "WrongVerificationCode",
]

Kind = Literal["invalid", "forbidden", "not_found", "conflict", "failed"]


class ActivationError(Exception):
    """Root of every refusal by the SAM."""

    code: ClassVar[str] = "activation_failed"
    kind: ClassVar[Kind] = "invalid"


class MalformedSad(ActivationError):
    code = "invalid_sad"


class UnknownDevice(ActivationError):
    code = "unknown_device"
    kind = "forbidden"


class DeviceRevoked(ActivationError):
    code = "device_revoked"
    kind = "forbidden"


class BadSadSignature(ActivationError):
    code = "invalid_sad_signature"
    kind = "forbidden"


class ForeignDevice(ActivationError):
    """The device belongs to another user than the request's signer."""

    code = "device_not_of_signer"
    kind = "forbidden"


class IssuerMismatch(ActivationError):
    code = "issuer_mismatch"


class AudienceMismatch(ActivationError):
    code = "audience_mismatch"


class DecisionMismatch(ActivationError):
    code = "decision_mismatch"


class RequestMismatch(ActivationError):
    """The SAD was made for another signature request."""

    code = "request_mismatch"


class CredentialMismatch(ActivationError):
    code = "credential_mismatch"


class NonceMismatch(ActivationError):
    code = "nonce_mismatch"


class HashMismatch(ActivationError):
    """A hash is missing, added, changed or reordered, or the algorithm differs."""

    code = "hash_mismatch"


class SignatureCountMismatch(ActivationError):
    code = "signature_count_mismatch"


class DisplayTextMismatch(ActivationError):
    code = "display_text_mismatch"


class SadNotYetValid(ActivationError):
    """``iat`` lies too far in the past or in the future."""

    code = "sad_stale"


class SadExpired(ActivationError):
    code = "sad_expired"


class WrongVerificationCode(ActivationError):
    code = "wrong_verification_code"
    kind = "conflict"


class RequestNotFound(ActivationError):
    code = "request_not_found"
    kind = "not_found"


class SadReplayed(ActivationError):
    """The request was already approved: a SAD is consumed once (SAD-4)."""

    code = "sad_already_used"
    kind = "conflict"


class RequestNotPending(ActivationError):
    code = "request_not_pending"
    kind = "conflict"


class RequestExpired(ActivationError):
    code = "request_expired"
    kind = "conflict"


class CredentialUnusable(ActivationError):
    code = "credential_unusable"
    kind = "failed"


class SigningFailed(ActivationError):
    code = "signing_failed"
    kind = "failed"


# -- spending a CSC authorisation (signatures/signHash) -----------------------


class InvalidAuthorisation(ActivationError):
    """The CSC SAD is not one this server issued for this credential."""

    code = "invalid_authorisation"


class AuthorisationExpired(ActivationError):
    code = "authorisation_expired"


class AuthorisationSpent(ActivationError):
    """Every signature the authorisation allows has been made."""

    code = "authorisation_spent"


class HashNotAuthorised(ActivationError):
    """The approval on the phone did not cover this hash (SAD-5)."""

    code = "hash_not_authorised"


class HashAlreadySigned(ActivationError):
    code = "hash_already_signed"


class TooManySignatures(ActivationError):
    code = "too_many_signatures"


class SignAlgorithmMismatch(ActivationError):
    """The signature algorithm does not fit the key or the approved hash."""

    code = "sign_algorithm_mismatch"


class ExtensionRefused(ActivationError):
    """An authorisation lives at most a fixed span after it was asked for."""

    code = "extension_refused"
