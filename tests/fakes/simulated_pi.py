"""The harness that runs the REAL picamera2 (from site-packages, unmodified) on the simulated libcamera.

`simulated_pi(cameras, platform)` is a context manager giving a `SimulatedPi`: a Raspberry Pi with those camera
modules connected ("vc4": Pi 4, 16x12 lens shading tables; "pisp": Pi 5, 32x32), on which `picamera2` runs with
tests/fakes/libcamera as its `libcamera`. What the harness supplies is only what a headless x86 test cannot
have, each at the lowest boundary:

- `libcamera`: tests/fakes/libcamera, appended to sys.path (after site-packages, so picamera2 itself still
  comes from site-packages) while the context is open;
- the kernel: picamera2's DmaAllocator opens /dev/dma_heap and issues DMA_HEAP_IOCTL_ALLOC /
  DMA_BUF_SET_NAME / DMA_BUF_IOCTL_SYNC (picamera2/dma_heap.py, allocators/dmaallocator.py); `SimulatedKernel`
  answers those syscalls with memfd buffers (which picamera2 then mmaps itself), and nothing else;
- the platform probe: picamera2/platform.py asks the /dev/video* nodes for the ISP's name at import ("pispbe" →
  PISP, else VC4); the harness sets the probe's answer (`Picamera2.platform`, `platform._platform`);
- `pykms` (previews only): a stub module. The PyPI package named `kms` is unrelated to kms++ and is never used;
- stock tuning files: picamera2's `load_tuning_file` looks in ~/libcamera/src/ipa/rpi/<platform>/data first
  (a libcamera source tree); HOME points at a temporary tree whose data/ holds the simulated libcamera's files.

Ground truth for tests: `SimulatedPi.machine` (tests/fakes/libcamera/_machine.py): the CameraManagers created
and the tuning each read, and `machine.pipeline(i)`, the live sensor/IPA/ISP of camera i (last raw mosaic,
lens shading gains in force, control state).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gc
import logging
import os
import sys
import tempfile
import types
from dataclasses import dataclass
from typing import Any, Iterator

FAKES_DIR = os.path.dirname(os.path.abspath(__file__))
log = logging.getLogger(__name__)


class SimulatedKernel:
    """The dma-heap and dma-buf syscalls picamera2 makes, answered with memfd buffers."""

    def __init__(self):
        self.heaps: set[int] = set()
        self.buffers: set[int] = set()
        self.syncs = 0
        import picamera2.dma_heap as dh

        self._alloc, self._name, self._sync = dh.DMA_HEAP_IOCTL_ALLOC, dh.DMA_BUF_SET_NAME, dh.DMA_BUF_IOCTL_SYNC
        kernel = self

        class _Os(types.ModuleType):
            def __getattr__(self, name):
                return getattr(os, name)

            @staticmethod
            def open(path, flags, mode=0o777):
                if str(path).startswith("/dev/dma_heap/"):
                    fd = os.memfd_create("dma_heap", os.MFD_CLOEXEC)
                    kernel.heaps.add(fd)
                    return fd
                return os.open(path, flags, mode)

        class _Fcntl(types.ModuleType):
            def __getattr__(self, name):
                return getattr(fcntl, name)

            @staticmethod
            def ioctl(fd, request, arg=0, mutate_flag=True):
                return kernel.ioctl(fd, request, arg)

        self.os = _Os("os")
        self.fcntl = _Fcntl("fcntl")

    def ioctl(self, fd, request, arg):
        if request == self._alloc:
            if fd not in self.heaps:
                raise OSError(errno.ENOTTY, "Inappropriate ioctl for device")
            buf = os.memfd_create("dmabuf", os.MFD_CLOEXEC)
            os.ftruncate(buf, int(arg.len))
            arg.fd = buf
            self.buffers.add(buf)
            return 0
        if request in (self._name, self._sync):
            if fd not in self.buffers:
                raise OSError(errno.ENOTTY, "Inappropriate ioctl for device")
            self.syncs += request == self._sync
            return 0
        return fcntl.ioctl(fd, request, arg)


def _stub_pykms() -> None:
    """picamera2/previews/drm_preview.py imports kms++'s Python module; previews are not used headless."""
    try:
        import pykms  # noqa: F401
        return
    except ImportError:
        pass
    stub = types.ModuleType("pykms")
    stub.__doc__ = "Stub of kms++'s pykms for headless tests (tests/fakes/simulated_pi.py); previews unsupported."

    class _PixelFormats:  # any fourcc name → itself; nothing is ever displayed
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return name

    def _no_display(*args, **kwargs):
        raise RuntimeError("no display: pykms is stubbed in the test harness (tests/fakes/simulated_pi.py)")

    stub.PixelFormat = _PixelFormats()
    stub.Card = stub.ResourceManager = stub.DumbFramebuffer = _no_display
    sys.modules["pykms"] = stub


@dataclass
class SimulatedPi:
    """What a test gets: the simulated machine, the real picamera2 and the simulated libcamera modules."""

    machine: Any
    picamera2: types.ModuleType
    libcamera: types.ModuleType
    kernel: SimulatedKernel

    def pipeline(self, index: int = 0):
        return self.machine.pipeline(index)


@contextlib.contextmanager
def simulated_pi(cameras=("imx219",), platform: str = "vc4") -> Iterator[SimulatedPi]:
    """A Raspberry Pi ("vc4" Pi 4 or "pisp" Pi 5) with `cameras` (sensor names or
    libcamera._machine.CameraModule) connected, for the duration of the context."""
    added = FAKES_DIR not in sys.path
    if added:
        sys.path.append(FAKES_DIR)
    _stub_pykms()
    import libcamera

    if not os.path.abspath(libcamera.__file__).startswith(FAKES_DIR):
        raise RuntimeError(f"a real libcamera is installed ({libcamera.__file__}); these tests need the simulated one")
    from libcamera import _machine

    machine = _machine.Machine(list(cameras), platform)
    _machine.install(machine)
    import picamera2
    import picamera2.allocators.dmaallocator as dmaallocator
    import picamera2.dma_heap as dma_heap
    import picamera2.picamera2 as p2
    import picamera2.platform as p2platform

    kernel = SimulatedKernel()
    saved = {
        "platform": (p2.Picamera2.platform, p2platform._platform),
        "dma_heap": (dma_heap.os, dma_heap.fcntl),
        "dmaallocator": dmaallocator.fcntl,
        "env": {k: os.environ.get(k) for k in ("HOME", "LIBCAMERA_RPI_TUNING_FILE")},
    }
    probe = p2platform.Platform.PISP if platform == "pisp" else p2platform.Platform.VC4
    p2.Picamera2.platform = probe
    p2platform._platform = probe
    dma_heap.os, dma_heap.fcntl = kernel.os, kernel.fcntl
    dmaallocator.fcntl = kernel.fcntl
    home = tempfile.TemporaryDirectory(prefix="simulated-pi-home-")
    for plat in ("vc4", "pisp"):
        tree = os.path.join(home.name, "libcamera", "src", "ipa", "rpi", plat)
        os.makedirs(tree)
        os.symlink(os.path.join(_machine.DATA_DIR, plat), os.path.join(tree, "data"))
    os.environ["HOME"] = home.name
    os.environ.pop("LIBCAMERA_RPI_TUNING_FILE", None)
    p2.Picamera2._cm = p2.CameraManager()  # a fresh process: no manager from an earlier test
    try:
        yield SimulatedPi(machine, picamera2, libcamera, kernel)
    finally:
        for cam in list(p2.Picamera2._cm.cameras.values()):
            try:
                cam.close()
            except Exception:
                log.exception("closing a camera left open by the test")
        p2.Picamera2._cm = p2.CameraManager()
        p2.Picamera2.platform, p2platform._platform = saved["platform"]
        dma_heap.os, dma_heap.fcntl = saved["dma_heap"]
        dmaallocator.fcntl = saved["dmaallocator"]
        for k, v in saved["env"].items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _machine.install(None)
        gc.collect()
        home.cleanup()
        if added and FAKES_DIR in sys.path:
            sys.path.remove(FAKES_DIR)
