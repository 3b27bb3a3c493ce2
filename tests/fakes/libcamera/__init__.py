"""A simulated `libcamera` Python module for running the real picamera2 without a Raspberry Pi (test
infrastructure only: tests/fakes/simulated_pi.py puts it on sys.path for the Picamera2 tests).

It stands at the lowest boundary we cannot run — libcamera, the Raspberry Pi pipeline handler and IPA, the
sensor and the kernel — and is modelled from raspberrypi/libcamera's source (each file cites what it follows:
_libcamera.py the Python bindings and Camera/CameraManager, _pipeline.py the RPi pipeline handler and IPA,
_isp.py rpi.alsc and the VC4/PiSP lens shading hardware) with the physics of picamlink's simulator
(pi_agent/camera/sim.py, scene.py) for the pixels. Like the real package, it is `from ._libcamera import *`.
The stock tuning files in data/ are raspberrypi/libcamera's src/ipa/rpi/{vc4,pisp}/data/*.json (BSD-2-Clause).
"""

from ._libcamera import *  # noqa: F401,F403
from ._libcamera import controls, properties  # noqa: F401
