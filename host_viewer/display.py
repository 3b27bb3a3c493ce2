"""The OpenCV window: the newest frame with the numbers a camera user needs drawn over it."""

from __future__ import annotations

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


def basic_lines(frame: ReceivedFrame, fps: float, age_ms: float, state: str) -> list[str]:
    md = frame.metadata
    lines = [f"{fps:5.1f} fps   age {age_ms:6.1f} ms   {state}"]
    if "ExposureTime" in md:
        lines.append(f"exposure {md['ExposureTime'] / 1000:.2f} ms   gain {md.get('AnalogueGain', 0):.2f}")
    return lines
