"""What is drawn over the video: each overlay is toggleable by a key and is laid out per camera tile.

Overlays read only what the tile and its client already know (the frame's metadata and raw statistics,
the client's counters and state, the running command's Progress), so drawing costs no messages.

Layout (`layout`): every overlay says how big it is at the tile's `Style` (text scales with the height the
video is shown at: legible at 320x240, not lost at 1920x1080) and which corner it prefers; boxes are
placed in priority order, each in its preferred corner or the next free one, and an overlay that fits
nowhere without touching another is not drawn (its key still toggles it). Boxes never overlap.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Callable

import cv2
import numpy as np

from protocol.address import parse_address

from .display import FONT
from .tile import CameraTile

WHITE = (255, 255, 255)
CHANNEL_COLOURS = {"R": (60, 60, 255), "Gr": (60, 220, 60), "Gb": (200, 255, 120), "B": (255, 120, 40)}
STATE_COLOURS = {"connected": (80, 220, 80), "reconnecting": (0, 200, 255), "connecting": (0, 200, 255),
                 "refused": (60, 60, 255), "closed": (160, 160, 160)}
HIST_SIZE = (300, 96)  # plot width (one column per bin) and height at scale 1 (video shown 480 high)
OVERLAY_NAMES = ("stats", "controls", "histogram", "progress", "connection")

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive), canvas pixels


@dataclass(frozen=True)
class Style:
    """Sizes for one tile, from the height its video is shown at (480 px → the original 0.5 font)."""

    scale: float  # 1.0 at 480 px
    font: float
    thickness: int
    line: int  # text line height, px
    pad: int
    margin: int

    @classmethod
    def for_height(cls, height: int) -> "Style":
        scale = min(2.25, max(0.7, height / 480))
        font = 0.5 * scale
        (_, text_h), _ = cv2.getTextSize("Ag", FONT, font, 1)
        return cls(scale=scale, font=font, thickness=1 if scale < 1.6 else 2, line=text_h + max(4, round(6 * scale)),
                   pad=max(3, round(6 * scale)), margin=max(3, round(8 * scale)))

    def text_width(self, text: str) -> int:
        return cv2.getTextSize(text, FONT, self.font, self.thickness)[0][0]


def darken(roi: np.ndarray, factor: float) -> None:
    """Darken a box of the canvas in place (no temporary full-size arrays)."""
    if roi.size:
        cv2.convertScaleAbs(roi, dst=roi, alpha=factor)


def text_size(lines: list[str], style: Style) -> tuple[int, int]:
    return (max(style.text_width(line) for line in lines) + 2 * style.pad, style.line * len(lines) + style.pad)


def draw_text_lines(image: np.ndarray, lines: list[str], box: Box, style: Style, colour=WHITE) -> None:
    x0, y0, x1, y1 = box
    darken(image[y0:y1, x0:x1], 0.35)
    for i, line in enumerate(lines):
        y = y0 + style.line * (i + 1) - max(2, style.pad // 2)
        cv2.putText(image, line, (x0 + style.pad, y), FONT, style.font, colour, style.thickness, cv2.LINE_AA)


def live_age_ms(tile: CameraTile) -> float:
    """The shown frame's age now: it keeps counting while no new frame comes (agent down, link stalled)."""
    frame = tile.last_frame
    if frame is None:
        return 0.0
    if tile.client.state == "connected":
        return tile.last_age_ms
    return frame.age_ms()


def stats_lines(tile: CameraTile) -> list[str]:
    client = tile.client
    return [
        f"fps received {tile.received_meter.rate(tile.last_sample):5.1f}   shown {tile.session.fps_meter.rate():5.1f}",
        f"age {live_age_ms(tile):6.1f} ms   dropped {client.frames_dropped}",
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


def tile_label(tile: CameraTile) -> str:
    """Name and port, so two agents on one host can be told apart: "bench-pi :5556"."""
    try:
        _host, port = parse_address(tile.client.address)
    except ValueError:
        return tile.name
    return f"{tile.name} :{port}"


def connection_text(tile: CameraTile) -> str:
    connection = tile.client.connection
    text = f"{tile_label(tile)}: {connection.state}"
    if connection.detail:
        text += f" ({connection.detail[:40]})"
    return text


def unreachable_text(tile: CameraTile, now: float | None = None) -> str | None:
    """Over a frozen frame: since when the agent has sent nothing, or None while it streams."""
    frame = tile.last_frame
    if frame is None or tile.client.state == "connected":
        return None
    now_ns = time.monotonic_ns() if now is None else int(now * 1e9)
    silent_s = max(0.0, (now_ns - frame.received_ns) / 1e9)
    since = datetime.fromtimestamp(time.time() - silent_s).strftime("%H:%M:%S")
    return f"agent unreachable since {since} ({silent_s:.0f} s)"


# -- overlays: size and drawing ------------------------------------------------------------------------------
def _text_overlay(lines_of: Callable[[CameraTile], list[str]]):
    def measure(tile: CameraTile, style: Style):
        return text_size(lines_of(tile), style)

    def draw(image: np.ndarray, tile: CameraTile, box: Box, style: Style) -> None:
        draw_text_lines(image, lines_of(tile), box, style)

    return measure, draw


def _measure_connection(tile: CameraTile, style: Style):
    return style.text_width(connection_text(tile)) + 2 * style.pad + style.line, style.line + style.pad


def _draw_connection(image: np.ndarray, tile: CameraTile, box: Box, style: Style) -> None:
    x0, y0, x1, y1 = box
    darken(image[y0:y1, x0:x1], 0.35)
    dot = style.line // 2
    cv2.circle(image, (x0 + style.pad + dot // 2, (y0 + y1) // 2), max(2, dot // 2),
               STATE_COLOURS.get(tile.client.state, WHITE), -1, cv2.LINE_AA)
    cv2.putText(image, connection_text(tile), (x0 + style.pad + dot + 4, y1 - style.pad),
                FONT, style.font, WHITE, style.thickness, cv2.LINE_AA)


def _hist_plot_size(style: Style) -> tuple[int, int]:
    return round(HIST_SIZE[0] * style.scale), round(HIST_SIZE[1] * style.scale)


def _measure_histogram(tile: CameraTile, style: Style):
    frame = tile.last_frame
    if frame is None or frame.histograms() is None:
        return None
    pw, ph = _hist_plot_size(style)
    return pw + 2 * style.pad + 4, ph + style.line + 2 * style.pad + 4


def _draw_histogram(image: np.ndarray, tile: CameraTile, box: Box, style: Style) -> None:
    """Per-channel raw histograms (log counts), black and clipping levels marked, clipped percentages."""
    hist = tile.last_frame.histograms()
    stats = tile.last_frame.stats
    if hist is None or hist.shape[1] < 2:
        return
    x0, y0, x1, y1 = box
    darken(image[y0:y1, x0:x1], 0.25)
    pw, ph = _hist_plot_size(style)
    px, py = x0 + style.pad, y0 + style.pad  # plot origin (top left)
    bins = hist.shape[1]
    columns = np.linspace(px, px + pw - 1, bins).astype(np.int32)
    top = math.log1p(float(hist.max())) or 1.0
    channels = stats.get("channels") or ["R", "Gr", "Gb", "B"]
    for i, name in enumerate(channels[:4]):
        heights = (np.log1p(hist[i].astype(np.float64)) / top * (ph - 1)).astype(np.int32)
        points = np.stack([columns, py + ph - 1 - heights], axis=1).reshape(-1, 1, 2)
        cv2.polylines(image, [points], False, CHANNEL_COLOURS.get(name, WHITE), style.thickness, cv2.LINE_AA)
    white, black = stats.get("white_level"), stats.get("black_level")
    if white:
        if black is not None:
            bx = px + int(black / (white + 1) * (pw - 1))
            cv2.line(image, (bx, py), (bx, py + ph - 1), (128, 128, 128), 1)
        cx = px + pw - 1  # the clipping level is the top bin
        cv2.line(image, (cx, py), (cx, py + ph - 1), (0, 0, 255), max(2, style.thickness + 1))
    small = style.font * 0.8
    y = py + ph + style.line - 2
    x = px
    cv2.putText(image, "clip", (x, y), FONT, small, WHITE, 1, cv2.LINE_AA)
    x += cv2.getTextSize("clip ", FONT, small, 1)[0][0]
    for name, fraction in zip(channels, stats.get("clipped") or []):
        label = f"{name} {100 * fraction:.2f}%"
        width = cv2.getTextSize(label, FONT, small, 1)[0][0]
        if x + width > x1 - style.pad:
            break  # no label runs out of the panel
        cv2.putText(image, label, (x, y), FONT, small, CHANNEL_COLOURS.get(name, WHITE), 1, cv2.LINE_AA)
        x += width + style.pad


def _progress_text(tile: CameraTile) -> str | None:
    progress = tile.visible_progress()
    if progress is None:
        return None
    text = f"{progress.name}: {progress.step}" if progress.finished is None else f"{progress.name}: {progress.outcome}"
    return text[:48]


def _measure_progress(tile: CameraTile, style: Style):
    text = _progress_text(tile)
    if text is None:
        return None
    return max(style.text_width(text), round(200 * style.scale)) + 2 * style.pad, 2 * style.line + style.pad


def _draw_progress(image: np.ndarray, tile: CameraTile, box: Box, style: Style) -> None:
    """The running (or just finished) command: name, step, and a fraction bar."""
    progress = tile.visible_progress()
    text = _progress_text(tile)
    if progress is None or text is None:
        return
    x0, y0, x1, y1 = box
    darken(image[y0:y1, x0:x1], 0.3)
    cv2.putText(image, text, (x0 + style.pad, y0 + style.line - 2), FONT, style.font, WHITE, style.thickness,
                cv2.LINE_AA)
    fraction = min(1.0, max(0.0, progress.fraction))
    percent = f"{100 * fraction:3.0f}%"
    bar_x0, bar_y0 = x0 + style.pad, y0 + style.line + 2
    bar_x1, bar_y1 = x1 - style.pad - style.text_width(percent) - style.pad, y1 - style.pad
    cv2.rectangle(image, (bar_x0, bar_y0), (bar_x1, bar_y1), WHITE, 1)
    ok = progress.finished is None or progress.outcome == "done"
    filled = bar_x0 + int((bar_x1 - bar_x0) * fraction)
    cv2.rectangle(image, (bar_x0, bar_y0), (filled, bar_y1), (80, 200, 80) if ok else (60, 60, 255), -1)
    cv2.putText(image, percent, (bar_x1 + style.pad, bar_y1 - 1), FONT, style.font, WHITE, style.thickness, cv2.LINE_AA)


@dataclass
class Overlay:
    name: str
    key: str
    description: str
    measure: Callable[[CameraTile, Style], tuple[int, int] | None]
    paint: Callable[[np.ndarray, CameraTile, Box, Style], None]
    corner: str  # preferred: "top-left", "top-right", "bottom-left", "bottom-right"
    enabled: bool = True


def standard_overlays() -> list[Overlay]:
    """In priority order: the first placed wins its corner."""
    stats = _text_overlay(stats_lines)
    controls = _text_overlay(controls_lines)
    return [
        Overlay("connection", "5", "overlay: connection state, agent name and port", _measure_connection,
                _draw_connection, "top-right"),
        Overlay("stats", "1", "overlay: fps received/shown, frame age, dropped, link Mbit/s", *stats, "top-left"),
        Overlay("progress", "4", "overlay: progress of a running command", _measure_progress, _draw_progress,
                "top-right"),
        Overlay("controls", "2", "overlay: ExposureTime, AnalogueGain, ColourGains", *controls, "top-left"),
        Overlay("histogram", "3", "overlay: raw histograms R Gr Gb B, clipping", _measure_histogram,
                _draw_histogram, "bottom-left"),
    ]


# -- layout --------------------------------------------------------------------------------------------------
CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")


def _intersects(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def status_parts(tile: CameraTile, now: float | None = None) -> list[str]:
    now = time.monotonic() if now is None else now
    parts = []
    recorder = tile.recorder  # read once: another thread may stop the recording
    if recorder is not None:
        parts.append(f"REC {recorder.frames} frames")
    text, when = tile.status_line()
    if text and now - when < 8.0:
        parts.append(text)
    return parts


@dataclass
class Placed:
    name: str
    box: Box
    paint: Callable[[np.ndarray], None]


def layout(tile: CameraTile, rect: Box, overlays: list[Overlay], now: float | None = None) -> list[Placed]:
    """Boxes for what is drawn over one tile's video at `rect`: the status line (bottom), the unreachable
    banner (centre), then each enabled overlay in priority order in its corner or the next free one. No two
    boxes intersect and all lie inside `rect`."""
    x0, y0, x1, y1 = rect
    style = Style.for_height(y1 - y0)
    m = style.margin
    placed: list[Placed] = []
    bottom = y1
    parts = status_parts(tile, now)
    if parts:
        box = (x0, y1 - style.line - style.pad, x1, y1)
        text = "   ".join(parts)
        placed.append(Placed("status", box, lambda image, b=box, t=text: _paint_status(image, t, b, style)))
        bottom = box[1]
    banner = unreachable_text(tile, now)
    if banner:
        w, h = text_size([banner], style)
        w = min(w, x1 - x0)
        cx, cy = (x0 + x1) // 2, (y0 + bottom) // 2
        box = (max(x0, cx - w // 2), cy - h // 2, min(x1, cx - w // 2 + w), cy - h // 2 + h)
        placed.append(Placed("unreachable", box,
                             lambda image, b=box, t=banner: draw_text_lines(image, [t], b, style, (80, 200, 255))))
    cursors = {"top-left": y0 + m, "top-right": y0 + m, "bottom-left": bottom - m, "bottom-right": bottom - m}
    for overlay in overlays:
        if not overlay.enabled:
            continue
        size = overlay.measure(tile, style)
        if size is None:
            continue
        w, h = size
        order = [overlay.corner] + [c for c in CORNERS if c != overlay.corner]
        for corner in order:
            left = corner.endswith("left")
            bx0 = x0 + m if left else x1 - m - w
            by0 = cursors[corner] if corner.startswith("top") else cursors[corner] - h
            box = (bx0, by0, bx0 + w, by0 + h)
            inside = box[0] >= x0 and box[1] >= y0 and box[2] <= x1 and box[3] <= bottom
            if inside and not any(_intersects(box, other.box) for other in placed):
                placed.append(Placed(overlay.name, box,
                                     lambda image, o=overlay, b=box: o.paint(image, tile, b, style)))
                cursors[corner] = box[3] + m if corner.startswith("top") else box[1] - m
                break
    return placed


def _paint_status(image: np.ndarray, text: str, box: Box, style: Style) -> None:
    x0, y0, x1, y1 = box
    darken(image[y0:y1, x0:x1], 0.3)
    limit = x1 - x0 - 2 * style.pad
    while len(text) > 3 and style.text_width(text) > limit:  # cut to the width, marked
        text = text[: len(text) - max(2, len(text) // 10) - 3] + "..."
    cv2.putText(image, text, (x0 + style.pad, y1 - style.pad), FONT, style.font, WHITE, style.thickness, cv2.LINE_AA)


def draw_overlays(image: np.ndarray, tile: CameraTile, rect: Box, overlays: list[Overlay],
                  now: float | None = None) -> list[Placed]:
    """Lay out and paint everything over one tile; returns what was placed (boxes, for tests)."""
    placed = layout(tile, rect, overlays, now)
    for item in placed:
        item.paint(image)
    return placed


def histogram_box(image: np.ndarray) -> Box:
    """The histogram panel's box on a full-frame tile with nothing else at the bottom left (no status line)."""
    h, w = image.shape[:2]
    style = Style.for_height(h)
    pw, ph = _hist_plot_size(style)
    bw, bh = pw + 2 * style.pad + 4, ph + style.line + 2 * style.pad + 4
    return style.margin, h - style.margin - bh, style.margin + bw, h - style.margin


def draw_help(image: np.ndarray, lines: list[str], page: int = 0) -> tuple[int, int]:
    """The key table, centred, at the canvas's scale; as many lines as fit, by pages (h for the next).
    Returns (page shown, pages)."""
    style = Style.for_height(image.shape[0])
    per_page = max(1, (image.shape[0] - 2 * style.margin - style.pad) // style.line - 1)
    body = lines[1:]
    pages = max(1, math.ceil(len(body) / per_page))
    page = min(page, pages - 1)
    shown = [lines[0] + (f"  (page {page + 1}/{pages}: h for more)" if pages > 1 else "")]
    shown += body[page * per_page:(page + 1) * per_page]
    w, h = text_size(shown, style)
    w = min(w, image.shape[1])
    x0 = max(0, (image.shape[1] - w) // 2)
    y0 = max(0, (image.shape[0] - h) // 2)
    draw_text_lines(image, shown, (x0, y0, x0 + w, min(image.shape[0], y0 + h)), style)
    return page, pages
