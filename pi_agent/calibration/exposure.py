"""Exposure and analogue gain from raw: put the black-subtracted 99.9th percentile on the target.

Statistic and target: `level` is the 99.9th percentile of the four Bayer planes pooled, black level
subtracted, from the frame's histogram. The target is given like the sensor facts and the OpenFlexure
figures, as a raw white level WITH the pedestal (700 IMX219, 2800 IMX477); it is compared on the same
black-subtracted scale, i.e. level → target − black (636 / 2544), ±tolerance of that.

Why it converges in a few measurements where the published loop takes 3–10: the raw signal is linear in
exposure × gain, so one unclipped measurement gives the answer (with the noise tail modelled, see
levels.py); a clipped one steps down by a factor derived from how much of the frame is clipped; each
change is measured on the first frame whose metadata shows it, never after a fixed pause. Exposure is
preferred up to what the streaming mode reproduces (its frame duration), then gain; both are chosen
among the values the sensor can really take (whole lines, gain codes).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

from .frames import CalibrationError, FrameSource, SensorControls, settle
from .levels import signal_model

log = logging.getLogger(__name__)

Progress = Callable[[str, float, dict], None]

CLIP_FRACTION = 0.001  # more pixels than this at white: the percentile is clipped


@dataclass
class ExposureSettings:
    target: float | None = None  # raw white level incl. pedestal; None: the sensor's target_white_level
    tolerance: float = 0.05
    percentile: float = 99.9
    max_measurements: int = 6


def plan(product_us: float, controls: SensorControls, metadata: dict) -> tuple[int, float]:
    """(ExposureTime µs, AnalogueGain) nearest to an exposure × gain product: exposure first, up to the
    stream's limit, in whole lines; the remainder as the nearest gain code."""
    t_min, t_max = controls.exposure_range(metadata)
    g_min, g_max = controls.gain_range()
    lines_max = max(controls.lines(t_max), 1)
    lines_min = controls.lines(t_min)
    wanted_lines = product_us / g_min / controls.line_time_us
    # whole lines at or below the wanted exposure; the remainder (< one line) is made up by a gain code
    lines = max(lines_min, min(lines_max, math.floor(wanted_lines + 1e-9)))
    exposure = controls.exposure_of_lines(lines)
    gain = product_us / (lines * controls.line_time_us)
    gain = controls.nearest_gain(min(max(gain, g_min), g_max))
    return exposure, gain


def _product(metadata: dict) -> float:
    return float(metadata["ExposureTime"]) * float(metadata.get("AnalogueGain", 1.0))


def calibrate_exposure(source: FrameSource, settings: ExposureSettings | None = None,
                       progress: Progress = lambda step, fraction, detail: None,
                       check_cancelled: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """Converge ExposureTime and AnalogueGain (AeEnable off); returns the report (see module docstring)."""
    settings = settings or ExposureSettings()
    camera = source.camera
    sensor = camera.sensor
    controls = SensorControls(camera)
    started = time.monotonic()
    source.reset_count()
    frame, stats = source.next()
    black = frame.black_level
    white = (1 << frame.bit_depth) - 1 - black
    target_raw = float(settings.target if settings.target is not None else sensor.target_white_level)
    if frame.bit_depth != sensor.bit_depth and settings.target is None:
        target_raw = target_raw * ((1 << frame.bit_depth) - 1) / sensor.white_level
    target = target_raw - black
    if not (0 < target * (1 + settings.tolerance) < white):
        raise CalibrationError(f"target white level {target_raw:g} must lie between the black level {black} and "
                               f"white {white + black} with room for the ±{settings.tolerance:.0%} tolerance")
    # freeze the AGC at what is in force now, so that only our requests move the exposure
    camera.set_controls({"AeEnable": False, "ExposureTime": int(frame.metadata["ExposureTime"]),
                         "AnalogueGain": float(frame.metadata.get("AnalogueGain", 1.0))})
    measurements: list[dict] = []
    reason = "max_measurements"
    converged = False
    while True:
        check_cancelled()
        md = frame.metadata
        level = stats.pooled_level_at(settings.percentile)
        clipped = float(stats.histograms[:, -1].sum() / max(stats.pixels.sum(), 1))
        measurements.append({"ExposureTime": int(md["ExposureTime"]), "AnalogueGain": round(float(md.get("AnalogueGain", 1.0)), 4),
                             "level": round(level, 2), "clipped": round(clipped, 5), "frame": frame.sequence})
        progress("exposure", min(0.95, len(measurements) / 4),
                 {"level": round(level, 1), "target": target, "ExposureTime": int(md["ExposureTime"]),
                  "AnalogueGain": round(float(md.get("AnalogueGain", 1.0)), 3)})
        if abs(level - target) <= settings.tolerance * target and clipped < CLIP_FRACTION:
            converged, reason = True, "converged"
            break
        if len(measurements) >= settings.max_measurements:
            break
        product = _product(md)
        if clipped >= CLIP_FRACTION or level >= white - 0.5:
            # clipped: the percentile says nothing; step down more the more of the frame sits at white
            factor = (white / target) * (1000.0 * clipped) ** 0.66
            new_product = product / min(max(factor, 1.5), 150.0)
        else:
            model = signal_model(frame.raw, frame.bayer_order, frame.bit_depth, black)
            new_product = product * _scale_with_gain(model, target, settings, product, controls, md)
        exposure, gain = plan(new_product, controls, md)
        same = (controls.lines(exposure) == controls.lines(md["ExposureTime"])
                and abs(gain - float(md.get("AnalogueGain", 1.0))) < 1e-6)
        if same:
            t_min, t_max = controls.exposure_range(md)
            reason = ("too_bright_at_minimum" if new_product < product else "too_dark_at_maximum")
            log.warning("exposure: %s (level %.1f, target %.1f)", reason, level, target)
            break
        camera.set_controls({"AeEnable": False, "ExposureTime": exposure, "AnalogueGain": gain})
        frame, stats = settle(source, {"ExposureTime": exposure, "AnalogueGain": gain}, controls, check_cancelled)
    md = frame.metadata
    progress("exposure", 1.0, {"level": round(level, 1), "target": target, "reason": reason})
    report = {
        "level": round(level, 2),
        "target": round(target, 2),
        "target_white_level": target_raw,
        "black_level": black,
        "tolerance": settings.tolerance,
        "percentile": settings.percentile,
        "measurements": len(measurements),
        "frames": source.frames,
        "seconds": round(time.monotonic() - started, 3),
        "ExposureTime": int(md["ExposureTime"]),
        "AnalogueGain": float(md.get("AnalogueGain", 1.0)),
        "converged": converged,
        "reason": reason,
        "history": measurements,
    }
    log.info("exposure: %s after %d measurements, %d frames: level %.1f (target %.1f), %d µs × %.3f",
             reason, len(measurements), source.frames, level, target, report["ExposureTime"], report["AnalogueGain"])
    return report


def _scale_with_gain(model, target: float, settings: ExposureSettings, product: float,
                     controls: SensorControls, metadata: dict) -> float:
    """Solve for the exposure × gain multiplier, letting the noise model know how much of it will be gain."""
    fraction = 1.0 - settings.percentile / 100.0
    gain_now = float(metadata.get("AnalogueGain", 1.0))
    scale = model.scale_for(target, fraction)
    for _ in range(2):  # the split into exposure and gain changes the noise a little: refine once or twice
        _, gain = plan(product * scale, controls, metadata)
        scale = model.scale_for(target, fraction, gain_ratio=gain / gain_now)
    return scale
