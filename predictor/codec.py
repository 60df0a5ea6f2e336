"""Compatibility names for ``predictor.pipeline`` (issue 13 moves its imports; then delete this module).

The request path lives in :mod:`predictor.errors` (error types, HTTP/gRPC codes, log policy),
:mod:`predictor.images` (sniff, bound, decode), :mod:`predictor.params` (per-request parameters) and
:mod:`predictor.wire` (v1/v2/gRPC/REST-binary encode/decode). Nothing new is to import from here.
"""

from predictor.images import check_dimensions as check_pixels
from predictor.images import check_pixel_array, decode_image, probe_image
from predictor.wire import ImageSource, Limits

__all__ = ["ImageSource", "Limits", "check_pixel_array", "check_pixels", "decode_image", "probe_image"]
