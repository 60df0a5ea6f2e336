"""predictor.images: format sniffing, container checks before decoding, dimension limits, decoding."""

from __future__ import annotations

import struct

import cv2
import numpy as np
import pytest

from predictor import images
from predictor.errors import RequestError
from tests.tools.images import encode, gradient, png_claiming


@pytest.mark.parametrize(
    ("ext", "params", "fmt"),
    [
        (".jpg", (), "jpeg"),
        (".jpg", (cv2.IMWRITE_JPEG_PROGRESSIVE, 1), "jpeg"),
        (".png", (), "png"),
        (".bmp", (), "bmp"),
        (".webp", (cv2.IMWRITE_WEBP_QUALITY, 80), "webp"),  # lossy: VP8
        (".webp", (cv2.IMWRITE_WEBP_QUALITY, 101), "webp"),  # lossless: VP8L
    ],
)
def test_probe_and_decode_every_format(ext, params, fmt):
    image = gradient(37, 53)
    data = encode(ext, image, params)
    info = images.probe_image(data)
    assert (info.format, info.width, info.height) == (fmt, 53, 37)
    decoded = images.decode_image(data, max_pixels=10_000)
    assert decoded.shape == (37, 53, 3) and decoded.dtype == np.uint8
    if fmt in ("png", "bmp") or params == (cv2.IMWRITE_WEBP_QUALITY, 101):
        np.testing.assert_array_equal(decoded, image)  # lossless, and RGB order preserved


def test_fixture_jpeg_dimensions_from_header(yolo_fixtures):
    data = (yolo_fixtures / "images" / "bus.jpg").read_bytes()
    info = images.probe_image(data)
    assert (info.width, info.height) == (810, 1080)


def _with_exif_orientation(jpeg: bytes, orientation: int, order: str = "<") -> bytes:
    mark = b"II" if order == "<" else b"MM"
    entry = struct.pack(order + "HHI", 0x0112, 3, 1) + struct.pack(order + "H", orientation) + b"\0\0"
    tiff = mark + struct.pack(order + "HI", 42, 8) + struct.pack(order + "H", 1) + entry + struct.pack(order + "I", 0)
    payload = b"Exif\0\0" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


@pytest.mark.parametrize("order", ["<", ">"])
def test_jpeg_exif_orientation_is_read_and_applied(order):
    plain = encode(".jpg", gradient(30, 50))
    jpeg = _with_exif_orientation(plain, 6, order)
    info = images.probe_image(jpeg)
    assert (info.width, info.height, info.orientation) == (50, 30, 6)
    rotated = images.decode_image(jpeg, max_pixels=10_000)
    assert rotated.shape == (50, 30, 3)
    # EXIF orientation 6: the stored image is shown turned 90° clockwise
    np.testing.assert_array_equal(rotated, np.rot90(images.decode_image(plain, max_pixels=10_000), k=-1))
    assert images.probe_image(plain).orientation == 1


def test_decompression_bomb_refused_from_the_header():
    bomb = png_claiming(100_000, 100_000)
    assert len(bomb) < 200
    with pytest.raises(RequestError, match=r"100000x100000 = 10000000000 pixels is over the limit") as caught:
        images.decode_image(bomb, max_pixels=40_000_000)
    assert caught.value.code == "too_many_pixels"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"hello, this is not an image at all", "not a JPEG, PNG, BMP or WebP image"),
        (b"GIF89a" + b"\0" * 32, "not a JPEG, PNG, BMP or WebP image"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "truncated JPEG"),
        (b"\x89PNG\r\n\x1a\n\0\0", "truncated or corrupt PNG"),
        (b"RIFF\0\0\0\0WEBPVP8 ", "truncated WebP"),
    ],
)
def test_bad_bytes_name_the_problem(data, message):
    with pytest.raises(RequestError, match=message):
        images.decode_image(data, max_pixels=10_000)


def test_truncated_images_are_refused():
    image = gradient(120, 160)
    jpeg = encode(".jpg", image)
    with pytest.raises(RequestError, match="truncated JPEG|could not decode"):
        images.decode_image(jpeg[: len(jpeg) * 2 // 3], max_pixels=100_000)
    png = encode(".png", image)
    with pytest.raises(RequestError, match="truncated PNG|corrupt PNG|could not decode"):
        images.decode_image(png[: len(png) // 2], max_pixels=100_000)


# ----- issue 12: hostile containers, thin images, transparency ---------------------------------------
_PEAK_RSS_SCRIPT = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))  # never more than 2 GiB, whatever happens
from predictor.images import decode_image
from predictor.errors import RequestError
from tests.tools.images import png_forged_chunk
data = png_forged_chunk(int(sys.argv[1]))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    decode_image(data, 4_000_000)
    outcome = "decoded"
except RequestError as error:
    outcome = str(error)
print(len(data), (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024, outcome, sep="|")
"""


def test_forged_png_chunk_length_is_refused_before_the_decoder_allocates_it():
    """Issue 12.1: a PNG chunk declaring 400 MB made OpenCV allocate it (+765 MB RSS measured for 800 MB)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", _PEAK_RSS_SCRIPT, "400000000"], capture_output=True, text=True,
                            cwd=root, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    size, growth_mb, outcome = result.stdout.strip().splitlines()[-1].split("|")
    assert int(size) < 130
    assert "chunk tEXt at byte 33 declares 400000000 bytes but only" in outcome
    assert int(growth_mb) < 32, f"peak RSS grew by {growth_mb} MB decoding a {size}-byte image"


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0xFF]) + data[index + 1 :]


def _png_with(kind: bytes, data: bytes = b"") -> bytes:
    from tests.tools.images import PNG_SIGNATURE, png_chunk

    png = encode(".png", gradient(8, 8))
    return PNG_SIGNATURE + png[8:33] + png_chunk(kind, data) + png[33:]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_png_with(b"acTL", bytes(8)), "animated PNG"),
        (_png_with(b"XXXX", b"1"), "unknown critical chunk XXXX"),
        (encode(".png", gradient(8, 8))[:-12], "no IEND chunk"),
        (_flip(encode(".png", gradient(8, 8)), 45), "bad CRC in chunk IDAT at byte 33"),
    ],
)
def test_png_chunk_structure_is_checked(data, message):
    with pytest.raises(RequestError, match=message):
        images.decode_image(data, max_pixels=10_000)


def test_webp_chunk_lengths_are_checked():
    webp = encode(".webp", gradient(20, 20), (cv2.IMWRITE_WEBP_QUALITY, 80))
    forged = webp[:16] + struct.pack("<I", 0x7FFFFFF0) + webp[20:]
    with pytest.raises(RequestError, match="corrupt WebP: chunk b'VP8 ' at byte 12 declares 2147483632 bytes"):
        images.decode_image(forged, max_pixels=10_000)
    with pytest.raises(RequestError, match="RIFF header declares"):
        images.decode_image(webp[:4] + struct.pack("<I", 10_000_000) + webp[8:], max_pixels=10_000)


@pytest.mark.parametrize(("width", "height"), [(2000, 1), (4000, 2), (1, 10000), (330, 10)])
def test_thin_images_are_refused_before_letterboxing(width, height):
    """Issue 12.2: 2000x1, 4000x2 and 1x10000 reached cv2.resize and failed there (500)."""
    data = encode(".png", np.zeros((height, width, 3), np.uint8))
    with pytest.raises(RequestError, match=f"{width}x{height}") as caught:
        images.decode_image(data, max_pixels=40_000)
    assert caught.value.code == "image_shape"
    with pytest.raises(RequestError, match="too thin|aspect ratio"):
        images.check_pixel_array(np.zeros((height, width, 3), np.uint8), 40_000)
    ok = np.zeros((images.MIN_IMAGE_SIDE, images.MIN_IMAGE_SIDE * images.MAX_ASPECT_RATIO, 3), np.uint8)
    assert images.decode_image(encode(".png", ok), 40_000).shape == ok.shape


@pytest.mark.parametrize("ext", [".png", ".webp"])
def test_transparency_is_composited_over_the_padding_grey(ext):
    """Issue 12.8: PNG/WebP alpha was dropped (transparent pixels took whatever colour they stored)."""
    rgba = np.zeros((16, 24, 4), np.uint8)
    rgba[..., :3] = (200, 10, 50)
    rgba[:, :8, 3] = 255  # opaque
    rgba[:, 8:16, 3] = 0  # transparent
    rgba[:, 16:, 3] = 128  # half
    params = (cv2.IMWRITE_WEBP_QUALITY, 101) if ext == ".webp" else ()
    data = encode(ext, rgba, params)
    assert images.probe_image(data).alpha
    decoded = images.decode_image(data, max_pixels=10_000)
    assert decoded.shape == (16, 24, 3)
    assert decoded[0, 0].tolist() == [200, 10, 50]
    assert decoded[0, 10].tolist() == [images.ALPHA_BACKGROUND] * 3
    np.testing.assert_allclose(decoded[0, 20], [157, 62, 82], atol=1)
    assert not images.probe_image(encode(ext, rgba[..., :3].copy(), params)).alpha
