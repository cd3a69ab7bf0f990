"""Signed C2PA manifests (c2pa-python) with a private test PKI: valid against its root, untrusted without it,
invalid once tampered, absent on unsigned images; certificates and keys that cannot sign are refused up front."""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from pipelines.provenance.c2pa_manifest import SignerError, load_signer, sign_image, verify_manifest
from unidiffuser.marks.marking import MarkingError, mark_image, read_marks
from unidiffuser.marks.record import GenerationRecord
from unidiffuser.marks.xmp import TRAINED_ALGORITHMIC_MEDIA

FORMATS = [
    ("jpg", "JPEG", {}),
    ("png", "PNG", {}),
    ("webp", "WEBP", {}),
    ("webp", "WEBP", {"lossless": True}),
]


@pytest.fixture(scope="module")
def signer(credentials):  # type: ignore[no-untyped-def]
    return load_signer(credentials.chain, credentials.key)


@pytest.mark.parametrize(
    ("ext", "pil_format", "options"), FORMATS, ids=["jpg", "png", "webp", "webp-lossless"]
)
def test_signed_marked_image_is_valid_against_its_root(
    ext: str,
    pil_format: str,
    options: dict,
    photo: np.ndarray,
    record: GenerationRecord,
    signer,  # type: ignore[no-untyped-def]
    root_ca,  # type: ignore[no-untyped-def]
    pil_encode: Callable[..., bytes],
    pil_decode: Callable[[bytes], np.ndarray],
) -> None:
    marked = mark_image(pil_encode(photo, pil_format, **options), ext, record)
    signed = sign_image(marked, ext, signer, record)
    check = verify_manifest(signed, trust_anchors=root_ca.pem)
    assert check.status == "valid", check
    assert check.validation_state == "Trusted" and check.failures == ()
    assert check.digital_source_type == TRAINED_ALGORITHMIC_MEDIA
    assert check.record == record
    # the XMP marks and the pixels are still there
    marks = read_marks(signed)
    assert marks is not None and marks.record == record
    assert np.array_equal(pil_decode(signed), pil_decode(marked))


def test_untrusted_and_absent(
    photo: np.ndarray,
    record: GenerationRecord,
    signer,  # type: ignore[no-untyped-def]
    other_ca,  # type: ignore[no-untyped-def]
    pil_encode: Callable[..., bytes],
    tmp_path: Path,
) -> None:
    unsigned = pil_encode(photo, "PNG")
    signed = sign_image(unsigned, "png", signer, record)
    for anchors in (None, other_ca.pem):
        check = verify_manifest(signed, trust_anchors=anchors)
        assert check.status == "untrusted", check
        assert check.validation_state == "Valid"
        assert "signingCredential.untrusted" in check.failures
        assert check.record == record  # readable, just not vouched for
    anchors_file = tmp_path / "other-root.pem"
    anchors_file.write_bytes(other_ca.pem)
    assert verify_manifest(signed, trust_anchors=anchors_file).status == "untrusted"
    absent = verify_manifest(unsigned)
    assert absent.status == "absent" and absent.validation_state is None and absent.record is None


def test_a_self_signed_end_entity_signs_and_is_trusted_only_when_listed(
    issue,  # type: ignore[no-untyped-def]
    record: GenerationRecord,
    photo: np.ndarray,
    pil_encode: Callable[..., bytes],
) -> None:
    own = issue(self_signed=True)
    signed = sign_image(pil_encode(photo, "WEBP"), "webp", load_signer(own.chain, own.key), record)
    assert verify_manifest(signed).status == "untrusted"
    assert verify_manifest(signed, trust_anchors=own.chain).status == "valid"


def test_tampered_pixels_make_the_manifest_invalid(
    photo: np.ndarray,
    record: GenerationRecord,
    signer,  # type: ignore[no-untyped-def]
    root_ca,  # type: ignore[no-untyped-def]
    pil_encode: Callable[..., bytes],
) -> None:
    signed = bytearray(sign_image(pil_encode(photo, "JPEG", quality=90), "jpg", signer, record))
    signed[-200] ^= 0x55  # inside the entropy-coded scan
    check = verify_manifest(bytes(signed), trust_anchors=root_ca.pem)
    assert check.status == "invalid", check
    assert "assertion.dataHash.mismatch" in check.failures


def test_signer_loads_from_files_and_hides_its_key(credentials, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "chain.pem").write_bytes(credentials.chain)
    (tmp_path / "key.pem").write_bytes(credentials.key)
    signer = load_signer(tmp_path / "chain.pem", str(tmp_path / "key.pem"))
    assert signer.algorithm == "es256"
    assert "unidiffuser-batch test signer" in signer.subject
    assert "PRIVATE" not in repr(signer) and "BEGIN" not in repr(signer)
    assert pickle.loads(pickle.dumps(signer)) == signer  # travels into Ray tasks
    assert load_signer(credentials.chain, credentials.key) == signer


def test_encrypted_keys_need_their_password(credentials) -> None:  # type: ignore[no-untyped-def]
    encrypted = credentials.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    with pytest.raises(SignerError, match="private key .*encrypted"):
        load_signer(credentials.chain, encrypted)
    with pytest.raises(SignerError, match="wrong password"):
        load_signer(credentials.chain, encrypted, key_password=b"guess")
    assert load_signer(credentials.chain, encrypted, key_password=b"secret").algorithm == "es256"


def test_unreadable_or_mismatched_files_are_one_clear_error(credentials, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    unrelated_key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    cases = [
        ((tmp_path / "missing.pem", credentials.key), r"cannot read the certificate chain '.*missing.pem'"),
        ((b"not a certificate", credentials.key), "not a PEM certificate chain"),
        (
            (credentials.chain, b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
            "not a PEM private key",
        ),
        ((credentials.chain, unrelated_key), "does not match the first certificate"),
    ]
    for (cert, key), message in cases:
        with pytest.raises(SignerError, match=message):
            load_signer(cert, key)


def test_certificates_c2pa_refuses(issue) -> None:  # type: ignore[no-untyped-def]
    cases = [
        (issue(days=(-30, -1)), "valid from .* not now"),
        (issue(is_ca=True), "is a CA certificate"),
        (issue(ekus=()), "needs an extended key usage"),
        (issue(ekus=(ExtendedKeyUsageOID.SERVER_AUTH,)), "needs an extended key usage"),
        (issue(digital_signature=False), "must include digitalSignature"),
        (issue(curve=ec.SECP256K1()), "curve secp256k1 is not allowed"),
    ]
    for credentials, message in cases:
        with pytest.raises(SignerError, match=message):
            load_signer(credentials.chain, credentials.key)


def test_signing_errors_name_the_record(
    record: GenerationRecord,
    signer,  # type: ignore[no-untyped-def]
    photo: np.ndarray,
    pil_encode: Callable[..., bytes],
) -> None:
    with pytest.raises(MarkingError, match="record 'prompts-000003_0'.*not a jpg file"):
        sign_image(pil_encode(photo, "PNG"), "jpg", signer, record)
    broken = pil_encode(photo, "JPEG")[:300]
    with pytest.raises(MarkingError, match="record 'prompts-000003_0': cannot mark image: cannot sign C2PA"):
        sign_image(broken, "jpg", signer, dataclasses.replace(record))
    with pytest.raises(ValueError, match="unsupported image format 'tiff'"):
        sign_image(b"", "tiff", signer, record)
