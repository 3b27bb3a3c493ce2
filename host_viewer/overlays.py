"""What is drawn over the video: each overlay is toggleable by a key, drawn per camera tile in place.

Overlays read only what the tile and its client already know (the frame's metadata and raw statistics,
the client's counters and state, the running command's Progress), so drawing costs no messages.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from .display import FONT, draw_text_block
from .tile import CameraTile

WHITE = (255, 255, 255)
CHANNEL_COLOURS = {"R": (60, 60, 255), "Gr": (60, 220, 60), "Gb": (200, 255, 120), "B": (255, 120, 40)}
STATE_COLOURS = {"connected": (80, 220, 80), "reconnecting": (0, 200, 255), "connecting": (0, 200, 255),
                 "refused": (60, 60, 255), "closed": (160, 160, 160)}
HIST_SIZE = (300, 96)  # plot width (one column per bin) and height, pixels


@dataclass
class Overlay:
    name: str
    key: str
    description: str
    draw: Callable[[np.ndarray, CameraTile], None]
    enabled: bool = True


def stats_lines(tile: CameraTile) -> list[str]:
    client = tile.client
    return [
        f"fps received {tile.received_meter.rate(tile.last_sample):5.1f}   shown {tile.session.fps_meter.rate():5.1f}",
        f"age {tile.last_age_ms:6.1f} ms   dropped {client.frames_dropped}",
        f"link {tile.link_meter.rate(tile.last_sample) * 8 / 1e6:6.2f} Mbit/s",
    ]


def controls_lines(tile: CameraTile) -> list[str]:
    frame = tile.last_frame
    if frame is None:
        return ["no frame yet"]
    md = frame.metadata
    lines = []
    if "ExposureTime" in md:
        ae = "auto" if md.get("AeEnable") else "manual"
        lines.append(f"ExposureTime {md['ExposureTime'] / 1000:.3f} ms  ({ae})")
    if "AnalogueGain" in md:
        lines.append(f"AnalogueGain {md['AnalogueGain']:.2f}")
    gains = md.get("ColourGains")
    if gains:
        awb = "auto" if md.get("AwbEnable") else "manual"
        lines.append(f"ColourGains R {gains[0]:.2f} B {gains[1]:.2f}  ({awb})")
    return lines or ["no exposure metadata"]


def draw_stats(image: np.ndarray, tile: CameraTile) -> None:
    draw_text_block(image, stats_lines(tile), origin=(8, 8))


def draw_controls(image: np.ndarray, tile: CameraTile) -> None:
    draw_text_block(image, controls_lines(tile), origin=(8, 84))


def connection_text(tile: CameraTile) -> str:
    client = tile.client
    text = f"{tile.name}: {client.state}"
    if client.state_detail:
        text += f" ({client.state_detail[:40]})"
    return text


def draw_connection(image: np.ndarray, tile: CameraTile) -> None:
    client = tile.client
    text = connection_text(tile)
    (w, h), _ = cv2.getTextSize(text, FONT, 0.5, 1)
    x0 = max(0, image.shape[1] - w - 20)
    roi = image[6 : 6 + h + 12, x0 : x0 + w + 14]
    roi[:] = (roi * 0.35).astype(np.uint8)
    cv2.circle(image, (x0 + 7, 6 + (h + 12) // 2), 4, STATE_COLOURS.get(client.state, WHITE), -1, cv2.LINE_AA)
    cv2.putText(image, text, (x0 + 14, 6 + h + 5), FONT, 0.5, WHITE, 1, cv2.LINE_AA)


def histogram_box(image: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the histogram panel: bottom left, above the status line."""
    width, height = HIST_SIZE[0] + 16, HIST_SIZE[1] + 40
    y1 = image.shape[0] - 28
    return 8, max(0, y1 - height), min(image.shape[1], 8 + width), y1


def draw_histogram(image: np.ndarray, tile: CameraTile) -> None:
    """Per-channel raw histograms (log counts), black and clipping levels marked, clipped percentages."""
    frame = tile.last_frame
    if frame is None:
        return
    hist = frame.histograms()
    stats = frame.stats
    if hist is None or hist.ndim != 2 or hist.shape[0] != 4 or hist.shape[1] < 2:
        return
    x0, y0, x1, y1 = histogram_box(image)
    roi = image[y0:y1, x0:x1]
    roi[:] = (roi * 0.25).astype(np.uint8)
    px, py = x0 + 8, y0 + 8  # plot origin (top left)
    pw, ph = HIST_SIZE
    bins = hist.shape[1]
    columns = np.linspace(px, px + pw - 1, bins).astype(np.int32)
    top = math.log1p(float(hist.max())) or 1.0
    channels = stats.get("channels") or ["R", "Gr", "Gb", "B"]
    for i, name in enumerate(channels[:4]):
        heights = (np.log1p(hist[i].astype(np.float64)) / top * (ph - 1)).astype(np.int32)
        points = np.stack([columns, py + ph - 1 - heights], axis=1).reshape(-1, 1, 2)
        cv2.polylines(image, [points], False, CHANNEL_COLOURS.get(name, WHITE), 1, cv2.LINE_AA)
    white = stats.get("white_level")
    black = stats.get("black_level")
    if white:
        if black is not None:
            bx = px + int(black / (white + 1) * (pw - 1))
            cv2.line(image, (bx, py), (bx, py + ph - 1), (128, 128, 128), 1)
        cx = px + pw - 1  # the clipping level is the top bin
        cv2.line(image, (cx, py), (cx, py + ph - 1), (0, 0, 255), 2)
    clipped = stats.get("clipped") or []
    x = px
    cv2.putText(image, "clip", (x, py + ph + 16), FONT, 0.4, WHITE, 1, cv2.LINE_AA)
    x += 34
    for name, fraction in zip(channels, clipped):
        label = f"{name} {100 * fraction:.2f}%"
        cv2.putText(image, label, (x, py + ph + 16), FONT, 0.4, CHANNEL_COLOURS.get(name, WHITE), 1, cv2.LINE_AA)
        x += cv2.getTextSize(label, FONT, 0.4, 1)[0][0] + 8
    cv2.putText(image, "raw log hist", (px + 2, py + 10), FONT, 0.35, (200, 200, 200), 1, cv2.LINE_AA)


def draw_progress(image: np.ndarray, tile: CameraTile) -> None:
    """The running (or just finished) command: name, step, and a fraction bar."""
    progress = tile.visible_progress()
    if progress is None:
        return
    width = min(300, image.shape[1] - 16)
    x0 = image.shape[1] - width - 8
    y0 = 40
    roi = image[y0 : y0 + 46, x0 : x0 + width]
    roi[:] = (roi * 0.3).astype(np.uint8)
    text = f"{progress.name}: {progress.step}" if progress.finished is None else f"{progress.name}: {progress.outcome}"
    cv2.putText(image, text[:48], (x0 + 6, y0 + 16), FONT, 0.45, WHITE, 1, cv2.LINE_AA)
    fraction = min(1.0, max(0.0, progress.fraction))
    bar_x0, bar_y0, bar_x1, bar_y1 = x0 + 6, y0 + 24, x0 + width - 50, y0 + 38
    cv2.rectangle(image, (bar_x0, bar_y0), (bar_x1, bar_y1), WHITE, 1)
    filled = bar_x0 + int((bar_x1 - bar_x0) * fraction)
    ok = progress.finished is None or progress.outcome == "done"
    cv2.rectangle(image, (bar_x0, bar_y0), (filled, bar_y1), (80, 200, 80) if ok else (60, 60, 255), -1)
    cv2.putText(image, f"{100 * fraction:3.0f}%", (bar_x1 + 6, bar_y1 - 2), FONT, 0.45, WHITE, 1, cv2.LINE_AA)


def draw_status(image: np.ndarray, tile: CameraTile, now: float | None = None) -> None:
    """The status line (bottom): the last command outcome for a while, and REC while recording."""
    now = time.monotonic() if now is None else now
    parts = []
    if tile.recorder is not None:
        parts.append(f"REC {tile.recorder.frames} frames")
    if tile.status and now - tile.status_time < 8.0:
        parts.append(tile.status)
    if not parts:
        return
    y0 = image.shape[0] - 24
    roi = image[y0:, :]
    roi[:] = (roi * 0.3).astype(np.uint8)
    cv2.putText(image, "   ".join(parts)[:110], (8, image.shape[0] - 8), FONT, 0.45, WHITE, 1, cv2.LINE_AA)


def draw_help(image: np.ndarray, lines: list[str]) -> None:
    """The key table, centred."""
    sizes = [cv2.getTextSize(line, FONT, 0.5, 1)[0] for line in lines]
    width = max(w for w, _ in sizes) + 12
    height = (max(h for _, h in sizes) + 6) * len(lines) + 6
    x0 = max(0, (image.shape[1] - width) // 2)
    y0 = max(0, (image.shape[0] - height) // 2)
    draw_text_block(image, lines, origin=(x0, y0))


OVERLAY_NAMES = ("stats", "controls", "histogram", "progress", "connection")


def standard_overlays() -> list[Overlay]:
    return [
        Overlay("stats", "1", "overlay: fps received/shown, frame age, dropped, link Mbit/s", draw_stats),
        Overlay("controls", "2", "overlay: ExposureTime, AnalogueGain, ColourGains", draw_controls),
        Overlay("histogram", "3", "overlay: raw histograms R Gr Gb B, clipping", draw_histogram),
        Overlay("progress", "4", "overlay: progress of a running command", draw_progress),
        Overlay("connection", "5", "overlay: connection state", draw_connection),
    ]
