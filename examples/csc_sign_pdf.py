"""Sign a PDF with pyHanko through Sigil's CSC API; the signer approves on
the phone. docs/csc.md walks through it.

    .venv/bin/python examples/csc_sign_pdf.py --server http://127.0.0.1:8080 \\
        --client-id portal --key-file var/portal.key --user alice \\
        contract.pdf contract-signed.pdf

Without an input PDF (``-``) it signs a blank page. It prints the
verification code to pick on the phone (with ``--code-file`` it also
appends ``handle code`` to that file, for ``sigil-phone --code-file``),
then validates the signed PDF against the server's CA.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from io import BytesIO
from pathlib import Path

import aiohttp
from asn1crypto import x509
from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.pdf_utils.writer import PageObject, PdfFileWriter
from pyhanko.sign import PdfSignatureMetadata, async_sign_pdf
from pyhanko.sign.general import SigningError
from pyhanko.sign.validation import async_validate_pdf_signature
from pyhanko_certvalidator import ValidationContext

from rp_client import RelyingPartyClient
from rp_client.pyhanko_csc import access_token, csc_signer


def blank_pdf() -> bytes:
    writer = PdfFileWriter()
    content = writer.add_object(generic.StreamObject(stream_data=b""))
    writer.insert_page(PageObject(contents=content, media_box=[0, 0, 595, 842]))
    out = BytesIO()
    writer.write(out)
    return out.getvalue()


async def sign(args: argparse.Namespace, api_key: str, pdf: bytes) -> bytes:
    async with aiohttp.ClientSession() as session:
        # 1. An OAuth 2.0 access token (client credentials).
        token = await access_token(session, args.server, args.client_id, api_key)

        # 2. The signer's credential: credentials/list for the user.
        async with session.post(
            f"{args.server}/csc/v1/credentials/list",
            json={"userID": args.user},
            headers={"Authorization": f"Bearer {token}"},
        ) as response:
            listed = await response.json()
        if response.status != 200 or not listed.get("credentialIDs"):
            raise SigningError(f"no credential for {args.user}: {listed}")
        credential_id = listed["credentialIDs"][0]

        # 3. pyHanko's CSC signer; the phone approval is the authorisation.
        def show_code(handle: str, code: str) -> None:
            print(f"verification code: {code}  (pick it on the phone)", flush=True)
            if args.code_file is not None:
                with args.code_file.open("a", encoding="utf-8") as f:
                    f.write(f"{handle} {code}\n")

        signer = await csc_signer(
            session,
            args.server,
            credential_id,
            token,
            show_code=show_code,
            description=f"Sign {args.input.name if args.input else 'a blank page'}",
            timeout=120,
        )
        meta = PdfSignatureMetadata(field_name="Signature1", reason="Approved")
        writer = IncrementalPdfFileWriter(BytesIO(pdf))
        signed: BytesIO = await async_sign_pdf(writer, meta, signer=signer)

        # 4. Validate against the server's CA, as a recipient would.
        ca = x509.Certificate.load(
            await RelyingPartyClient(args.server, api_key, session).ca_certificate()
        )
        (embedded,) = PdfFileReader(signed).embedded_signatures
        status = await async_validate_pdf_signature(
            embedded, signer_validation_context=ValidationContext(trust_roots=[ca])
        )
        print(status.pretty_print_details())
        if not status.bottom_line:
            raise SigningError("the signed PDF does not validate")
        return signed.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="http://127.0.0.1:8080")
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--key-file", type=Path, required=True, help="the API key")
    parser.add_argument("--user", required=True, help="the signer's user id")
    parser.add_argument("--code-file", type=Path, help="append 'handle code' here")
    parser.add_argument("input", type=lambda p: None if p == "-" else Path(p))
    parser.add_argument("output", type=Path)
    args = parser.parse_args()

    api_key = args.key_file.read_text(encoding="utf-8").strip()
    pdf = args.input.read_bytes() if args.input else blank_pdf()
    try:
        signed = asyncio.run(sign(args, api_key, pdf))
    except (SigningError, aiohttp.ClientError) as e:
        print(f"signing failed: {e}", file=sys.stderr)
        return 1
    args.output.write_bytes(signed)
    print(f"signed PDF written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
