"""Sensor facts as data: one table that the simulator, the Picamera2 backend and calibration all read.

Why data and not code: the same numbers (bit depth, black level, gain code formula, control delays, modes)
decide how raw is interpreted, how controls are quantised and what calibration aims for; keeping them in
one frozen table stops the simulator and the real backend from drifting apart. Sources:
shared/reference/calibration.md §1 and picamera2.md §2/§5/§8; where no published figure exists (full well,
read noise of IMX219/IMX708/OV5647, line times) the value is a documented, realistic estimate.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

logger = logging.getLogger(__name__)

_EPS = 1e-9
MONO = "MONO"  # the "Bayer order" of a monochrome sensor (libcamera: ColorFilterArrangement MONO, raw R8/R10/R12)


@dataclass(frozen=True)
class SensorMode:
    """One sensor readout mode.

    size: output (w, h) of the mode; crop: (x, y, w, h) on the full pixel array that the mode reads;
    binning: 1 (full resolution), 2 (2x2 binned), ...; line_time_us: time of one line, the exposure quantum.
    """

    size: tuple[int, int]
    bit_depth: int
    fps_max: float
    crop: tuple[int, int, int, int]
    binning: int
    line_time_us: float

    @property
    def min_frame_duration_us(self) -> float:
        return 1e6 / self.fps_max


@dataclass(frozen=True)
class SensorInfo:
    """The facts of one sensor.

    black_level: pedestal in raw units at `bit_depth`.
    target_white_level: the default target of exposure calibration — the level (pedestal included, raw units)
      that the 99.9th percentile of the raw image should reach: 700 for IMX219, 2800 for IMX477 (the
      OpenFlexure figures, calibration.md §2); ≈ 68 % of white for the others.
    exposure_delay / gain_delay / vblank_delay: frames between requesting a value and the first frame
      exposed with it.
    full_well_e / read_noise_e: electrons at gain 1 (the simulator's physics).
    gain_code: ("inverse", K, code_max) for gain = K/(K−c), ("linear", 16, code_max) for gain = c/16, or
      ("log", 200, code_max) for gain = 10^(c/200) (0.1 dB steps, IMX296).
    bayer_order: the 2x2 colour cell ("BGGR", ...), or MONO for a monochrome sensor (no colour filter:
      raw formats R8/R10/R12, one histogram, no white balance, libcamera loads `<model>_mono.json`).
    """

    model: str
    bayer_order: str
    bit_depth: int
    black_level: int
    target_white_level: int
    full_array: tuple[int, int]
    modes: tuple[SensorMode, ...]
    exposure_delay: int
    gain_delay: int
    vblank_delay: int
    gain_min: float
    gain_max: float
    full_well_e: float
    read_noise_e: float
    exposure_min_us: float
    unit_cell_nm: int
    gain_code: tuple[str, int, int] = ("inverse", 256, 232)
    exposure_max_us: float = 10_000_000.0

    @property
    def white_level(self) -> int:
        return 2**self.bit_depth - 1

    @property
    def is_mono(self) -> bool:
        return self.bayer_order == MONO

    # -- analogue gain --------------------------------------------------------------------------------
    def _gain_of_code(self, code: int) -> float:
        kind, k, _ = self.gain_code
        if kind == "log":
            return 10.0 ** (code / k)
        return k / (k - code) if kind == "inverse" else code / k

    def _code_of_gain(self, gain: float) -> int:
        """libcamera's gainCode: truncation, so the achieved gain never exceeds the request."""
        kind, k, code_max = self.gain_code
        if kind == "log":
            code = math.floor(k * math.log10(gain) + _EPS)
        else:
            code = math.floor(k - k / gain + _EPS) if kind == "inverse" else math.floor(gain * k + _EPS)
        return max(0, min(code_max, code))

    def quantise_gain(self, gain: float) -> float:
        """The analogue gain the sensor really applies for a request: clamped to [gain_min, gain_max], then
        truncated to a gain code (achieved ≤ requested, except that gain_min itself is always reachable)."""
        g = min(max(float(gain), self.gain_min), self.gain_max)
        code = self._code_of_gain(g)
        achieved = self._gain_of_code(code)
        if achieved < self.gain_min - _EPS:  # truncation fell below the bottom of the range: smallest legal code
            code_min = self._code_of_gain(self.gain_min)
            while self._gain_of_code(code_min) < self.gain_min - 1e-6:
                code_min += 1
            achieved = self._gain_of_code(code_min)
        return float(achieved)

    # -- exposure -------------------------------------------------------------------------------------
    def exposure_lines(self, us: float, mode: SensorMode) -> int:
        """Whole lines for an exposure request (floor, at least one line and at least exposure_min_us)."""
        min_lines = max(1, math.ceil(self.exposure_min_us / mode.line_time_us - _EPS))
        return max(min_lines, math.floor(float(us) / mode.line_time_us + 1e-6))

    def quantise_exposure(self, us: float, mode: SensorMode) -> int:
        """ExposureTime as reported for a request: whole lines (floor, ≥ 1 line), as integer µs.

        The integer is rounded up from lines × line_time so that quantising a reported value again gives
        the same value (idempotent); the difference from the true exposure is < 1 µs."""
        lines = self.exposure_lines(us, mode)
        return int(math.ceil(lines * mode.line_time_us - 1e-6))

    # -- modes ----------------------------------------------------------------------------------------
    def full_field(self, mode: SensorMode) -> bool:
        return mode.crop == (0, 0, self.full_array[0], self.full_array[1])

    @property
    def full_resolution_mode(self) -> SensorMode:
        """The largest mode (ties: the deeper one), what a full-resolution still is taken in; picamera2's
        `sensor_resolution` / `sensor_format` pick the same."""
        return max(self.modes, key=lambda m: (m.size[0] * m.size[1], m.bit_depth))

    def choose_mode(self, size: tuple[int, int], fps: float) -> SensorMode:
        """The mode for a main stream of `size` at `fps` (0: any rate).

        Rule: among modes whose fps_max ≥ fps and whose output covers `size` (w and h), prefer the ones that
        see the full field of view (binned full-array modes — what a user expects from a "640x480" stream,
        unlike picamera2's cropped-mode pitfall), then the fewest pixels (cheapest readout). If none covers the
        size at that rate, take the largest mode that reaches the rate; if none reaches the rate, the fastest
        mode that covers the size; failing all, the largest mode.
        """
        w, h = size
        fast = [m for m in self.modes if fps <= 0 or m.fps_max + 1e-6 >= fps]
        ok = [m for m in fast if m.size[0] >= w and m.size[1] >= h]
        if ok:
            return min(ok, key=lambda m: (not self.full_field(m), m.size[0] * m.size[1]))
        logger.warning("%s: no mode gives %dx%d at %.2f fps; choosing the nearest", self.model, w, h, fps)
        if fast:
            return max(fast, key=lambda m: m.size[0] * m.size[1])
        covering = [m for m in self.modes if m.size[0] >= w and m.size[1] >= h]
        if covering:
            return max(covering, key=lambda m: m.fps_max)
        return max(self.modes, key=lambda m: m.size[0] * m.size[1])

    def describe_modes(self) -> str:
        """The modes as a user reads them: "640x480 (cropped) 10-bit up to 206.65 fps, ...", smallest first."""
        parts = []
        for m in sorted(self.modes, key=lambda m: (m.size[0] * m.size[1], m.bit_depth)):
            crop = "" if self.full_field(m) else " (cropped)"
            parts.append(f"{m.size[0]}x{m.size[1]}{crop} {m.bit_depth}-bit up to {m.fps_max:g} fps")
        return ", ".join(parts)

    @property
    def fps_min(self) -> float:
        """The slowest frame rate: one frame of the longest exposure the sensor allows."""
        return 1e6 / self.exposure_max_us

    def mode_for(self, size: tuple[int, int], fps: float, raw_size: tuple[int, int] | None = None) -> SensorMode:
        """The mode for a main stream of `size` at `fps` (`raw_size`: that mode exactly), or ValueError naming
        the camera's own limits (its modes and rates, its longest frame) when it cannot be met."""
        n = len(self.modes)
        listed = f"the {self.model} lists {n} mode{'s' if n != 1 else ''}: {self.describe_modes()}"
        if fps > 0 and fps < self.fps_min * (1 - 1e-6):
            raise ValueError(f"{fps:g} fps is slower than the {self.model} can go: its longest frame is "
                             f"{self.exposure_max_us / 1e6:.3g} s ({self.fps_min:.3g} fps)")
        try:
            mode = self.mode_of_size(raw_size) if raw_size is not None else self.choose_mode(size, fps)
        except ValueError as exc:
            raise ValueError(f"{exc}; {listed}") from None
        if fps > mode.fps_max + 1e-6:
            raise ValueError(f"{size[0]}x{size[1]} at {fps:g} fps is more than the camera can do; {listed}")
        return mode

    def mode_of_size(self, size: tuple[int, int]) -> SensorMode:
        for m in self.modes:
            if tuple(m.size) == tuple(size):
                return m
        raise ValueError(
            f"{self.model} has no sensor mode of size {size[0]}x{size[1]}; "
            f"modes are {', '.join(f'{m.size[0]}x{m.size[1]}' for m in self.modes)}"
        )


def _mode(size, bits, fps, crop, binning, vblank_lines: int = 32, line_time_us: float | None = None) -> SensorMode:
    """A mode whose line time follows from its maximum rate: frame = (h + minimum vertical blanking) lines.
    For IMX219 full resolution this gives 18.9 µs/line, the published figure. `line_time_us` overrides it
    where the sensor's helper states it."""
    line_time = line_time_us or 1e6 / (fps * (size[1] + vblank_lines))
    return SensorMode(tuple(size), bits, fps, tuple(crop), binning, round(line_time, 4))


_IMX296 = SensorInfo(
    model="imx296", bayer_order="RGGB", bit_depth=10, black_level=60, target_white_level=700,
    full_array=(1456, 1088),
    modes=(_mode((1456, 1088), 10, 60.38, (0, 0, 1456, 1088), 1, line_time_us=550 / 37.125),),
    exposure_delay=2, gain_delay=2, vblank_delay=2, gain_min=1.0, gain_max=10 ** (239 / 200),
    full_well_e=10000.0, read_noise_e=2.2, exposure_min_us=29.0, unit_cell_nm=3450,
    gain_code=("log", 200, 239), exposure_max_us=15_534_385.0,
)

SENSORS: dict[str, SensorInfo] = {
    "imx219": SensorInfo(
        model="imx219", bayer_order="BGGR", bit_depth=10, black_level=64, target_white_level=700,
        full_array=(3280, 2464),
        modes=(
            _mode((640, 480), 10, 206.65, (1000, 752, 1280, 960), 2),
            _mode((1640, 1232), 10, 41.85, (0, 0, 3280, 2464), 2),
            _mode((1920, 1080), 10, 47.57, (680, 692, 1920, 1080), 1),
            _mode((3280, 2464), 10, 21.19, (0, 0, 3280, 2464), 1),
        ),
        exposure_delay=2, gain_delay=1, vblank_delay=2, gain_min=1.0, gain_max=256 / (256 - 232),
        full_well_e=4500.0, read_noise_e=2.5, exposure_min_us=13.0, unit_cell_nm=1120,
        gain_code=("inverse", 256, 232), exposure_max_us=11_767_556.0,
    ),
    "imx477": SensorInfo(
        model="imx477", bayer_order="BGGR", bit_depth=12, black_level=256, target_white_level=2800,
        full_array=(4056, 3040),
        modes=(
            _mode((1332, 990), 10, 120.05, (696, 528, 2664, 1980), 2),
            _mode((2028, 1080), 12, 50.03, (0, 440, 4056, 2160), 2),
            _mode((2028, 1520), 12, 40.01, (0, 0, 4056, 3040), 2),
            _mode((4056, 3040), 12, 10.00, (0, 0, 4056, 3040), 1),
        ),
        exposure_delay=2, gain_delay=2, vblank_delay=3, gain_min=1.0, gain_max=1024 / (1024 - 978),
        full_well_e=8180.0, read_noise_e=3.0, exposure_min_us=31.0, unit_cell_nm=1550,
        gain_code=("inverse", 1024, 978), exposure_max_us=694_434_742.0,
    ),
    "imx708": SensorInfo(
        model="imx708", bayer_order="RGGB", bit_depth=10, black_level=64, target_white_level=700,
        full_array=(4608, 2592),
        modes=(
            _mode((1536, 864), 10, 120.13, (768, 432, 3072, 1728), 2),
            _mode((2304, 1296), 10, 56.03, (0, 0, 4608, 2592), 2),
            _mode((4608, 2592), 10, 14.35, (0, 0, 4608, 2592), 1),
        ),
        exposure_delay=2, gain_delay=2, vblank_delay=3, gain_min=1.12, gain_max=16.0,
        full_well_e=6000.0, read_noise_e=2.0, exposure_min_us=26.0, unit_cell_nm=1400,
        gain_code=("inverse", 1024, 960), exposure_max_us=220_416_802.0,
    ),
    "ov5647": SensorInfo(
        model="ov5647", bayer_order="GBRG", bit_depth=10, black_level=16, target_white_level=700,
        full_array=(2592, 1944),
        modes=(
            _mode((640, 480), 10, 58.92, (16, 0, 2560, 1920), 4),
            _mode((1296, 972), 10, 46.34, (0, 0, 2592, 1944), 2),
            _mode((1920, 1080), 10, 32.81, (336, 432, 1920, 1080), 1),
            _mode((2592, 1944), 10, 15.63, (0, 0, 2592, 1944), 1),
        ),
        exposure_delay=2, gain_delay=2, vblank_delay=2, gain_min=1.0, gain_max=1023 / 16,
        full_well_e=4300.0, read_noise_e=4.5, exposure_min_us=16.0, unit_cell_nm=1400,
        gain_code=("linear", 16, 1023), exposure_max_us=3_066_985.0,
    ),
    # Global shutter sensors. Sources (raspberrypi/libcamera): src/ipa/rpi/cam_helper/cam_helper_imx296.cpp
    # (gain 10^(code/200), code ≤ 239; line 550 / 37.125 MHz = 14.815 µs, exposure = lines × line + 14.26 µs,
    # frame − integration ≥ 4 lines), cam_helper_ov9281.cpp (gain = code/16; frame − integration ≥ 25 lines),
    # src/libcamera/sensor/camera_sensor_properties.cpp (unit cells 3450 / 3000 nm; exposure, gain and vblank
    # delays 2/2/2 for both), the tuning files src/ipa/rpi/{vc4,pisp}/data/imx296.json, imx296_mono.json,
    # ov9281_mono.json (rpi.black_level 3840 and 4096 on the 16-bit scale: 60 and 64 at 10 bits; the mono files
    # have no rpi.awb and no rpi.ccm). Modes: IMX296 1456x1088 10-bit at 60.38 fps (the Raspberry Pi Global
    # Shutter Camera); OV9281 1280x800 10-bit — the Linux ov9282 driver's full mode; its maximum rate, the
    # 640x400 binned mode and the gain code ceiling (0xf8 → 15.5) are estimates, as are full wells and read
    # noise of both (no published figures).
    "imx296": _IMX296,
    "imx296_mono": dataclasses.replace(_IMX296, bayer_order=MONO),  # same sensor without the colour filter
    "ov9281": SensorInfo(
        model="ov9281", bayer_order=MONO, bit_depth=10, black_level=64, target_white_level=700,
        full_array=(1280, 800),
        modes=(
            _mode((640, 400), 10, 210.0, (0, 0, 1280, 800), 2, vblank_lines=25),
            _mode((1280, 800), 10, 144.0, (0, 0, 1280, 800), 1, vblank_lines=25),
        ),
        exposure_delay=2, gain_delay=2, vblank_delay=2, gain_min=1.0, gain_max=248 / 16,
        full_well_e=9000.0, read_noise_e=3.5, exposure_min_us=20.0, unit_cell_nm=3000,
        gain_code=("linear", 16, 248), exposure_max_us=2_000_000.0,
    ),
}


def sensor_for(model: str, mono: bool = False) -> SensorInfo | None:
    """The table's facts for a camera reporting `model` (libcamera's Model property), its mono variant when
    the camera is monochrome (ColorFilterArrangement MONO / raw R*), or None when the table has none."""
    key = model.lower()
    if mono:
        info = SENSORS.get(key + "_mono") or SENSORS.get(key)
        return info if info is not None and info.is_mono else None
    info = SENSORS.get(key)
    return info if info is not None and not info.is_mono else None


def get_sensor(name: str) -> SensorInfo:
    """The SensorInfo of a sensor by model name (case-insensitive)."""
    try:
        return SENSORS[name.lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"unknown sensor {name!r}; known sensors: {', '.join(sorted(SENSORS))}") from None
