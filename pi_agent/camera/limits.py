"""What main stream a camera can deliver: sizes and rates refused up front with a sentence saying what works.

The Pi's ISP scales the sensor mode's output (after the aspect-ratio crop, see isp_crop) to the main size.
This project refuses upscaling beyond the largest mode (the picture would only be interpolated, and a
typing slip such as 8000x6000 would cost the Pi memory for nothing) and main streams under MIN_SIZE pixels a
side (our floor: smaller is no use to look at and not what a user means).
"""

from __future__ import annotations

from typing import Sequence

MIN_SIZE = 64


def _fmt(size) -> str:
    return f"{size[0]}x{size[1]}"


def check_stream_request(model: str, modes: Sequence, size: tuple[int, int], fps: float) -> None:
    """ValueError when no mode in `modes` (objects with .size and .fps_max) delivers a `size` main stream at
    `fps` (0: free-running); the message names what the camera can do instead."""
    w, h = size
    largest = max(modes, key=lambda m: m.size[0] * m.size[1])
    if w < MIN_SIZE or h < MIN_SIZE:
        raise ValueError(f"--size {_fmt(size)}: the main stream must be at least {MIN_SIZE}x{MIN_SIZE}")
    covering = [m for m in modes if m.size[0] >= w and m.size[1] >= h]
    if not covering:
        raise ValueError(f"--size {_fmt(size)}: the {model} delivers at most {_fmt(largest.size)} "
                         f"(its largest mode); choose a size up to that")
    if fps > 0:
        fastest = max(covering, key=lambda m: m.fps_max)
        if fps > fastest.fps_max + 1e-6:
            raise ValueError(f"--fps {fps:g}: the {model} delivers {_fmt(size)} at up to {fastest.fps_max:g} fps "
                             f"(mode {_fmt(fastest.size)}); use --fps {int(fastest.fps_max)} or less, a smaller "
                             f"--size, or --fps 0 for as fast as it goes")


def isp_crop(input_size: tuple[int, int], output_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(x, y, w, h) of the sensor output that the ISP scales to `output_size`: the largest centred rectangle
    with the output's aspect ratio, never a squash. libcamera src/libcamera/pipeline/rpi/vc4/vc4.cpp
    (platformConfigure: `unicamFormat.size.boundedToAspectRatio(maxSize).centeredTo(...center())`) and
    pisp.cpp (the same per output), with Size::boundedToAspectRatio and centeredTo from geometry.cpp."""
    iw, ih = input_size
    ow, oh = output_size
    ratio1, ratio2 = iw * oh, ow * ih
    w, h = (ratio2 // oh, ih) if ratio1 > ratio2 else (iw, ratio1 // ow)
    cx, cy = iw // 2, ih // 2  # Rectangle(size).center()
    return cx - w // 2, cy - h // 2, w, h


def native_crop(crop: tuple[int, int, int, int], analog_crop: tuple[int, int, int, int],
                output_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """An ISP crop in sensor-output pixels as the ScalerCrop metadata reports it, on the pixel array:
    CameraData::scaleIspCrop in pipeline_base.cpp (scaledBy(analogCrop.size(), outputSize), then
    translatedBy(analogCrop.topLeft()))."""
    x, y, w, h = crop
    ax, ay, aw, ah = analog_crop
    ow, oh = output_size
    return (x * aw // ow + ax, y * ah // oh + ay, w * aw // ow, h * ah // oh)
