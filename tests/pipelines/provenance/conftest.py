"""Fixtures for the provenance tests: a generation record, photo-like test images, Pillow codecs, and a private PKI (a root
CA and end-entity signing certificates made with ``cryptography``) for C2PA."""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from PIL import Image

from shapes.photos import photo_like
from unidiffuser.marks.record import GenerationRecord


@pytest.fixture
def record() -> GenerationRecord:
    return GenerationRecord(
        software="unidiffuser-batch",
        software_version="0.1.0",
        model_id="s3://models/unidiffuser-shapes",
        model_version="sha256:3f2a9c0d",
        mode="t2i",
        prompt="a big red circle in the top-left corner on a grey background",
        seed=1234567,
        steps=25,
        guidance_scale=3.0,
        cfg_mode="true_uncond",
        data_type=1,
        dtype="float32",
        job="demo-prompts",
        key="prompts-000003_0",
    )


@pytest.fixture
def photo() -> np.ndarray:
    return photo_like(72, 96, seed=0)


def _encode(pixels: np.ndarray, pil_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=pil_format, **options)
    return buffer.getvalue()


def _decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGBA" if "A" in image.getbands() else "RGB"))


@pytest.fixture(scope="session")
def pil_encode() -> Callable[..., bytes]:
    """``pil_encode(pixels, "JPEG", **save_options)``: the bytes Pillow writes."""
    return _encode


@pytest.fixture(scope="session")
def pil_decode() -> Callable[[bytes], np.ndarray]:
    """``pil_decode(data)``: the decoded pixels (RGB, or RGBA when the file has alpha)."""
    return _decode


# --- a private PKI ---------------------------------------------------------------------------------------------


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "unidiffuser-batch tests"),
        ]
    )


def _usage(*, signature: bool, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


@dataclass(frozen=True)
class CertificateAuthority:
    name: str
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @property
    def pem(self) -> bytes:
        return _pem(self.certificate)


def make_ca(common_name: str) -> CertificateAuthority:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_usage(signature=True, cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(common_name, key, cert)


@dataclass(frozen=True)
class Credentials:
    chain: bytes  # PEM: the signing certificate, then the CA's (unless self-signed)
    key: bytes  # PEM PKCS#8
    private_key: ec.EllipticCurvePrivateKey


IssueCertificate = Callable[..., Credentials]


@pytest.fixture(scope="session")
def root_ca() -> CertificateAuthority:
    return make_ca("unidiffuser-batch test root")


@pytest.fixture(scope="session")
def other_ca() -> CertificateAuthority:
    """A root that did not issue the test signer."""
    return make_ca("an unrelated root")


@pytest.fixture(scope="session")
def issue(root_ca: CertificateAuthority) -> IssueCertificate:
    """``issue(**changes)``: an end-entity signing certificate from ``root_ca`` with C2PA's key usages
    (digitalSignature, emailProtection EKU, AKI/SKI), or with one of them changed (``self_signed``: no CA)."""

    def issue_certificate(
        *,
        ca: CertificateAuthority | None = None,
        ekus: tuple[x509.ObjectIdentifier, ...] = (ExtendedKeyUsageOID.EMAIL_PROTECTION,),
        digital_signature: bool = True,
        is_ca: bool = False,
        days: tuple[int, int] = (-1, 30),
        curve: ec.EllipticCurve | None = None,
        self_signed: bool = False,
    ) -> Credentials:
        key = ec.generate_private_key(curve or ec.SECP256R1())
        issuer = ca or root_ca
        subject = _name("unidiffuser-batch test signer")
        # a self-signed one is its own issuer, and its chain is itself
        issuer_name, issuer_key = (subject, key) if self_signed else (issuer.certificate.subject, issuer.key)
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now + dt.timedelta(days=days[0]))
            .not_valid_after(now + dt.timedelta(days=days[1]))
            .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
            .add_extension(_usage(signature=digital_signature, cert_sign=is_ca), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
            )
        )
        if ekus:
            builder = builder.add_extension(x509.ExtendedKeyUsage(list(ekus)), critical=False)
        cert = builder.sign(issuer_key, hashes.SHA256())
        return Credentials(_pem(cert) + (b"" if self_signed else issuer.pem), _key_pem(key), key)

    return issue_certificate


@pytest.fixture(scope="session")
def credentials(issue: IssueCertificate) -> Credentials:
    return issue()
