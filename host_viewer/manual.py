"""Manual exposure and gain from keys: steps of a third of a stop, clamped to the camera's ranges."""

from __future__ import annotations

STOP_FRACTION = 3  # steps per stop: each key press multiplies by 2 ** (1/3)


def _clamp(value: float, ranges: dict, name: str) -> float:
    bounds = ranges.get(name)
    if bounds:
        low, high = bounds[0], bounds[1]
        if low is not None:
            value = max(value, low)
        if high is not None:
            value = min(value, high)
    return value


def stepped_exposure(current_us: float, steps: int, ranges: dict) -> int:
    """ExposureTime after `steps` thirds of a stop (negative: darker), in whole µs within range."""
    value = float(current_us) * 2.0 ** (steps / STOP_FRACTION)
    return int(round(_clamp(value, ranges, "ExposureTime")))


def stepped_gain(current: float, steps: int, ranges: dict) -> float:
    """AnalogueGain after `steps` thirds of a stop, within range (never below 1)."""
    value = float(current) * 2.0 ** (steps / STOP_FRACTION)
    return round(max(1.0, _clamp(value, ranges, "AnalogueGain")), 4)
