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

# Commands the agent understands, each with the argument names it accepts (docs/protocol.md, Commands).
# Any other argument name is refused with `bad_argument`: a misspelt option must not be silently ignored.
# Long commands send progress messages before their final reply.
COMMAND_ARGS: dict[str, frozenset[str]] = {
    "status": frozenset(),
    "get_controls": frozenset(),
    "set_controls": frozenset({"controls"}),
    "calibrate": frozenset({"what", "target", "tolerance", "percentile"}),
    "cancel": frozenset({"id"}),
    "clear_calibration": frozenset(),
    "snapshot": frozenset({"quality", "raw", "full_resolution"}),
}
COMMANDS = tuple(COMMAND_ARGS)
