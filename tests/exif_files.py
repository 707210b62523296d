"""Test helper: image files carrying an EXIF orientation, built byte by byte (cv2 writes no EXIF)."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np


def exif_block(orientation: int, endian: str = "<") -> bytes:
    """A TIFF-structured EXIF block whose first IFD holds only the Orientation tag (0x0112, SHORT)."""
    order = b"II" if endian == "<" else b"MM"
    entry = struct.pack(endian + "HHIHH", 0x0112, 3, 1, orientation, 0)
    return order + struct.pack(endian + "HI", 42, 8) + struct.pack(endian + "H", 1) + entry + bytes(4)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_with_orientation(suffix: str, bgr: np.ndarray, orientation: int, endian: str = "<") -> bytes:
    """`bgr` encoded as .jpg, .png or .webp by cv2, with an EXIF orientation inserted where each format keeps it."""
    ok, encoded = cv2.imencode(suffix, bgr)
    assert ok
    data, exif = encoded.tobytes(), exif_block(orientation, endian)
    if suffix == ".jpg":  # an APP1 segment right after SOI
        payload = b"Exif\0\0" + exif
        return data[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + data[2:]
    if suffix == ".png":  # an eXIf chunk right after IHDR (8-byte signature + 25-byte IHDR chunk)
        return data[:33] + _png_chunk(b"eXIf", exif) + data[33:]
    if suffix == ".webp":  # the extended format: VP8X (EXIF flag) + the image chunk + an EXIF chunk
        height, width = bgr.shape[:2]
        flags = 0x08 | (0x10 if bgr.ndim == 3 and bgr.shape[2] == 4 else 0)
        vp8x = b"VP8X" + struct.pack("<I", 10) + bytes([flags, 0, 0, 0])
        vp8x += (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
        chunks = vp8x + data[12:] + b"EXIF" + struct.pack("<I", len(exif)) + exif + b"\0" * (len(exif) % 2)
        return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WEBP" + chunks
    raise ValueError(suffix)


def uncompressed_tiff(rgb: np.ndarray, orientation: int) -> bytes:
    """A baseline RGB TIFF (8 or 16 bits, one strip) with an Orientation tag."""
    height, width, channels = rgb.shape
    bits = rgb.dtype.itemsize * 8
    pixels = rgb.tobytes()
    entries = [
        (256, 3, 1, width),
        (257, 3, 1, height),
        (258, 3, channels, None),  # BitsPerSample: an offset to `channels` SHORTs
        (259, 3, 1, 1),  # no compression
        (262, 3, 1, 2),  # RGB
        (273, 4, 1, None),  # StripOffsets
        (274, 3, 1, orientation),
        (277, 3, 1, channels),
        (278, 3, 1, height),
        (279, 4, 1, len(pixels)),
    ]
    ifd_size = 2 + 12 * len(entries) + 4
    bits_at = 8 + ifd_size
    pixels_at = bits_at + 2 * channels
    out = b"II" + struct.pack("<HI", 42, 8) + struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        value = {258: bits_at, 273: pixels_at}.get(tag, value)
        packed = struct.pack("<HH", value, 0) if kind == 3 and count == 1 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, kind, count) + packed
    return out + bytes(4) + struct.pack("<" + "H" * channels, *[bits] * channels) + pixels
