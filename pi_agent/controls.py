"""Checking control values a viewer sends against their type and the camera's ranges.

A bad value gets a CommandError that says which control, what was wrong and what is allowed; nothing is
applied unless every value in the request is valid.
"""

from __future__ import annotations

from typing import Any

from protocol import ErrorCode

from .camera.sensors import SENSORS
from .camera.requested import AUTO_OVERRIDES, in_force, merge_requested, restore_command  # noqa: F401 - re-exported
from .errors import CommandError

SETTABLE = ("ExposureTime", "AnalogueGain", "ColourGains", "AeEnable", "AwbEnable")
# Bounds that hold whatever the camera (a saved file is checked before any camera is open): the longest
# exposure of any sensor modelled here; and no manual value of 0, which libcamera reads as "automatic"
# (ipa_base.cpp: AWB goes manual only for non-zero ColourGains) and would silently change the mode.
MAX_EXPOSURE_US = max(info.exposure_max_us for info in SENSORS.values())
_AUTO_HINT = {"ExposureTime": "AeEnable", "AnalogueGain": "AeEnable", "ColourGains": "AwbEnable"}


def _manual(name: str, value: float) -> None:
    if value <= 0:
        raise CommandError(ErrorCode.OUT_OF_RANGE, f"{name} {value:g} must be above 0 (0 would mean automatic in "
                                                   f"libcamera; send {_AUTO_HINT[name]} true for that)")
    if name == "ExposureTime" and value > MAX_EXPOSURE_US:
        raise CommandError(ErrorCode.OUT_OF_RANGE,
                           f"ExposureTime {value:g} µs is longer than any camera exposes ({MAX_EXPOSURE_US:.0f} µs)")


def _number(name: str, value: Any, integer: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = "an integer" if integer else "a number"
        raise CommandError(ErrorCode.BAD_ARGUMENT, f"{name} must be {kind}, not {type(value).__name__}")
    if integer and isinstance(value, float) and not value.is_integer():
        raise CommandError(ErrorCode.BAD_ARGUMENT, f"{name} must be a whole number of µs, not {value}")
    if value != value or value in (float("inf"), float("-inf")):
        raise CommandError(ErrorCode.BAD_ARGUMENT, f"{name} must be finite")
    return value


def _in_range(name: str, value: float, ranges: dict, unit: str = "") -> None:
    if name not in ranges:
        return
    low, high = ranges[name][0], ranges[name][1]
    if (low is not None and value < low) or (high is not None and value > high):
        raise CommandError(
            ErrorCode.OUT_OF_RANGE, f"{name} {value}{unit} is outside the camera's range {low}..{high}{unit}"
        )


def validate_controls(requested: Any, ranges: dict[str, tuple]) -> dict[str, Any]:
    """Return the checked controls ready for `CameraBackend.set_controls`, or raise CommandError.

    Like picamera2, a manual ExposureTime or AnalogueGain turns AeEnable off and manual ColourGains turn
    AwbEnable off, unless the request says otherwise.
    """
    if not isinstance(requested, dict) or not requested:
        raise CommandError(ErrorCode.BAD_ARGUMENT, "set_controls needs a non-empty map 'controls' of name → value")
    checked: dict[str, Any] = {}
    for name, value in requested.items():
        if name not in SETTABLE:
            raise CommandError(
                ErrorCode.BAD_ARGUMENT, f"unknown or read-only control {str(name)[:40]!r}; settable: {', '.join(SETTABLE)}"
            )
        if name == "ExposureTime":
            _manual(name, _number(name, value, integer=True))
            value = int(value)
            _in_range(name, value, ranges, " µs")
        elif name == "AnalogueGain":
            value = float(_number(name, value, integer=False))
            _manual(name, value)
            _in_range(name, value, ranges)
        elif name == "ColourGains":
            if not isinstance(value, (list, tuple)) or len(value) != 2:
                raise CommandError(ErrorCode.BAD_ARGUMENT, "ColourGains must be a pair [red_gain, blue_gain]")
            value = tuple(float(_number(name, v, integer=False)) for v in value)
            for v in value:
                _manual(name, v)
                _in_range(name, v, ranges)
        else:  # AeEnable, AwbEnable
            if not isinstance(value, bool):
                raise CommandError(ErrorCode.BAD_ARGUMENT, f"{name} must be true or false")
        checked[name] = value
    if ("ExposureTime" in checked or "AnalogueGain" in checked) and "AeEnable" not in checked:
        checked["AeEnable"] = False
    if "ColourGains" in checked and "AwbEnable" not in checked:
        checked["AwbEnable"] = False
    return checked

