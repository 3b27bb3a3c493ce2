"""Value types of the simulated libcamera: Size, Rectangle, Transform, Orientation, ColorSpace, PixelFormat.

Modelled on libcamera's own classes and their Python bindings:
- include/libcamera/geometry.h, src/libcamera/geometry.cpp (boundedToAspectRatio, centeredTo, scaledBy, ...),
  src/py/libcamera/py_geometry.cpp;
- include/libcamera/transform.h, src/libcamera/transform.cpp (transformToString), src/py/libcamera/py_transform.cpp;
- include/libcamera/orientation.h (EXIF values), src/py/libcamera/py_enums.cpp;
- src/libcamera/color_space.cpp (Raw, Sycc, Smpte170m, Rec709, ...), src/py/libcamera/py_color_space.cpp;
- src/py/libcamera/py_main.cpp (PixelFormat from/to string).
Test infrastructure: never imported by picamlink itself.
"""

from __future__ import annotations

import enum


class Size:
    """libcamera.Size(width, height)."""

    def __init__(self, width: int = 0, height: int = 0):
        self.width, self.height = int(width), int(height)

    def __eq__(self, other):
        return isinstance(other, Size) and (self.width, self.height) == (other.width, other.height)

    def __hash__(self):
        return hash((self.width, self.height))

    def __lt__(self, other):  # libcamera: compares width, then height (used to sort streams)
        return (self.width, self.height) < (other.width, other.height)

    def __gt__(self, other):
        return (self.width, self.height) > (other.width, other.height)

    def __str__(self):
        return f"{self.width}x{self.height}"

    __repr__ = __str__

    def bounded_to_aspect_ratio(self, ratio: "Size") -> "Size":
        """geometry.cpp Size::boundedToAspectRatio: the largest size of `ratio`'s aspect inside self."""
        ratio1 = self.width * ratio.height
        ratio2 = ratio.width * self.height
        if ratio1 > ratio2:
            return Size(ratio2 // ratio.height, self.height)
        return Size(self.width, ratio1 // ratio.width)

    def centered_to(self, x: float, y: float) -> "Rectangle":
        """geometry.cpp Size::centeredTo(Point): a rectangle of this size whose centre is (x, y)."""
        return Rectangle(int(x - self.width / 2), int(y - self.height / 2), self.width, self.height)


class Rectangle:
    """libcamera.Rectangle(x, y, width, height)."""

    def __init__(self, x: int = 0, y: int = 0, width: int = 0, height: int = 0):
        if isinstance(x, Size):  # Rectangle(Size)
            x, y, width, height = 0, 0, x.width, x.height
        self.x, self.y, self.width, self.height = int(x), int(y), int(width), int(height)

    def __eq__(self, other):
        return isinstance(other, Rectangle) and self.as_tuple() == other.as_tuple()

    def __hash__(self):
        return hash(self.as_tuple())

    def as_tuple(self) -> tuple[int, int, int, int]:
        return self.x, self.y, self.width, self.height

    @property
    def size(self) -> Size:
        return Size(self.width, self.height)

    @property
    def center(self) -> tuple[float, float]:
        return self.x + self.width / 2, self.y + self.height / 2

    def scaled_by(self, numerator: Size, denominator: Size) -> "Rectangle":
        """geometry.cpp Rectangle::scaledBy (integer arithmetic, as upstream)."""
        return Rectangle(self.x * numerator.width // denominator.width,
                         self.y * numerator.height // denominator.height,
                         self.width * numerator.width // denominator.width,
                         self.height * numerator.height // denominator.height)

    def translated_by(self, dx: int, dy: int) -> "Rectangle":
        return Rectangle(self.x + dx, self.y + dy, self.width, self.height)

    def __str__(self):
        return f"({self.x}, {self.y})/{self.width}x{self.height}"

    __repr__ = __str__


class Transform:
    """libcamera.Transform(hflip=0, vflip=0, transpose=0) or Transform(other): the user's requested flips.

    Raspberry Pi cameras refuse transpose (sensor_->computeTransform adjusts it away), see validate()."""

    def __init__(self, *args, hflip=0, vflip=0, transpose=0, rotation=0):
        if args and isinstance(args[0], Transform):
            other = args[0]
            hflip, vflip, transpose = other.hflip, other.vflip, other.transpose
        elif args:
            raise TypeError("Transform() takes a Transform or keyword flips")
        if rotation:
            if rotation % 360 == 180:
                hflip, vflip = not hflip, not vflip
            elif rotation % 360:
                raise ValueError("only rotations of 0 and 180 are supported here")
        self.hflip, self.vflip, self.transpose = bool(hflip), bool(vflip), bool(transpose)

    def __str__(self):
        # transform.cpp transformToString
        names = {(0, 0, 0): "identity", (1, 0, 0): "hflip", (0, 1, 0): "vflip", (1, 1, 0): "rot180",
                 (0, 0, 1): "transpose", (1, 0, 1): "rot270", (0, 1, 1): "rot90", (1, 1, 1): "rot180-transpose"}
        return names[(int(self.hflip), int(self.vflip), int(self.transpose))]

    def __repr__(self):
        return f"<libcamera.Transform '{self}'>"

    def inverse(self) -> "Transform":
        return Transform(hflip=self.hflip, vflip=self.vflip, transpose=self.transpose)


class Orientation(enum.IntEnum):
    """libcamera.Orientation: the EXIF orientation values (orientation.h)."""

    Rotate0 = 1
    Rotate0Mirror = 2
    Rotate180 = 3
    Rotate180Mirror = 4
    Rotate90Mirror = 5
    Rotate270 = 6
    Rotate270Mirror = 7
    Rotate90 = 8


# (hflip, vflip, transpose) of each orientation relative to Rotate0 (orientation.cpp operator/)
ORIENTATION_FLIPS = {
    Orientation.Rotate0: (0, 0, 0), Orientation.Rotate0Mirror: (1, 0, 0), Orientation.Rotate180Mirror: (0, 1, 0),
    Orientation.Rotate180: (1, 1, 0), Orientation.Rotate90Mirror: (0, 0, 1), Orientation.Rotate270: (1, 0, 1),
    Orientation.Rotate90: (0, 1, 1), Orientation.Rotate270Mirror: (1, 1, 1),
}


class ColorSpace:
    """libcamera.ColorSpace: primaries, transfer function, Y'CbCr encoding, range (color_space.cpp)."""

    class Primaries(enum.IntEnum):
        Raw = 0
        Smpte170m = 1
        Rec709 = 2
        Rec2020 = 3

    class TransferFunction(enum.IntEnum):
        Linear = 0
        Srgb = 1
        Rec709 = 2

    class YcbcrEncoding(enum.IntEnum):
        Null = 0
        Rec601 = 1
        Rec709 = 2
        Rec2020 = 3

    class Range(enum.IntEnum):
        Full = 0
        Limited = 1

    def __init__(self, *args):
        if len(args) == 1 and isinstance(args[0], ColorSpace):
            o = args[0]
            args = (o.primaries, o.transferFunction, o.ycbcrEncoding, o.range)
        self.primaries, self.transferFunction, self.ycbcrEncoding, self.range = args

    @staticmethod
    def Raw():
        C = ColorSpace
        return C(C.Primaries.Raw, C.TransferFunction.Linear, C.YcbcrEncoding.Null, C.Range.Full)

    @staticmethod
    def Srgb():
        C = ColorSpace
        return C(C.Primaries.Rec709, C.TransferFunction.Srgb, C.YcbcrEncoding.Null, C.Range.Full)

    @staticmethod
    def Sycc():
        C = ColorSpace
        return C(C.Primaries.Rec709, C.TransferFunction.Srgb, C.YcbcrEncoding.Rec601, C.Range.Full)

    @staticmethod
    def Smpte170m():
        C = ColorSpace
        return C(C.Primaries.Smpte170m, C.TransferFunction.Rec709, C.YcbcrEncoding.Rec601, C.Range.Limited)

    @staticmethod
    def Rec709():
        C = ColorSpace
        return C(C.Primaries.Rec709, C.TransferFunction.Rec709, C.YcbcrEncoding.Rec709, C.Range.Limited)

    @staticmethod
    def Rec2020():
        C = ColorSpace
        return C(C.Primaries.Rec2020, C.TransferFunction.Rec709, C.YcbcrEncoding.Rec2020, C.Range.Limited)

    def __str__(self):
        for name in ("Raw", "Srgb", "Sycc", "Smpte170m", "Rec709", "Rec2020"):
            ref = getattr(ColorSpace, name)()
            if (self.primaries, self.transferFunction, self.ycbcrEncoding, self.range) == (
                    ref.primaries, ref.transferFunction, ref.ycbcrEncoding, ref.range):
                return name
        return f"{self.primaries.name}/{self.transferFunction.name}/{self.ycbcrEncoding.name}/{self.range.name}"

    __repr__ = __str__


class PixelFormat:
    """libcamera.PixelFormat, named as libcamera's formats.yaml names it (SBGGR12_CSI2P, RGB888, ...)."""

    def __init__(self, name: "str | PixelFormat" = ""):
        self.name = str(name)

    def isValid(self) -> bool:
        return bool(self.name)

    def __eq__(self, other):
        return isinstance(other, PixelFormat) and other.name == self.name

    def __hash__(self):
        return hash(self.name)

    def __str__(self):
        return self.name

    def __repr__(self):
        return f"libcamera.PixelFormat('{self.name}')"
