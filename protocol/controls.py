"""Camera controls a viewer may set, with libcamera's names, the wire type of each, and commands."""

from __future__ import annotations

# name -> (wire type, unit or meaning). Ranges come from the camera (welcome's control_ranges).
CONTROLS: dict[str, tuple[str, str]] = {
    "ExposureTime": ("int", "µs"),
    "AnalogueGain": ("float", "multiplier ≥ 1"),
    "ColourGains": ("pair of float", "(red, blue) gains relative to green"),
    "AeEnable": ("bool", "automatic exposure and gain"),
    "AwbEnable": ("bool", "automatic white balance"),
}

# Commands the agent understands. Long ones send progress events before their final reply.
COMMANDS = (
    "status",
    "get_controls",
    "set_controls",
    "calibrate",
    "cancel",
    "clear_calibration",
    "snapshot",
)
