"""How a job marks what it makes (``provenance``): the validated spec section.

Every generated image always carries the IPTC digital source type ``trainedAlgorithmicMedia`` and its
generation record in XMP (and PNG ``parameters``); that is not a setting. This section adds the optional
invisible watermark and a signed C2PA manifest.

    provenance:
      watermark: true                     # DWT-DCT-SVD watermark carrying the job's payload (>= 256 px images)
      c2pa:
        certificate: s3://keys/c2pa/chain.pem
        private_key: /run/secrets/c2pa.key    # read on the driver, sent to the writers with the job
        key_password_env: C2PA_KEY_PASSWORD   # the name of an environment variable, never the password
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipelines.spec_fields import Location, Strict


class C2paSpec(Strict):
    """A C2PA manifest, signed with the user's own certificate chain and private key (PEM)."""

    certificate: Location = Field(description="PEM certificate chain (the signing certificate first)")
    private_key: Location = Field(description="PEM private key of the signing certificate")
    key_password_env: str | None = Field(
        None, description="name of the environment variable holding the key's password, if it is encrypted"
    )
    tsa_url: str | None = Field(
        None, description="RFC 3161 timestamp authority (keeps signatures verifiable)"
    )


class ProvenanceSpec(Strict):
    """Optional marks beyond the XMP record every generated image carries: an invisible watermark and C2PA."""

    watermark: bool = Field(
        False,
        description="an invisible watermark (invisible-watermark's DWT-DCT-SVD) carrying the job's payload in "
        "every generated image; needs images of 256 x 256 px or more",
    )
    watermark_method: Literal["dwtDctSvd", "dwtDct"] = Field(
        "dwtDctSvd", description="dwtDct is Stable Diffusion's method (it loses bits on texture)"
    )
    c2pa: C2paSpec | None = Field(None, description="sign every generated image with a C2PA manifest")
