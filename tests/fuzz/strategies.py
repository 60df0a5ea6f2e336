"""Hypothesis strategies for hostile images, parameters and request bodies."""

from __future__ import annotations

import base64
import struct

import numpy as np
from hypothesis import strategies as st

from tests.tools.images import PNG_SIGNATURE, encode, gradient, png_chunk, png_claiming, png_forged_chunk

FORMATS = (".png", ".jpg", ".webp", ".bmp")
MAGICS = (b"\xff\xd8\xff", PNG_SIGNATURE, b"BM", b"RIFF\0\0\0\0WEBPVP8 ", b"RIFF\x10\0\0\0WEBPVP8X")


@st.composite
def well_formed(draw) -> bytes:
    """A real image of any supported format, any size up to 600 px a side, thin ones included."""
    width = draw(st.one_of(st.integers(1, 600), st.sampled_from([1, 2, 3, 2000])))
    height = draw(st.one_of(st.integers(1, 600), st.sampled_from([1, 2, 3])))
    if width * height > 1_500_000:
        height = 1
    alpha = draw(st.booleans())
    image = gradient(height, width)
    ext = draw(st.sampled_from(FORMATS if not alpha else (".png", ".webp")))
    if alpha:
        image = np.concatenate([image, (image[..., :1] * 3).astype(np.uint8)], axis=-1)
    return encode(ext, image)


@st.composite
def mutated(draw) -> bytes:
    """A real image with bytes flipped, inserted, cut, or a length field forged."""
    data = bytearray(draw(well_formed()))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "insert", "truncate", "forge"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "truncate":
            del data[max(at, 1) :]
        elif len(data) >= at + 4:
            data[at : at + 4] = struct.pack(">I", draw(st.integers(0, 0xFFFFFFFF)))
    return bytes(data)


@st.composite
def crafted(draw) -> bytes:
    """Small hand-made hostile containers: forged chunks, bombs by header, magic + noise."""
    choice = draw(st.integers(0, 3))
    if choice == 0:
        return png_forged_chunk(draw(st.integers(1 << 20, 0xFFFFFFFF)))
    if choice == 1:
        return png_claiming(draw(st.integers(1, 1 << 20)), draw(st.integers(1, 1 << 20)))
    if choice == 2:
        kind = draw(st.sampled_from([b"acTL", b"iCCP", b"zTXt", b"IDAT", b"PLTE", b"eXIf"]))
        png = encode(".png", gradient(16, 16))
        return PNG_SIGNATURE + png[8:33] + png_chunk(kind, draw(st.binary(max_size=64))) + png[33:]
    return draw(st.sampled_from(MAGICS)) + draw(st.binary(max_size=256))


hostile_images = st.one_of(well_formed(), mutated(), crafted(), st.binary(max_size=64))


def b64_variant(data: bytes, variant: str) -> str:
    if variant == "urlsafe":
        return base64.urlsafe_b64encode(data).decode()
    if variant == "mime":
        return base64.encodebytes(data).decode()
    if variant == "unpadded":
        return base64.b64encode(data).decode().rstrip("=")
    if variant == "garbage":
        return base64.b64encode(data).decode()[:-1] + "*"
    if variant == "overpadded":  # padding past a whole block: pybase64's strict pass refuses what binascii's took
        return base64.b64encode(data).decode() + "===="
    return base64.b64encode(data).decode()


b64_variants = st.sampled_from(["standard", "urlsafe", "mime", "unpadded", "garbage", "overpadded"])

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30), st.sampled_from(["0.5", "1e400", "nan", "person,car", "-1", "unicorn", " 0x10 "]),
)
json_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
parameters = st.dictionaries(
    st.sampled_from(["confidence", "iou", "max_detections", "classes", "agnostic", "other"]), json_values, max_size=4
)
