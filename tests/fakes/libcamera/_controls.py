"""Control and property identifiers of the simulated libcamera (`libcamera.controls`, `libcamera.properties`).

Names, types and enum values follow src/libcamera/control_ids_core.yaml, control_ids_draft.yaml,
control_ids_rpi.yaml and property_ids_core.yaml / property_ids_draft.yaml; the Python shapes follow
src/py/libcamera/py_main.cpp (ControlId: id, name, vendor, type, isArray, size; ControlInfo: min, max, default,
values) and py_helpers.cpp (array values come back as tuples, floats pass through a C float).
"""

from __future__ import annotations

import enum
import types

import numpy as np

from ._geometry import Rectangle, Size


class ControlType(enum.IntEnum):
    """libcamera.ControlType (py_enums.cpp)."""

    Null = 0
    Bool = 1
    Byte = 2
    Integer32 = 3
    Integer64 = 4
    Float = 5
    String = 6
    Rectangle = 7
    Size = 8
    Point = 9


class ControlId:
    """libcamera.ControlId: hashable by identity, like the pybind object of a static ControlId."""

    def __init__(self, id: int, name: str, type: ControlType, vendor: str = "libcamera", size: int = 0):
        self.id, self.name, self.type, self.vendor, self.size = id, name, type, vendor, size

    @property
    def isArray(self) -> bool:
        return self.size != 0

    def __str__(self):
        return self.name

    def __repr__(self):
        return f"libcamera.ControlId({self.id}, {self.vendor}.{self.name}, {self.type})"


class ControlInfo:
    """libcamera.ControlInfo(min, max, default) or a list of allowed values."""

    def __init__(self, min=None, max=None, default=None, values=None):
        self.min, self.max, self.default = min, max, default
        self.values = list(values or [])

    def __repr__(self):
        return f"libcamera.ControlInfo([{self.min}..{self.max}])"


def to_control_value(cid: ControlId, value):
    """What C++ would store for a Python value (py_helpers.cpp pyToControlValue): ints truncated to int32/64,
    floats to C float, Rectangles and Sizes kept, arrays as tuples. Raises TypeError/ValueError like pybind."""
    t = cid.type

    def one(v):
        if t == ControlType.Bool:
            return bool(v)
        if t in (ControlType.Integer32, ControlType.Integer64, ControlType.Byte):
            if isinstance(v, float) and not v.is_integer():
                raise TypeError(f"{cid.name}: an integer is required, got {v!r}")
            return int(v)
        if t == ControlType.Float:
            return float(np.float32(v))
        if t == ControlType.Rectangle:
            if not isinstance(v, Rectangle):
                raise TypeError(f"{cid.name}: a libcamera.Rectangle is required, got {type(v).__name__}")
            return v
        if t == ControlType.Size:
            if not isinstance(v, Size):
                raise TypeError(f"{cid.name}: a libcamera.Size is required")
            return v
        return v

    if isinstance(value, (list, tuple)):
        return tuple(one(v) for v in value)
    return one(value)


_next_id = [1]


def _ns(name: str) -> types.SimpleNamespace:
    return types.SimpleNamespace(__name__=name)


def _add(ns, name: str, type_: ControlType, size: int = 0, vendor: str = "libcamera", enum_values=None):
    cid = ControlId(_next_id[0], name, type_, vendor, size)
    _next_id[0] += 1
    setattr(ns, name, cid)
    if enum_values:
        setattr(ns, name + "Enum", enum.IntEnum(name + "Enum", enum_values))
        for k, v in enum_values.items():  # e.g. controls.ExposureTimeModeManual
            setattr(ns, name + k if not k.startswith(name) else k, v)
    return cid


I32, I64, F, B, R, S, STR = (ControlType.Integer32, ControlType.Integer64, ControlType.Float, ControlType.Bool,
                             ControlType.Rectangle, ControlType.Size, ControlType.String)

controls = _ns("libcamera.controls")
controls.draft = _ns("libcamera.controls.draft")
controls.rpi = _ns("libcamera.controls.rpi")
properties = _ns("libcamera.properties")
properties.draft = _ns("libcamera.properties.draft")

# control_ids_core.yaml
_add(controls, "AeEnable", B)
_add(controls, "AeState", I32, enum_values={"Idle": 0, "Searching": 1, "Converged": 2})
_add(controls, "AeMeteringMode", I32, enum_values={"MeteringCentreWeighted": 0, "MeteringSpot": 1,
                                                   "MeteringMatrix": 2, "MeteringCustom": 3})
_add(controls, "AeConstraintMode", I32, enum_values={"ConstraintNormal": 0, "ConstraintHighlight": 1,
                                                     "ConstraintShadows": 2, "ConstraintCustom": 3})
_add(controls, "AeExposureMode", I32, enum_values={"ExposureNormal": 0, "ExposureShort": 1, "ExposureLong": 2,
                                                   "ExposureCustom": 3})
_add(controls, "ExposureValue", F)
_add(controls, "ExposureTime", I32)
_add(controls, "ExposureTimeMode", I32, enum_values={"Auto": 0, "Manual": 1})
_add(controls, "AnalogueGain", F)
_add(controls, "AnalogueGainMode", I32, enum_values={"Auto": 0, "Manual": 1})
_add(controls, "AeFlickerMode", I32, enum_values={"FlickerOff": 0, "FlickerManual": 1, "FlickerAuto": 2})
_add(controls, "AeFlickerPeriod", I32)
_add(controls, "Brightness", F)
_add(controls, "Contrast", F)
_add(controls, "Lux", F)
_add(controls, "AwbEnable", B)
_add(controls, "AwbMode", I32, enum_values={"AwbAuto": 0, "AwbIncandescent": 1, "AwbTungsten": 2,
                                            "AwbFluorescent": 3, "AwbIndoor": 4, "AwbDaylight": 5, "AwbCloudy": 6,
                                            "AwbCustom": 7})
_add(controls, "AwbLocked", B)
_add(controls, "ColourGains", F, size=2)
_add(controls, "ColourTemperature", I32)
_add(controls, "Saturation", F)
_add(controls, "SensorBlackLevels", I32, size=4)
_add(controls, "Sharpness", F)
_add(controls, "FocusFoM", I32)
_add(controls, "ColourCorrectionMatrix", F, size=9)
_add(controls, "ScalerCrop", R)
_add(controls, "DigitalGain", F)
_add(controls, "FrameDuration", I64)
_add(controls, "FrameDurationLimits", I64, size=2)
_add(controls, "SensorTemperature", F)
_add(controls, "SensorTimestamp", I64)
_add(controls, "AfMode", I32, enum_values={"Manual": 0, "Auto": 1, "Continuous": 2})
_add(controls, "AfTrigger", I32, enum_values={"Start": 0, "Cancel": 1})
_add(controls, "AfState", I32, enum_values={"Idle": 0, "Scanning": 1, "Focused": 2, "Failed": 3})
_add(controls, "LensPosition", F)
_add(controls, "HdrMode", I32, enum_values={"HdrModeOff": 0, "HdrModeMultiExposureUnmerged": 1,
                                            "HdrModeMultiExposure": 2, "HdrModeSingleExposure": 3,
                                            "HdrModeNight": 4})
_add(controls, "FrameWallClock", I64)
# control_ids_draft.yaml
_add(controls.draft, "NoiseReductionMode", I32, vendor="draft",
     enum_values={"Off": 0, "Fast": 1, "HighQuality": 2, "Minimal": 3, "ZSL": 4})
# control_ids_rpi.yaml
_add(controls.rpi, "ScalerCrops", R, size=-1, vendor="rpi")

# property_ids_core.yaml / property_ids_draft.yaml
_add(properties, "Location", I32)
_add(properties, "Rotation", I32)
_add(properties, "Model", STR)
_add(properties, "UnitCellSize", S)
_add(properties, "PixelArraySize", S)
_add(properties, "PixelArrayActiveAreas", R, size=-1)
_add(properties, "ScalerCropMaximum", R)
_add(properties, "SensorSensitivity", F)
_add(properties, "SystemDevices", I64, size=-1)
_add(properties.draft, "ColorFilterArrangement", I32, vendor="draft",
     enum_values={"RGGB": 0, "GRBG": 1, "GBRG": 2, "BGGR": 3, "RGB": 4, "MONO": 5})


def control_by_name(name: str) -> ControlId:
    for ns in (controls, controls.draft, controls.rpi):
        cid = getattr(ns, name, None)
        if isinstance(cid, ControlId):
            return cid
    raise KeyError(name)


def property_by_name(name: str) -> ControlId:
    for ns in (properties, properties.draft):
        cid = getattr(ns, name, None)
        if isinstance(cid, ControlId):
            return cid
    raise KeyError(name)
