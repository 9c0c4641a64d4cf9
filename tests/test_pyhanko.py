"""pyHanko signs PDFs through the CSC API over real loopback HTTP.

pyHanko's own ``CSCSigner`` (via rp_client.pyhanko_csc) reads the
credential, asks for the phone's approval of the batch's hashes and calls
``signatures/signHash``; pyHanko's validator then checks each PDF against
the development CA: intact, valid, trusted.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from asn1crypto import algos
from asn1crypto import x509 as asn1_x509
from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.pdf_utils.writer import PageObject, PdfFileWriter
from pyhanko.sign import PdfSignatureMetadata, async_sign_pdf
from pyhanko.sign.general import SigningError
from pyhanko.sign.signers.csc_signer import CSCSigner
from pyhanko.sign.validation import async_validate_pdf_signature
from pyhanko.sign.validation.status import PdfSignatureStatus
from pyhanko_certvalidator import ValidationContext

from mobile_stub import Policy
from rp_client import pyhanko_csc
from rp_client.pyhanko_csc import CscRefused, PhoneApproval, access_token, csc_signer
from tests.conftest_server import EnrolFactory, Enrolled, Sigil

SHA256 = "2.16.840.1.101.3.4.2.1"
PIN = "4711"


@dataclass
class Wire:
    """The CSC calls pyHanko's session made: (path, JSON body)."""

    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def bodies(self, method: str) -> list[dict[str, Any]]:
        return [body for path, body in self.calls if path.endswith("/" + method)]

    def paths(self) -> list[str]:
        return [path for path, _ in self.calls]


@dataclass
class Pdfs:
    """Signs PDFs through ``sigil`` with pyHanko, as a relying app would."""

    sigil: Sigil
    enrol: EnrolFactory
    session: aiohttp.ClientSession
    wire: Wire
    token: str
    ca: asn1_x509.Certificate

    def show_code(self, handle: str, code: str) -> None:
        # What the signer reads off the relying app; the simulated phone
        # picks it among the three it shows.
        self.enrol.expected[handle] = code  # type: ignore[attr-defined]

    async def signer(self, user: Enrolled, **options: Any) -> CSCSigner:
        return await csc_signer(
            self.session,
            self.sigil.url,
            user.credential_id,
            self.token,
            show_code=self.show_code,
            **{"poll_interval": 0.05, "timeout": 20.0, **options},
        )

    async def sign(self, signer: CSCSigner, count: int = 1) -> list[BytesIO]:
        async def one(i: int) -> BytesIO:
            writer = IncrementalPdfFileWriter(BytesIO(BLANK_PDF))
            meta = PdfSignatureMetadata(field_name="Signature1", reason=f"doc {i}")
            signed: BytesIO = await async_sign_pdf(writer, meta, signer=signer)
            return signed

        return list(await asyncio.gather(*(one(i) for i in range(count))))

    async def validate(self, pdf: BytesIO) -> PdfSignatureStatus:
        (embedded,) = PdfFileReader(pdf).embedded_signatures
        status: PdfSignatureStatus = await async_validate_pdf_signature(
            embedded,
            signer_validation_context=ValidationContext(trust_roots=[self.ca]),
        )
        assert status.intact and status.valid, status.summary()
        assert status.trusted and status.bottom_line, status.summary()
        return status

    async def signatures_made(self) -> int:
        """Signatures the HSM made, by the audit trail (``key.use`` records
        one per signHash call, with its number of signatures)."""
        records = await self.sigil.store.audit_records(limit=1000)
        return sum(
            int(r.details["signatures"])
            for r in records
            if r.event == "key.use" and r.outcome == "success"
        )


def _blank_pdf() -> bytes:
    writer = PdfFileWriter()
    content = writer.add_object(generic.StreamObject(stream_data=b""))
    writer.insert_page(PageObject(contents=content, media_box=[0, 0, 595, 842]))
    out = BytesIO()
    writer.write(out)
    return out.getvalue()


BLANK_PDF = _blank_pdf()


def _recording(wire: Wire) -> aiohttp.TraceConfig:
    trace = aiohttp.TraceConfig()

    async def sent(
        session: aiohttp.ClientSession,
        context: SimpleNamespace,
        params: aiohttp.TraceRequestChunkSentParams,
    ) -> None:
        if "/csc/" in params.url.path:
            wire.calls.append((params.url.path, json.loads(params.chunk)))

    trace.on_request_chunk_sent.append(sent)
    return trace


@pytest.fixture
async def pdfs(sigil: Sigil, enrol: EnrolFactory) -> AsyncIterator[Pdfs]:
    wire = Wire()
    async with aiohttp.ClientSession(trace_configs=[_recording(wire)]) as session:
        token = await access_token(session, sigil.url, "portal", sigil.rp.api_key)
        ca = asn1_x509.Certificate.load(await sigil.rp.ca_certificate())
        yield Pdfs(sigil, enrol, session, wire, token, ca)


async def test_p256_credential_signs_a_pdf_that_validates(pdfs: Pdfs) -> None:
    user = await pdfs.enrol()
    signer = await pdfs.signer(user)

    (signed,) = await pdfs.sign(signer)

    status = await pdfs.validate(signed)
    assert status.pkcs7_signature_mechanism == "sha256_ecdsa"
    assert status.md_algorithm == "sha256"
    assert status.coverage.name == "ENTIRE_FILE"
    assert "Alice Example" in status.signing_cert.subject.human_friendly
    # pyHanko's stock v1.0.4 calls, the OAuth token on each, the hash the
    # phone showed is the one signed.
    info, authorize_path, *checks, sign_path = pdfs.wire.paths()
    assert (info, authorize_path, sign_path) == (
        "/csc/v1/credentials/info",
        "/csc/v1/credentials/authorize",
        "/csc/v1/signatures/signHash",
    )
    assert checks and set(checks) == {"/csc/v1/credentials/authorizeCheck"}
    (authorize,) = pdfs.wire.bodies("credentials/authorize")
    (sign_hash,) = pdfs.wire.bodies("signatures/signHash")
    assert authorize["numSignatures"] == 1 and "hashes" not in authorize
    assert sign_hash["hash"] == authorize["hash"]
    assert sign_hash["hashAlgo"] == SHA256
    assert sign_hash["signAlgo"] == "1.2.840.10045.4.3.2"
    (shown,) = user.phone.shown
    assert list(shown.hashes) == authorize["hash"]
    assert await pdfs.signatures_made() == 1


async def test_rsa_2048_signs_with_pkcs1_v1_5_and_with_pss(pdfs: Pdfs) -> None:
    user = await pdfs.enrol(key_algorithm="RSA-2048")

    (pkcs1,) = await pdfs.sign(await pdfs.signer(user))
    (pss,) = await pdfs.sign(await pdfs.signer(user, prefer_pss=True))

    assert (await pdfs.validate(pkcs1)).pkcs7_signature_mechanism == "sha256_rsa"
    assert (await pdfs.validate(pss)).pkcs7_signature_mechanism == "rsassa_pss"
    first, second = pdfs.wire.bodies("signatures/signHash")
    assert first["signAlgo"] == "1.2.840.113549.1.1.11"
    assert "signAlgoParams" not in first
    # RSASSA-PSS with SHA-256, MGF1-SHA-256 and the longest salt (222 bytes).
    assert second["signAlgo"] == "1.2.840.113549.1.1.10"
    params = algos.RSASSAPSSParams.load(base64.b64decode(second["signAlgoParams"]))
    assert params["hash_algorithm"]["algorithm"].native == "sha256"
    assert params["mask_gen_algorithm"]["parameters"]["algorithm"].native == "sha256"
    assert params["salt_length"].native == 222
    assert await pdfs.signatures_made() == 2


async def test_p384_credential_signs_with_sha384(pdfs: Pdfs) -> None:
    user = await pdfs.enrol(key_algorithm="EC-P384")

    (signed,) = await pdfs.sign(await pdfs.signer(user))

    status = await pdfs.validate(signed)
    assert status.pkcs7_signature_mechanism == "sha384_ecdsa"
    assert status.md_algorithm == "sha384"
    (authorize,) = pdfs.wire.bodies("credentials/authorize")
    assert "hashAlgo" not in authorize  # v1.0.4: the server infers it (48 bytes)


async def test_three_pdfs_are_signed_with_one_approval(pdfs: Pdfs) -> None:
    user = await pdfs.enrol()
    signer = await pdfs.signer(user, batch_size=3)

    signed = await pdfs.sign(signer, count=3)

    for pdf in signed:
        await pdfs.validate(pdf)
    assert len(user.phone.shown) == 1
    assert len(user.phone.shown[0].hashes) == 3
    (authorize,) = pdfs.wire.bodies("credentials/authorize")
    (sign_hash,) = pdfs.wire.bodies("signatures/signHash")
    assert authorize["numSignatures"] == 3
    assert sorted(sign_hash["hash"]) == sorted(authorize["hash"])
    assert await pdfs.signatures_made() == 3
    found = await pdfs.sigil.store.get_request(user.phone.shown[0].request_id)
    assert found is not None and found.state.value == "signed"
    assert sorted(found.signed_hashes) == sorted(authorize["hash"])


class _V1NamesOnAnyPath(PhoneApproval):
    """What pyHanko's stock manager sends, whatever the path: v1.0.4 names."""

    def authorize_body(self, hash_b64s: list[str]) -> dict[str, Any]:
        body: dict[str, Any] = self.format_csc_auth_request(hash_b64s=hash_b64s)
        return body


async def test_v2_path_with_v2_names(pdfs: Pdfs) -> None:
    user = await pdfs.enrol()

    (signed,) = await pdfs.sign(await pdfs.signer(user, api_ver="v2"))

    await pdfs.validate(signed)
    assert {p.split("/")[2] for p in pdfs.wire.paths()} == {"v2"}
    (authorize,) = pdfs.wire.bodies("credentials/authorize")
    (sign_hash,) = pdfs.wire.bodies("signatures/signHash")
    assert authorize["hashAlgorithmOID"] == SHA256 and "hash" not in authorize
    assert sign_hash["hashes"] == authorize["hashes"]
    assert sign_hash["hashAlgorithmOID"] == SHA256
    assert "hash" not in sign_hash and "hashAlgo" not in sign_hash


async def test_v2_path_takes_pyhankos_v1_names_as_they_are(pdfs: Pdfs) -> None:
    user = await pdfs.enrol()
    signer = await pdfs.signer(user, api_ver="v2")
    stock = CSCSigner(
        pdfs.session,
        _V1NamesOnAnyPath(
            pdfs.session,
            signer.auth_manager.csc_session_info,
            signer.auth_manager.credential_info,
            show_code=pdfs.show_code,
            poll_interval=0.05,
            timeout=20,
        ),
    )

    (signed,) = await pdfs.sign(stock)

    await pdfs.validate(signed)
    (authorize,) = pdfs.wire.bodies("credentials/authorize")
    (sign_hash,) = pdfs.wire.bodies("signatures/signHash")
    assert "hash" in authorize and "hash" in sign_hash and "hashAlgo" in sign_hash
    assert {p.split("/")[2] for p in pdfs.wire.paths()} == {"v2"}


@pytest.mark.parametrize("api_ver", ["v1", "v2"])
async def test_pin_signer_authorises_with_the_pin(pdfs: Pdfs, api_ver: str) -> None:
    user = await pdfs.enrol(second_factor="pin", pin=PIN)

    (signed,) = await pdfs.sign(await pdfs.signer(user, api_ver=api_ver, pin=PIN))

    await pdfs.validate(signed)
    (authorize,) = pdfs.wire.bodies("credentials/authorize")
    if api_ver == "v1":
        assert authorize["PIN"] == PIN
    else:
        assert authorize["authData"] == [{"id": "PIN", "value": PIN}]


def _refusal(caplog: pytest.LogCaptureFixture) -> BaseException | None:
    """Why pyHanko's commit failed: it logs the error and raises its own."""
    (record,) = [
        r for r in caplog.records if r.exc_info and r.name.startswith("pyhanko")
    ]
    assert record.exc_info is not None
    return record.exc_info[1]


async def test_wrong_pin_is_refused_before_the_phone_is_asked(
    pdfs: Pdfs, caplog: pytest.LogCaptureFixture
) -> None:
    user = await pdfs.enrol(second_factor="pin", pin=PIN)
    signer = await pdfs.signer(user, pin="0000")

    with pytest.raises(SigningError):
        await pdfs.sign(signer)

    refusal = _refusal(caplog)
    assert isinstance(refusal, CscRefused)
    assert (refusal.status, refusal.error) == (400, "invalid_authentication_data")
    assert user.phone.shown == []
    assert await pdfs.signatures_made() == 0


@pytest.mark.parametrize("policy", [Policy.REJECT, Policy.WRONG_CODE])
async def test_no_approval_on_the_phone_signs_nothing(
    pdfs: Pdfs, policy: Policy, caplog: pytest.LogCaptureFixture
) -> None:
    user = await pdfs.enrol(policy=policy)
    signer = await pdfs.signer(user)

    with pytest.raises(SigningError):
        await pdfs.sign(signer)

    refusal = _refusal(caplog)
    assert isinstance(refusal, CscRefused)
    assert (refusal.method, refusal.status, refusal.error) == (
        "credentials/authorizeCheck",
        400,
        "access_denied",
    )
    (shown,) = user.phone.shown
    assert shown.decision == ("reject" if policy is Policy.REJECT else "approve")
    assert pdfs.wire.bodies("signatures/signHash") == []
    assert await pdfs.signatures_made() == 0


async def test_a_signer_who_never_decides_times_out(
    pdfs: Pdfs, caplog: pytest.LogCaptureFixture
) -> None:
    user = await pdfs.enrol(policy=Policy.SILENT)
    signer = await pdfs.signer(user, timeout=0.5)

    with pytest.raises(SigningError):
        await pdfs.sign(signer)

    assert "did not decide within 0.5 s" in str(_refusal(caplog))
    assert len(pdfs.wire.bodies("credentials/authorizeCheck")) >= 2
    assert pdfs.wire.bodies("signatures/signHash") == []


def test_the_guides_script_is_python_and_uses_this_module() -> None:
    guide = (Path(__file__).resolve().parent.parent / "docs" / "csc.md").read_text(
        encoding="utf-8"
    )
    (script,) = re.findall(
        r"`sign.py`, run from the repository root:\n\n```python\n(.*?)```",
        guide,
        re.S,
    )
    tree = ast.parse(script)
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "rp_client.pyhanko_csc"
        for alias in node.names
    }

    assert imported == {"access_token", "csc_signer"}
    assert imported <= set(pyhanko_csc.__all__)
