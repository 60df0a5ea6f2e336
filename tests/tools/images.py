"""Small encoded test images, well-formed and hostile, for the unit, service and fuzz tests."""

from __future__ import annotations

import struct
import zlib

import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def gradient(height: int = 48, width: int = 64) -> np.ndarray:
    """A deterministic ``uint8 [H, W, 3]`` RGB image."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([(x * 4) % 256, (y * 5) % 256, ((x + y) * 3) % 256], axis=-1).astype(np.uint8)


def encode(ext: str, image: np.ndarray, params: tuple[int, ...] = ()) -> bytes:
    """RGB (or RGBA) pixels → encoded bytes with OpenCV (``ext`` like ".png")."""
    import cv2

    code = cv2.COLOR_RGBA2BGRA if image.shape[2] == 4 else cv2.COLOR_RGB2BGR
    ok, buffer = cv2.imencode(ext, cv2.cvtColor(image, code), list(params))
    assert ok
    return buffer.tobytes()


def png_chunk(kind: bytes, data: bytes, length: int | None = None) -> bytes:
    """One PNG chunk with a correct CRC; ``length`` forges the declared length."""
    declared = len(data) if length is None else length
    return struct.pack(">I", declared) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims ``width`` x ``height`` (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + png_chunk(b"IEND", b"")


def png_forged_chunk(declared: int = 0xFFFFFFF0) -> bytes:
    """A ~120-byte 8x8 PNG with an ancillary chunk that declares ``declared`` bytes (issue 12, item 1)."""
    ihdr = struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"".join(b"\0" + bytes(24) for _ in range(8)))
    return (PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + png_chunk(b"tEXt", b"Comment\0hi", length=declared)
            + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b""))


def png_corrupt_idat() -> bytes:
    """A 16x16 PNG whose IDAT holds broken zlib data under a correct CRC: libpng prints its own error."""
    import zlib as _zlib

    ihdr = struct.pack(">IIBBBBB", 16, 16, 8, 2, 0, 0, 0)
    idat = bytearray(_zlib.compress(bytes(16 * 49)))
    idat[-4:] = b"\0\0\0\0"  # wrong adler32: "incorrect data check"
    return PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", bytes(idat)) + png_chunk(b"IEND", b"")
