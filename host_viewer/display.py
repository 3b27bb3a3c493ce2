"""The OpenCV window: the newest frame with the numbers a camera user needs drawn over it."""

from __future__ import annotations

import math

import cv2
import numpy as np

from .client import ReceivedFrame

FONT = cv2.FONT_HERSHEY_SIMPLEX


def draw_text_block(image: np.ndarray, lines: list[str], origin=(8, 8), scale: float = 0.5) -> None:
    """White text on a dark translucent box, top-left at `origin`, drawn in place."""
    if not lines:
        return
    sizes = [cv2.getTextSize(line, FONT, scale, 1)[0] for line in lines]
    line_h = max(h for _, h in sizes) + 6
    width = max(w for w, _ in sizes) + 12
    height = line_h * len(lines) + 6
    x0, y0 = origin
    x1, y1 = min(image.shape[1], x0 + width), min(image.shape[0], y0 + height)
    roi = image[y0:y1, x0:x1]
    roi[:] = (roi * 0.35).astype(np.uint8)
    for i, line in enumerate(lines):
        y = y0 + 4 + line_h * (i + 1) - 6
        cv2.putText(image, line, (x0 + 6, y), FONT, scale, (255, 255, 255), 1, cv2.LINE_AA)


def number(value) -> float | None:
    """`value` as a finite float, or None: metadata comes from the network and may be anything."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


def basic_lines(frame: ReceivedFrame, fps: float, age_ms: float, state: str) -> list[str]:
    md = frame.metadata if isinstance(frame.metadata, dict) else {}
    age = number(age_ms)
    age_text = f"{age:6.1f} ms" if age is not None else "   ? ms"
    lines = [f"{fps:5.1f} fps   age {age_text}   {state}"]
    exposure, gain = number(md.get("ExposureTime")), number(md.get("AnalogueGain"))
    if exposure is not None:
        gain_text = f"{gain:.2f}" if gain is not None else "?"
        lines.append(f"exposure {exposure / 1000:.2f} ms   gain {gain_text}")
    return lines
