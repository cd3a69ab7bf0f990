"""Optional signed C2PA manifests (``c2pa-python``): the image says, under the user's own certificate, that a
trained algorithm created it, and carries the generation record.

    signer = load_signer("signer-chain.pem", "signer-key.pem")  # at validate time: one clear error, or ready
    signed = sign_image(marked_png_bytes, "png", signer, record)
    verify_manifest(signed, trust_anchors=root_pem).status   # "valid" | "untrusted" | "invalid" | "absent"

The manifest: ``claim_generator_info`` (software + version), one ``c2pa.actions`` assertion with a
``c2pa.created`` action whose ``digitalSourceType`` is IPTC's ``trainedAlgorithmicMedia`` and whose
``softwareAgent`` is the software, and a ``dev.unidiffuser-batch.generation`` assertion holding the record's
fields. No thumbnail; nothing is fetched from the network (no remote manifests, no OCSP; a timestamp authority
only if ``tsa_url`` is given). Sign after ``mark_image``: the manifest's hash then covers the XMP too.

What the C2PA SDK (c2pa-rs certificate profile, C2PA spec 14.5) requires of the signing certificate, checked by
``load_signer`` with its own messages before a trial signature lets the SDK check the rest:

- X.509 v3, valid now; key EC P-256/P-384/P-521 (ES256/384/512), RSA >= 2048 bits (PS256) or Ed25519;
- key usage with ``digitalSignature`` (not ``keyCertSign`` on an end-entity certificate);
- an extended key usage with ``id-kp-emailProtection`` or ``id-kp-documentSigning`` (or the C2PA / Microsoft
  C2PA signing OIDs), never ``anyExtendedKeyUsage``;
- an authority key identifier; an end-entity certificate, not a CA (so not a self-signed root; a self-signed
  end-entity certificate signs, and verifies as trusted only where it is itself a trust anchor).
  The chain file holds the signing certificate first, then its intermediates.

The SDK refuses each of these itself (checked with c2pa-python 0.38.1), but says only "the certificate is
invalid"; these checks name what is wrong.

Without a timestamp authority the signature carries no trusted time, so verifiers check the certificate's
validity at the time they verify: once it expires, the manifests it signed no longer verify. Published datasets
should be signed with ``tsa_url`` set (a machine that can reach the TSA).

A manifest is "valid" when its signature checks and the signing chain leads to one of ``trust_anchors``;
"untrusted" when it checks but no anchor is given or matches; "invalid" when a hash or signature fails.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
from dataclasses import dataclass, field
from typing import Any, Literal

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

from unidiffuser.marks.containers import sniff_format
from unidiffuser.marks.marking import MarkingError
from unidiffuser.marks.record import GenerationRecord
from unidiffuser.marks.xmp import TRAINED_ALGORITHMIC_MEDIA

GENERATION_ASSERTION = "dev.unidiffuser-batch.generation"
_MIME_TYPES = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
_CURVES = {"secp256r1": "es256", "secp384r1": "es384", "secp521r1": "es512"}
_SIGNING_EKUS = {
    ExtendedKeyUsageOID.EMAIL_PROTECTION,
    ObjectIdentifier("1.3.6.1.5.5.7.3.36"),  # id-kp-documentSigning (RFC 9336)
    ObjectIdentifier("1.3.6.1.4.1.62558.2.1"),  # C2PA signing
    ObjectIdentifier("1.3.6.1.4.1.311.76.59.1.9"),  # Microsoft C2PA signing
}
# what c2pa-rs settings make of the network: nothing fetched
_OFFLINE = {"remote_manifest_fetch": False, "ocsp_fetch": False}
Status = Literal["valid", "untrusted", "invalid", "absent"]


class SignerError(ValueError):
    """The certificate chain or private key cannot be read, do not match, or cannot sign C2PA manifests."""


@dataclass(frozen=True)
class C2paSigner:
    """Checked signing credentials: PEM chain (signing certificate first), unencrypted PKCS#8 key, algorithm.

    Plain bytes, so it pickles into Ray tasks; the SDK's native signer is made per signature.
    """

    algorithm: str  # es256, es384, es512, ps256 or ed25519
    certificate_chain: bytes = field(repr=False)
    private_key: bytes = field(repr=False)
    subject: str
    not_after: dt.datetime
    tsa_url: str | None = None


@dataclass(frozen=True)
class ManifestCheck:
    """What ``verify_manifest`` found."""

    status: Status
    validation_state: str | None  # the SDK's own word: Trusted, Valid or Invalid; None when absent
    failures: tuple[str, ...] = ()  # validation codes of the active manifest's failures
    digital_source_type: str | None = None  # of the active manifest's c2pa.created action
    record: GenerationRecord | None = None  # from the generation assertion, when present and complete


def _sdk() -> Any:
    """The c2pa-python module, imported on first use (the ``provenance`` extra; a native library)."""
    import c2pa

    return c2pa


def _read(source: bytes | str | os.PathLike[str], what: str) -> bytes:
    if isinstance(source, bytes):
        return source
    try:
        with open(source, "rb") as file:
            return file.read()
    except OSError as error:
        raise SignerError(f"cannot read the {what} {os.fspath(source)!r}: {error.strerror}") from None


def _describe(source: bytes | str | os.PathLike[str], what: str) -> str:
    return (
        f"{what} ({len(source)} bytes given)"
        if isinstance(source, bytes)
        else f"{what} {os.fspath(source)!r}"
    )


def _algorithm(key: object, where: str) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.name not in _CURVES:
            raise SignerError(f"{where}: EC curve {key.curve.name} is not allowed (P-256, P-384 or P-521)")
        return _CURVES[key.curve.name]
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise SignerError(f"{where}: RSA key of {key.key_size} bits is too short (at least 2048)")
        return "ps256"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    raise SignerError(f"{where}: {type(key).__name__} keys cannot sign C2PA manifests (EC, RSA or Ed25519)")


def _check_profile(cert: x509.Certificate, where: str) -> None:
    now = dt.datetime.now(dt.UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise SignerError(
            f"{where}: the signing certificate is valid from {cert.not_valid_before_utc:%Y-%m-%d} to "
            f"{cert.not_valid_after_utc:%Y-%m-%d}, not now"
        )
    extensions = {ext.oid: ext.value for ext in cert.extensions}
    basic = extensions.get(x509.oid.ExtensionOID.BASIC_CONSTRAINTS)
    if isinstance(basic, x509.BasicConstraints) and basic.ca:
        raise SignerError(
            f"{where}: the signing certificate is a CA certificate; C2PA needs an end-entity one"
        )
    usage = extensions.get(x509.oid.ExtensionOID.KEY_USAGE)
    if not isinstance(usage, x509.KeyUsage) or not usage.digital_signature:
        raise SignerError(f"{where}: the signing certificate's key usage must include digitalSignature")
    ekus = extensions.get(x509.oid.ExtensionOID.EXTENDED_KEY_USAGE)
    if not isinstance(ekus, x509.ExtendedKeyUsage) or not _SIGNING_EKUS & set(ekus):
        raise SignerError(
            f"{where}: the signing certificate needs an extended key usage for C2PA "
            "(emailProtection 1.3.6.1.5.5.7.3.4 or documentSigning 1.3.6.1.5.5.7.3.36)"
        )
    if x509.oid.ExtensionOID.AUTHORITY_KEY_IDENTIFIER not in extensions:
        raise SignerError(f"{where}: the signing certificate has no authority key identifier")


def load_signer(
    cert: bytes | str | os.PathLike[str],
    key: bytes | str | os.PathLike[str],
    *,
    key_password: bytes | None = None,
    tsa_url: str | None = None,
) -> C2paSigner:
    """Read and check a PEM certificate chain and private key (file paths, or their bytes); SignerError with one
    clear message if they cannot sign C2PA manifests. Ends with a trial signature of a tiny image."""
    cert_where, key_where = _describe(cert, "certificate chain"), _describe(key, "private key")
    cert_pem, key_pem = _read(cert, "certificate chain"), _read(key, "private key")
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise SignerError(f"{cert_where}: not a PEM certificate chain") from None
    try:
        private_key = serialization.load_pem_private_key(key_pem, password=key_password)
    except TypeError as error:  # encrypted without a password, or a password for a plain key
        raise SignerError(f"{key_where}: {error}") from None
    except (ValueError, UnsupportedAlgorithm):
        raise SignerError(f"{key_where}: not a PEM private key (or the wrong password)") from None
    algorithm = _algorithm(private_key, key_where)
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if private_key.public_key().public_bytes(serialization.Encoding.DER, public) != chain[
        0
    ].public_key().public_bytes(serialization.Encoding.DER, public):
        raise SignerError(f"{key_where} does not match the first certificate of {cert_where}")
    _check_profile(chain[0], cert_where)
    signer = C2paSigner(
        algorithm=algorithm,
        certificate_chain=b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain),
        private_key=private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        subject=chain[0].subject.rfc4514_string(),
        not_after=chain[0].not_valid_after_utc,
        tsa_url=tsa_url,
    )
    _trial_signature(signer, cert_where)
    return signer


def _probe_png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (128, 128, 128)).save(buffer, format="PNG")
    return buffer.getvalue()


def _trial_signature(signer: C2paSigner, where: str) -> None:
    c2pa = _sdk()
    probe = GenerationRecord(
        software="unidiffuser-batch", software_version="0", model_id="probe", model_version="probe", mode="t2i",
        seed=0, steps=1, guidance_scale=1.0, cfg_mode="true_uncond", data_type=1, dtype="float32", job="probe",
        key="probe",
    )  # fmt: skip
    try:
        _sign(_probe_png(), "image/png", signer, probe)
    except c2pa.C2paError as error:
        raise SignerError(f"{where}: the C2PA SDK refuses to sign with it: {error}") from None


def _manifest(record: GenerationRecord) -> dict[str, Any]:
    agent = {"name": record.software, "version": record.software_version}
    return {
        "claim_generator_info": [agent],
        "title": record.key,
        "assertions": [
            {
                "label": "c2pa.actions",
                "data": {
                    "actions": [
                        {
                            "action": "c2pa.created",
                            "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
                            "softwareAgent": agent,
                        }
                    ]
                },
            },
            {"label": GENERATION_ASSERTION, "data": record.to_dict()},
        ],
    }


def _context(trust_anchors: bytes | None = None) -> Any:
    c2pa = _sdk()
    settings: dict[str, Any] = {"verify": dict(_OFFLINE), "builder": {"thumbnail": {"enabled": False}}}
    if trust_anchors is not None:
        settings["trust"] = {"trust_anchors": trust_anchors.decode("ascii")}
    return c2pa.Context.from_dict(settings)


def _sign(data: bytes, mime: str, signer: C2paSigner, record: GenerationRecord) -> bytes:
    c2pa = _sdk()
    info = c2pa.C2paSignerInfo(signer.algorithm, signer.certificate_chain, signer.private_key, signer.tsa_url)
    out = io.BytesIO()
    with c2pa.Signer.from_info(info) as native, c2pa.Builder(_manifest(record), _context()) as builder:
        builder.sign(native, mime, io.BytesIO(data), out)
    return out.getvalue()


def sign_image(data: bytes, fmt: str, signer: C2paSigner, record: GenerationRecord) -> bytes:
    """``data`` (encoded jpg/png/webp) with an embedded C2PA manifest for ``record``, signed by ``signer``.

    MarkingError naming the record key when the bytes are not a ``fmt`` file or the SDK fails on them.
    """
    c2pa = _sdk()
    ext = fmt.lower().lstrip(".").replace("jpeg", "jpg")
    if ext not in _MIME_TYPES:
        raise ValueError(f"unsupported image format {fmt!r} (expected jpg, png or webp)")
    if sniff_format(data) != ext:
        raise MarkingError(record.key, f"cannot sign C2PA manifest: the bytes are not a {ext} file")
    mime = _MIME_TYPES[ext]
    try:
        return _sign(data, mime, signer, record)
    except c2pa.C2paError as error:
        raise MarkingError(record.key, f"cannot sign C2PA manifest: {error}") from None


def _active_manifest(store: dict[str, Any]) -> dict[str, Any]:
    manifest = store.get("manifests", {}).get(store.get("active_manifest"), {})
    return manifest if isinstance(manifest, dict) else {}


def _created_source_type(manifest: dict[str, Any]) -> str | None:
    for assertion in manifest.get("assertions", []):
        if assertion.get("label", "").startswith("c2pa.actions"):
            for action in assertion.get("data", {}).get("actions", []):
                if action.get("action") == "c2pa.created":
                    source = action.get("digitalSourceType")
                    return source if isinstance(source, str) else None
    return None


def _generation_record(manifest: dict[str, Any]) -> GenerationRecord | None:
    for assertion in manifest.get("assertions", []):
        if assertion.get("label") == GENERATION_ASSERTION:
            try:
                return GenerationRecord.from_dict(assertion.get("data", {}))
            except (TypeError, ValueError):
                return None
    return None


def verify_manifest(
    data: bytes, trust_anchors: bytes | str | os.PathLike[str] | None = None
) -> ManifestCheck:
    """Validate the C2PA manifest embedded in ``data`` against ``trust_anchors`` (PEM root certificates, bytes
    or a file path; None trusts nothing). Offline: no remote manifest, no OCSP."""
    c2pa = _sdk()
    fmt = sniff_format(data)
    anchors = None if trust_anchors is None else _read(trust_anchors, "trust anchors")
    try:
        reader = c2pa.Reader.try_create(
            _MIME_TYPES.get(fmt or "", "image/jpeg"), io.BytesIO(data), None, _context(anchors)
        )
    except c2pa.C2paError as error:
        return ManifestCheck("invalid", None, (f"unreadable: {error}",))
    if reader is None:
        return ManifestCheck("absent", None)
    with reader:
        store = json.loads(reader.json())
        state = reader.get_validation_state()
        results = reader.get_validation_results() or {}
    failures = tuple(item.get("code", "") for item in results.get("activeManifest", {}).get("failure", []))
    manifest = _active_manifest(store)
    status: Status = "valid" if state == "Trusted" else "untrusted" if state == "Valid" else "invalid"
    return ManifestCheck(
        status, state, failures, _created_source_type(manifest), _generation_record(manifest)
    )
