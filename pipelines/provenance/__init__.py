"""Provenance marks for generated images: XMP metadata (IPTC digital source type + generation record), an
invisible watermark and optional signed C2PA manifests."""
