"""Encoded images: sniff the format, bound what decoding may cost, decode to RGB.

One memory budget for every format: nothing is decoded before the whole container has been checked from
its bytes alone, so that what a decoder may allocate is bounded by the pixel limit, never by what a
header or chunk *declares*:

* JPEG — the frame header (SOF) gives the size; segment lengths are walked up to it; an end-of-image
  marker must follow.
* PNG — every chunk is walked: each length must fit in the data (a forged length would make the decoder
  allocate what the chunk claims, up to 4 GiB), critical chunks must have a correct CRC, ``IHDR`` first,
  at least one ``IDAT``, ``IEND`` last; animated PNGs (``acTL``) are refused.
* WebP — the RIFF size and every chunk length must fit in the data; animated WebPs (``ANIM``) are
  refused.
* BMP — the info header gives the size.

Then the dimensions: at most ``max_pixels`` pixels (``--max_image_pixels``), each side at least
:data:`MIN_IMAGE_SIDE` pixels and the long side at most :data:`MAX_ASPECT_RATIO` times the short one,
so that letterboxing to any input size (a multiple of 32) keeps at least one pixel row. Each check
raises :class:`~predictor.errors.RequestError` (HTTP 400) naming the image and the problem.

Transparency (PNG alpha or ``tRNS``, WebP alpha) is composited over :data:`ALPHA_BACKGROUND`, the
letterbox padding grey: a transparent area looks to the network like the padding around the image.
Nothing here touches torch; nothing is computed at import time.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from predictor.errors import RequestError
from predictor.threads import WorkerThreads

__all__ = [
    "ALPHA_BACKGROUND",
    "FORMAT_NAMES",
    "MAX_ASPECT_RATIO",
    "MIN_IMAGE_SIDE",
    "SUPPORTED_FORMATS",
    "ImageInfo",
    "check_dimensions",
    "check_pixel_array",
    "decode_image",
    "decoder_pool",
    "probe_image",
]

FORMAT_NAMES = ("JPEG", "PNG", "BMP", "WebP")
SUPPORTED_FORMATS = "JPEG, PNG, BMP or WebP"
MIN_IMAGE_SIDE = 2
MAX_ASPECT_RATIO = 32
ALPHA_BACKGROUND = 114  # grey level of the letterbox padding (ops.PAD_COLOR)


@dataclass(frozen=True)
class ImageInfo:
    format: str  # "jpeg", "png", "bmp", "webp"
    width: int
    height: int
    orientation: int = 1  # EXIF orientation of a JPEG (1 = as stored)
    alpha: bool = False  # has transparency to composite (PNG, WebP)


def _bad(where: str, problem: str) -> RequestError:
    return RequestError(f"{where}: {problem}", "decode")


# ------------------------------------------------------------------------------------------------------
# JPEG
# ------------------------------------------------------------------------------------------------------
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEG_STANDALONE = {0x01, 0xD0, 0xD1, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8}


def _exif_orientation(segment: bytes) -> int:
    """The orientation tag (0x0112) of an APP1 Exif segment's IFD0; 1 when absent or unreadable."""
    if not segment.startswith(b"Exif\0\0") or len(segment) < 14:
        return 1
    tiff = segment[6:]
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None:
        return 1
    try:
        (ifd,) = struct.unpack_from(order + "I", tiff, 4)
        (entries,) = struct.unpack_from(order + "H", tiff, ifd)
        for index in range(min(entries, 256)):
            tag, kind, _, value = struct.unpack_from(order + "HHI4s", tiff, ifd + 2 + 12 * index)
            if tag == 0x0112 and kind == 3:
                (orientation,) = struct.unpack_from(order + "H", value)
                return orientation if 1 <= orientation <= 8 else 1
    except struct.error:
        return 1
    return 1


def _jpeg_info(data: bytes, where: str) -> ImageInfo:
    pos, size = 2, len(data)
    orientation = 1
    while pos < size:
        if data[pos] != 0xFF:
            raise _bad(where, f"corrupt JPEG (bad marker at byte {pos})")
        while pos < size and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= size:
            break
        marker = data[pos]
        pos += 1
        if marker in _JPEG_STANDALONE:
            continue
        if marker in (0xD9, 0xDA):
            raise _bad(where, "corrupt JPEG (no frame header before the image data)")
        if pos + 2 > size:
            break
        (length,) = struct.unpack_from(">H", data, pos)
        if marker in _JPEG_SOF:
            if pos + 7 > size:
                break
            height, width = struct.unpack_from(">HH", data, pos + 3)
            if not height or not width:
                raise _bad(where, "JPEG without dimensions in its frame header")
            # A JPEG ends with the EOI marker after its scans. In entropy-coded data 0xFF is always
            # stuffed or a restart marker, so a missing FFD9 after the frame header means truncation.
            if data.rfind(b"\xff\xd9", pos) < 0:
                raise _bad(where, "truncated JPEG (no end-of-image marker)")
            return ImageInfo("jpeg", width, height, orientation)
        if length < 2:
            raise _bad(where, f"corrupt JPEG (segment length {length})")
        if marker == 0xE1 and orientation == 1:
            orientation = _exif_orientation(data[pos + 2 : pos + length])
        pos += length
    raise _bad(where, "truncated JPEG (ends before its frame header)")


# ------------------------------------------------------------------------------------------------------
# PNG
# ------------------------------------------------------------------------------------------------------
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CRITICAL = {b"IHDR", b"PLTE", b"IDAT", b"IEND"}
# colour type -> allowed bit depths (PNG spec, 11.2.2)
_PNG_DEPTHS = {0: {1, 2, 4, 8, 16}, 2: {8, 16}, 3: {1, 2, 4, 8}, 4: {8, 16}, 6: {8, 16}}


def _png_info(data: bytes, where: str) -> ImageInfo:
    """Walk every chunk (length, type, CRC) before anything is decoded."""
    size = len(data)
    if size < 33 or data[12:16] != b"IHDR" or struct.unpack_from(">I", data, 8)[0] != 13:
        raise _bad(where, "truncated or corrupt PNG (no IHDR header)")
    width, height, depth, colour = struct.unpack_from(">IIBB", data, 16)
    if not width or not height:
        raise _bad(where, "PNG with zero width or height")
    if width > 0x7FFFFFFF or height > 0x7FFFFFFF or depth not in _PNG_DEPTHS.get(colour, ()):
        raise _bad(where, f"corrupt PNG header ({width}x{height}, colour type {colour}, bit depth {depth})")
    pos, seen_idat, transparency = 8, False, colour in (4, 6)
    while True:
        if pos + 12 > size:
            raise _bad(where, f"truncated PNG (no IEND chunk; the data ends at byte {size})")
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length
        if not kind.isalpha():
            raise _bad(where, f"corrupt PNG (chunk type {kind!r} at byte {pos})")
        name = kind.decode("ascii")
        if length > 0x7FFFFFFF or end > size:
            raise _bad(where, f"corrupt PNG: chunk {name} at byte {pos} declares {length} bytes but only "
                              f"{max(size - pos - 12, 0)} follow")
        if kind in _PNG_CRITICAL or name[0].isupper():
            if kind not in _PNG_CRITICAL:
                raise _bad(where, f"PNG with an unknown critical chunk {name}")
            (crc,) = struct.unpack_from(">I", data, end - 4)
            if zlib.crc32(data[pos + 4 : end - 4]) & 0xFFFFFFFF != crc:
                raise _bad(where, f"corrupt PNG (bad CRC in chunk {name} at byte {pos})")
        if kind == b"IHDR" and pos != 8:
            raise _bad(where, "corrupt PNG (a second IHDR chunk)")
        if kind == b"acTL":
            raise _bad(where, "animated PNG (APNG) is not supported; send a single frame")
        if kind == b"tRNS":
            transparency = True
        if kind == b"IDAT":
            seen_idat = True
        if kind == b"IEND":
            break
        pos = end
    if not seen_idat:
        raise _bad(where, "corrupt PNG (no IDAT image data)")
    return ImageInfo("png", width, height, alpha=transparency)


# ------------------------------------------------------------------------------------------------------
# BMP, WebP
# ------------------------------------------------------------------------------------------------------
def _bmp_info(data: bytes, where: str) -> ImageInfo:
    if len(data) < 26:
        raise _bad(where, "truncated BMP header")
    (header_size,) = struct.unpack_from("<I", data, 14)
    if header_size == 12:
        width, height = struct.unpack_from("<HH", data, 18)
    elif header_size >= 40:
        width, height = struct.unpack_from("<ii", data, 18)
    else:
        raise _bad(where, f"unsupported BMP header (size {header_size})")
    width, height = abs(width), abs(height)
    if not width or not height:
        raise _bad(where, "BMP with zero width or height")
    return ImageInfo("bmp", width, height)


def _webp_info(data: bytes, where: str) -> ImageInfo:
    """Check the RIFF size and walk every chunk, then read the size from the first one."""
    size = len(data)
    if size < 30:
        raise _bad(where, "truncated WebP header")
    (riff,) = struct.unpack_from("<I", data, 4)
    if riff + 8 > size or riff < 22:
        raise _bad(where, f"corrupt WebP: the RIFF header declares {riff + 8} bytes but the data has {size}")
    pos, end, kinds = 12, riff + 8, []
    while pos + 8 <= end:
        kind, length = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        if pos + 8 + length > end:
            raise _bad(where, f"corrupt WebP: chunk {kind!r} at byte {pos} declares {length} bytes but only "
                              f"{end - pos - 8} follow")
        kinds.append(kind)
        pos += 8 + length + (length & 1)
    if b"ANIM" in kinds or b"ANMF" in kinds:
        raise _bad(where, "animated WebP is not supported; send a single frame")
    chunk = data[12:16]
    alpha = False
    if chunk == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            raise _bad(where, "corrupt WebP (bad VP8 start code)")
        width, height = struct.unpack_from("<HH", data, 26)
        width, height = width & 0x3FFF, height & 0x3FFF
    elif chunk == b"VP8L":
        if data[20] != 0x2F:
            raise _bad(where, "corrupt WebP (bad VP8L signature)")
        (bits,) = struct.unpack_from("<I", data, 21)
        width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        alpha = bool(bits >> 28 & 1)
    elif chunk == b"VP8X":
        alpha = bool(data[20] & 0x10)
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
    else:
        raise _bad(where, f"unsupported WebP chunk {chunk!r}")
    if not width or not height:
        raise _bad(where, "WebP with zero width or height")
    return ImageInfo("webp", width, height, alpha=alpha)


def probe_image(data: bytes, where: str = "image") -> ImageInfo:
    """Format and dimensions from the container alone (see the module docstring); raises
    :class:`RequestError` for anything else."""
    if not data:
        raise _bad(where, f"empty (0 bytes); expected an encoded {SUPPORTED_FORMATS} image")
    if data[:3] == b"\xff\xd8\xff":
        return _jpeg_info(data, where)
    if data[:8] == _PNG_SIGNATURE:
        return _png_info(data, where)
    if data[:2] == b"BM":
        return _bmp_info(data, where)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_info(data, where)
    raise _bad(where, f"not a {SUPPORTED_FORMATS} image ({len(data)} bytes starting {data[:8]!r})")


# ------------------------------------------------------------------------------------------------------
# dimensions, decoding
# ------------------------------------------------------------------------------------------------------
def check_dimensions(width: int, height: int, max_pixels: int, where: str) -> None:
    """Pixel count, minimum side and aspect ratio (see the module docstring), before any decoding."""
    if width * height > max_pixels:
        raise RequestError(
            f"{where}: {width}x{height} = {width * height} pixels is over the limit of {max_pixels} "
            "(--max_image_pixels)",
            "too_many_pixels",
        )
    short, long = min(width, height), max(width, height)
    if short < MIN_IMAGE_SIDE:
        raise RequestError(f"{where}: {width}x{height} is too thin: each side must be at least "
                           f"{MIN_IMAGE_SIDE} pixels", "image_shape")
    if long > MAX_ASPECT_RATIO * short:
        raise RequestError(f"{where}: {width}x{height} has an aspect ratio of {long / short:.0f}:1; at most "
                           f"{MAX_ASPECT_RATIO}:1 is accepted", "image_shape")


def decoder_pool(threads: int | None = None) -> WorkerThreads:
    """The threads that decode and letterbox images: ``threads``, or one per core (2 to 8).

    OpenCV is set to run each call in its calling thread (process-wide): the pool decodes images in
    parallel already, and OpenCV's own worker threads on top of it only oversubscribed the cores — on
    2 cores they cost 1 ms of CPU per 810x1080 JPEG (5.7 against 4.7 ms, decode and letterbox) and
    5-12 % of the CPU per small-image request at concurrency 8-64, for no shorter wall time even on an
    idle host (``docs/dataplane.md``)."""
    import cv2

    cv2.setNumThreads(1)
    return WorkerThreads(threads or max(2, min(8, os.cpu_count() or 2)), "yolo-decode")


def decode_image(data: bytes, max_pixels: int, where: str = "image") -> np.ndarray:
    """Encoded bytes → ``uint8 [H, W, 3]`` RGB, after :func:`probe_image` and :func:`check_dimensions`.

    JPEG EXIF orientation is applied (OpenCV's default); transparency is composited over
    :data:`ALPHA_BACKGROUND`.
    """
    import cv2

    info = probe_image(data, where)
    check_dimensions(info.width, info.height, max_pixels, where)
    buffer = np.frombuffer(data, np.uint8)
    try:
        if info.alpha:
            image = _composite(cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED))
        else:
            rgb = getattr(cv2, "IMREAD_COLOR_RGB", None)
            image = cv2.imdecode(buffer, rgb if rgb is not None else cv2.IMREAD_COLOR)
            if image is not None and rgb is None:
                image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    except cv2.error:  # OpenCV's own checks on what the decoder found inside (e.g. a frame's size)
        image = None
    if image is None or image.ndim != 3 or image.shape[2] != 3:
        raise _bad(where, f"could not decode the {info.format.upper()} data (corrupt or truncated)")
    if (image.shape[1], image.shape[0]) != (info.width, info.height) and info.orientation == 1:
        raise _bad(where, f"the {info.format.upper()} data decodes to {image.shape[1]}x{image.shape[0]}, "
                          f"not the {info.width}x{info.height} its header declares")
    return image


def _composite(image: np.ndarray | None) -> np.ndarray | None:
    """BGRA (8 or 16 bit) → RGB over the background grey; other layouts → RGB (or None if unreadable)."""
    import cv2

    if image is None:
        return None
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    if image.dtype != np.uint8:
        return None
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if image.shape[2] != 4:
        return None
    alpha = image[:, :, 3:4].astype(np.uint16)
    out = np.empty((*image.shape[:2], 3), np.uint8)
    for channel in range(3):  # one channel at a time: temporaries stay at 2 bytes per pixel
        blended = image[:, :, 2 - channel : 3 - channel].astype(np.uint16) * alpha
        blended += ALPHA_BACKGROUND * (255 - alpha) + 127
        out[:, :, channel : channel + 1] = blended // 255
    return out


def check_pixel_array(array: np.ndarray, max_pixels: int, where: str = "image") -> np.ndarray:
    """A ``uint8 [H, W, 3]`` RGB array, checked like a decoded image's dimensions."""
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise RequestError(f"{where}: expected uint8 [H, W, 3] RGB pixels, got {array.dtype} {list(array.shape)}")
    height, width = array.shape[:2]
    if not height or not width:
        raise RequestError(f"{where}: image with zero width or height")
    check_dimensions(width, height, max_pixels, where)
    return np.ascontiguousarray(array)
