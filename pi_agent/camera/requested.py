"""The requested set of camera controls, and what a frame's metadata says is in force.

Pure functions on dicts of libcamera control names → values, shared by every backend (the simulator, the
Picamera2 backend) and the agent's commands, so that "what was asked" means the same everywhere.
"""

from __future__ import annotations

from typing import Any

# -- the requested set ---------------------------------------------------------------------------------
# Which manual values each automatic algorithm overrides. libcamera ≥ 0.5 (control_ids_core.yaml;
# src/ipa/rpi/common/ipa_base.cpp applyControls): AeEnable only sets ExposureTimeMode/AnalogueGainMode, and an
# explicit ExposureTime/AnalogueGain in the same request — which picamera2 always sends with
# ExposureTimeMode/AnalogueGainMode Manual (picamera2 #1255, #1269) — wins; the RPi IPA turns AWB to manual for
# any non-zero ColourGains. So a manual value left in the requested set and sent again (with a still, a
# tuning reopen, a restart) silently puts the camera back to manual.
AUTO_OVERRIDES: dict[str, tuple[str, ...]] = {
    "AeEnable": ("ExposureTime", "AnalogueGain"),
    "AwbEnable": ("ColourGains",),
}
_AUTO_VALUE = {"ExposureTime": 0, "AnalogueGain": 0, "ColourGains": (0.0, 0.0)}  # picamera2: "automatic"


def _is_auto_value(name: str, value: Any) -> bool:
    if name == "ColourGains":
        try:
            return tuple(float(v) for v in value) == (0.0, 0.0)
        except TypeError:
            return False
    return name in _AUTO_VALUE and not isinstance(value, bool) and value == 0


def merge_requested(requested: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The requested set after sending `new` on top of `requested` (both libcamera names → values).

    It holds what the camera will do, so it can be sent again as it is (configure, still, reopen):
    turning AeEnable (AwbEnable) on forgets the manual ExposureTime and AnalogueGain (ColourGains) that `new`
    does not itself give; a value of 0 ((0, 0) for ColourGains, picamera2's "automatic") forgets that one
    control. Returns a new dict; the inputs are not changed."""
    out = dict(requested)
    for name, value in new.items():
        if _is_auto_value(name, value):
            out.pop(name, None)
        else:
            out[name] = tuple(value) if isinstance(value, list) else value
    for flag, manual in AUTO_OVERRIDES.items():
        if new.get(flag) is True:
            for name in manual:
                if name not in new:
                    out.pop(name, None)
    return out


def restore_command(current: dict[str, Any], target: dict[str, Any]) -> dict[str, Any]:
    """The controls to send so that a camera whose requested set is `current` ends with exactly `target`.

    `target` itself, plus AeEnable / AwbEnable true where `current` has manual values (or the algorithm off)
    that `target` does not: the camera's default is automatic, and only turning the algorithm on takes the
    manual values back (a requested set cannot "unsend" a control)."""
    send = {k: (tuple(v) if isinstance(v, list) else v) for k, v in target.items()}
    for flag, manual in AUTO_OVERRIDES.items():
        if flag in target or any(name in target for name in manual):
            continue
        if current.get(flag) is False or any(name in current for name in manual):
            send[flag] = True
    return send


# -- what is in force -----------------------------------------------------------------------------------
IN_FORCE_KEYS = ("ExposureTime", "AnalogueGain", "DigitalGain", "ColourGains", "AeEnable", "AwbEnable", "AeState",
                 "AeLocked", "ExposureTimeMode", "AnalogueGainMode", "FrameDuration", "ColourTemperature", "Lux")


def in_force(metadata: dict[str, Any]) -> dict[str, Any]:
    """The control values in force for one frame, from its metadata (libcamera names; absent keys left out)."""
    return {k: metadata[k] for k in IN_FORCE_KEYS if k in metadata}
