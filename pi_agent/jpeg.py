"""JPEG of a frame's main image, the one place that knows a monochrome sensor's frame is grey.

Why: a mono sensor's main stream is grey in all three channels (the ISP has no colour to add); encoding one
channel as a greyscale JPEG sends a third of the samples and needs no chroma, and every decoder (OpenCV,
simplejpeg, browsers) shows it as the grey it is.
"""

from __future__ import annotations

import numpy as np
import simplejpeg

from .camera.base import CapturedFrame


def encode_main(frame: CapturedFrame, quality: int, subsampling: str = "420") -> bytes:
    """JPEG bytes of `frame.main` (HxWx3 BGR uint8): colour with `subsampling` ("420", "444", ...), or
    greyscale from the green channel when the frame comes from a monochrome sensor (bayer_order "MONO")."""
    if frame.bayer_order == "MONO":
        grey = np.ascontiguousarray(frame.main[:, :, 1:2])
        return simplejpeg.encode_jpeg(grey, quality=quality, colorspace="GRAY", colorsubsampling="Gray")
    return simplejpeg.encode_jpeg(frame.main, quality=quality, colorspace="BGR", colorsubsampling=subsampling)
