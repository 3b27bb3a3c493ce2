"""Bad input on the command line gets a clear error at once (issue 16.4): addresses, sizes, rates, flags."""

from __future__ import annotations

import numpy as np
import pytest

from host_viewer import cli
from pi_agent import cli as agent_cli
from pi_agent.camera.isp import Isp
from pi_agent.camera.limits import isp_crop, native_crop
from pi_agent.camera.sim import SimulatedCamera
from protocol.address import parse_address


@pytest.mark.parametrize("text, expected", [
    ("pi.local:5556", ("pi.local", 5556)),
    ("pi.local", ("pi.local", 5555)),
    ("tcp://10.0.0.7:6000", ("10.0.0.7", 6000)),
    ("TCP://10.0.0.7:6000/", ("10.0.0.7", 6000)),
    ("[fe80::1]:5557", ("fe80::1", 5557)),
    ("[::1]", ("::1", 5555)),
    ("fe80::1", ("fe80::1", 5555)),
    ("  192.168.1.20:5555 ", ("192.168.1.20", 5555)),
])
def test_address_forms_understood(text, expected):
    assert parse_address(text) == expected


@pytest.mark.parametrize("text, says", [
    ("", "no host name"),
    (":5555", "no host name"),
    ("pi.local:http", "must be a number"),
    ("pi.local:70000", "must be a number from 1 to 65535"),
    ("udp://pi.local:5555", "only tcp://"),
    ("http://pi.local:5555/x", "only tcp://"),
    ("[fe80::1]5555", "in brackets"),
    ("pi local:5555", "not a host name"),
])
def test_address_forms_refused_with_the_forms_that_work(text, says):
    with pytest.raises(ValueError) as error:
        parse_address(text)
    assert says in str(error.value) and "HOST:PORT" in str(error.value)


def test_the_viewer_refuses_a_bad_address_before_connecting(capsys):
    assert cli.main(["http://pi.local:5555", "--headless"]) == 2
    assert "only tcp://" in capsys.readouterr().err


@pytest.mark.parametrize("args, says", [
    (["--credit", "0"], "--credit: 0 must be at least 1"),
    (["--credit", "99"], "at most 8"),
    (["--duration", "-1"], "--duration: -1 must be at least 0"),
    (["--duration", "nan"], "--duration"),
    (["--frames", "0"], "--frames: 0 must be at least 1"),
    (["--connect-timeout", "0"], "more than 0"),
    (["--overlays", "stats,histogram,bogus"], "unknown overlay 'bogus': choose from stats"),
    (["--overlays", ","], "unknown overlay"),
])
def test_nonsense_flag_values_are_refused(args, says, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["127.0.0.1:1", "--headless", *args])
    assert exit_.value.code == 2
    assert says in capsys.readouterr().err


def test_overlay_names_all_and_none():
    assert cli.overlay_list("none") == []
    assert cli.overlay_list("all") == ["all"]
    assert cli.overlay_list("stats, histogram") == ["stats", "histogram"]


@pytest.mark.parametrize("size, fps, says", [
    ("8000x6000", "30", "--size 8000x6000: the imx219 delivers at most 3280x2464"),
    ("2x2", "30", "--size 2x2: the main stream must be at least 64x64"),
    ("640x480", "500", "--fps 500: the imx219 delivers 640x480 at up to 206.65 fps"),
    ("3280x2464", "50", "--fps 50: the imx219 delivers 3280x2464 at up to 21.19 fps"),
])
def test_the_agent_refuses_what_the_camera_cannot_deliver(size, fps, says, capsys):
    code = agent_cli.main(["--camera", "sim", "--size", size, "--fps", fps, "--listen", "127.0.0.1:0",
                           "--no-announce", "--log-level", "ERROR"])
    err = capsys.readouterr().err
    assert code == 2 and says in err
    assert "choosing the nearest" not in err  # one sentence, not a warning that contradicts it


def test_isp_crop_follows_libcamera():
    # boundedToAspectRatio + centeredTo: 16:9 from 4:3 keeps the width, 4:3 from 16:9 keeps the height.
    assert isp_crop((1640, 1232), (640, 360)) == (0, 155, 1640, 922)
    assert isp_crop((1920, 1080), (640, 480)) == (240, 0, 1440, 1080)
    assert isp_crop((1640, 1232), (820, 616)) == (0, 0, 1640, 1232)
    # ScalerCrop on the pixel array for the IMX219's 2x2-binned full-field mode
    assert native_crop((0, 155, 1640, 922), (0, 0, 3280, 2464), (1640, 1232)) == (0, 310, 3280, 1844)


def test_a_wide_stream_from_a_4_3_mode_is_cropped_not_squashed():
    """A synthetic raw with a bright line at a known row and column: after the ISP, the row lands where a
    centred crop puts it (a squash would put it elsewhere), the column where plain scaling does."""
    raw_size, main = (1640, 1232), (640, 360)
    raw = np.full((raw_size[1], raw_size[0]), 64, np.uint16)
    row, column = 1000, 1000  # far from the centre, where crop and squash differ most
    raw[row - 4 : row + 4, :] = 1000
    raw[:, column - 4 : column + 4] = 1000
    image = Isp(raw_size, "BGGR", 10, 64, main).process(raw)
    bright = image.mean(axis=2)
    found_row = int(np.argmax(bright[:, 10]))
    found_column = int(np.argmax(bright[10, :]))
    x0, y0, w, h = isp_crop(raw_size, main)
    assert abs(found_row - (row - y0) * main[1] / h) <= 1.5
    assert abs(found_row - row * main[1] / raw_size[1]) > 30  # not where squashing puts it
    assert abs(found_column - column * main[0] / w) <= 1.5


def test_the_simulator_reports_the_crop_in_scaler_crop():
    camera = SimulatedCamera(seed=1)
    camera.configure((640, 360), 30.0)
    camera.start()
    try:
        frame = camera.capture()
    finally:
        camera.stop()
    assert frame.main.shape == (360, 640, 3)
    assert tuple(frame.metadata["ScalerCrop"]) == (0, 310, 3280, 1844)
