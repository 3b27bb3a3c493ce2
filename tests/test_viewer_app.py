"""The viewer without a window: keys act on the agent, overlays show what came back, tiles, progress, help.

ViewerApp's loop body (`poll_frames`, `compose`, `handle_key`) runs here against real agents on loopback;
the real-window test (test_window.py) shows the same under X.
"""

from __future__ import annotations

import re

import cv2
import numpy as np
import pytest

from host_viewer.app import ViewerApp
from host_viewer.manual import stepped_exposure, stepped_gain
from host_viewer.overlays import connection_text, controls_lines, histogram_box, stats_lines
from pi_agent.commands import CommandRouter

from .conftest import wait_until


def poll(app: ViewerApp, predicate, timeout=20.0, message=""):
    def step():
        app.poll_frames()
        for tile in app.tiles:
            tile.sample_counters()
        return predicate()

    return wait_until(step, timeout, message=message)


def test_third_of_a_stop_steps_and_clamping():
    ranges = {"ExposureTime": [100, 50_000, 10_000], "AnalogueGain": [1.0, 10.666, 1.0]}
    assert stepped_exposure(10_000, +1, ranges) == round(10_000 * 2 ** (1 / 3))
    assert stepped_exposure(10_000, +3, ranges) == 20_000
    assert stepped_exposure(10_000, -3, ranges) == 5_000
    assert stepped_exposure(40_000, +3, ranges) == 50_000  # clamped to the camera's range
    assert stepped_exposure(120, -3, ranges) == 100
    assert stepped_gain(8.0, +3, ranges) == pytest.approx(10.666)
    assert stepped_gain(1.0, -1, ranges) == 1.0


def test_exposure_and_gain_keys_set_controls_and_the_overlay_shows_them(start_agent, connect):
    agent = start_agent(size=(320, 240))
    app = ViewerApp(connect(agent))
    poll(app, lambda: app.tile.last_frame is not None)
    start = app.tile.last_frame.metadata
    app.handle_key(ord("]"))  # ExposureTime up a third of a stop, manual
    wanted = round(start["ExposureTime"] * 2 ** (1 / 3))
    line_time = 1e6 / 30 / 1000  # well under a sensor line's worth of µs is the quantisation
    poll(app, lambda: abs(app.tile.last_frame.metadata["ExposureTime"] - wanted) <= 2 * line_time
         and not app.tile.last_frame.metadata["AeEnable"], message="exposure up in force")
    assert agent.camera.controls()["ExposureTime"] == wanted
    shown = app.tile.last_frame.metadata["ExposureTime"]
    assert f"ExposureTime {shown / 1000:.3f} ms  (manual)" in controls_lines(app.tile)
    gain = app.tile.last_frame.metadata["AnalogueGain"]
    app.handle_key(ord("="))  # AnalogueGain up a third of a stop
    poll(app, lambda: app.tile.last_frame.metadata["AnalogueGain"] > gain * 1.2, message="gain up in force")
    assert any(line.startswith("AnalogueGain") for line in controls_lines(app.tile))
    app.handle_key(ord("x"))  # auto exposure back on
    poll(app, lambda: app.tile.last_frame.metadata["AeEnable"], message="auto exposure on")
    assert "(auto)" in controls_lines(app.tile)[0]
    poll(app, lambda: "auto exposure on" in app.tile.status)


def test_a_refused_command_shows_in_the_status_line(start_agent, connect):
    app = ViewerApp(connect(start_agent()))
    app.send_command("set_controls", {"controls": {"ExposureTime": -5}})
    poll(app, lambda: "failed" in app.tile.status, message="error on the status line")
    assert "out_of_range" in app.tile.status or "bad_argument" in app.tile.status


def test_stats_overlay_figures(start_agent, connect):
    app = ViewerApp(connect(start_agent(size=(320, 240), fps=30.0)))
    poll(app, lambda: app.tile.received_meter.rate() > 0 and app.tile.session.fps_meter.rate() > 0,
         timeout=15, message="rates measured")
    text = "\n".join(stats_lines(app.tile))
    assert "fps received" in text and "Mbit/s" in text
    shown_dropped = int(re.search(r"dropped (\d+)", text).group(1))
    assert shown_dropped <= app.tile.client.frames_dropped  # the client's gap count (it only grows)
    # Bytes per received frame (a ratio of two rates over the same window, whatever the machine's speed): a
    # 320x240 JPEG of the chart is several kB.
    assert app.tile.link_meter.rate() / app.tile.received_meter.rate() > 3000


def placed_box(app: ViewerApp, name: str, tile: int = 0):
    return next((p.box for p in app.placed[tile] if p.name == name), None)


def test_overlays_draw_over_the_video_and_toggle(start_agent, connect):
    app = ViewerApp(connect(start_agent(size=(640, 480))), overlays=["histogram"])
    poll(app, lambda: app.tile.last_image is not None)
    image = app.tile.last_image
    with_hist = app.compose().copy()
    x0, y0, x1, y1 = placed_box(app, "histogram")
    assert (x0, y0, x1, y1) == histogram_box(image)  # its own corner, bottom left, when nothing else is there
    assert np.abs(with_hist[y0:y1, x0:x1].astype(int) - image[y0:y1, x0:x1]).mean() > 20
    app.handle_key(ord("3"))  # histogram off
    without = app.compose()
    assert placed_box(app, "histogram") is None
    assert np.array_equal(without[y0:y1, x0:x1], app.tile.last_image[y0:y1, x0:x1])


def test_progress_overlay_follows_any_long_command(start_agent, connect):
    agent = start_agent()
    router: CommandRouter = agent.router
    import threading

    gate = threading.Event()

    def slow(command, reply):
        def work(job):
            job.progress("halfway", 0.5)
            gate.wait(5)
            job.progress("nearly", 0.9)
            return {"ok": True}

        router.start_job(command, reply, "slow", work)

    router.register("slow", slow)
    app = ViewerApp(connect(agent), overlays=["progress"])
    poll(app, lambda: app.tile.last_image is not None)
    blank = app.compose().copy()
    app.send_command("slow", {})
    poll(app, lambda: app.tile.progress and app.tile.progress.step == "halfway", message="progress seen")
    drawn = app.compose()
    x0, y0, x1, y1 = placed_box(app, "progress")
    assert x1 > blank.shape[1] * 0.6  # top right, its corner
    assert not np.array_equal(drawn[y0:y1, x0:x1], blank[y0:y1, x0:x1])
    gate.set()
    poll(app, lambda: app.tile.progress.outcome == "done", message="command finished")
    assert app.tile.visible_progress().fraction == 1.0


def test_help_lists_every_binding_including_ones_added_later(start_agent, connect):
    app = ViewerApp(connect(start_agent()))
    app.bind("e", "calibrate exposure", lambda: None)
    lines = "\n".join(app.help_lines())
    for binding in app.bindings.values():
        assert binding.description in lines
    assert "Tab" in lines and "calibrate exposure" in lines
    assert not app.show_help
    app.handle_key(ord("h"))
    assert app.show_help


def test_tiles_keys_act_on_the_selected_camera(start_agent, connect):
    agents = [start_agent(size=(320, 240), seed=i) for i in range(3)]
    app = ViewerApp([connect(a) for a in agents])
    poll(app, lambda: all(t.last_image is not None for t in app.tiles), message="three cameras")
    canvas = app.compose()
    assert canvas.shape == (480, 640, 3)  # 2x2 grid of 320x240
    app.handle_key(ord("\t"))
    assert app.selected == 1
    before = [a.camera.controls().get("ExposureTime") for a in agents]
    app.handle_key(ord("["))
    wait_until(lambda: agents[1].camera.controls().get("AeEnable") is False, 5, message="second agent manual")
    assert [a.camera.controls().get("ExposureTime") for a in (agents[0], agents[2])] == [before[0], before[2]]
    assert agents[0].camera.controls().get("AeEnable") is not False


def test_connection_overlay_follows_the_client_state(start_agent, connect):
    agent = start_agent(name="bench-pi")
    app = ViewerApp(connect(agent, silence_timeout=0.5), overlays=["connection"])
    poll(app, lambda: app.tile.last_image is not None)
    port = agent.port
    # polled: with a 0.5 s silence timeout a loaded machine may show a brief "reconnecting" first
    poll(app, lambda: connection_text(app.tile) == f"bench-pi :{port}: connected", 30, message="connected shown")
    before = app.compose().copy()
    agent.stop()
    poll(app, lambda: connection_text(app.tile).startswith(f"bench-pi :{port}: reconnecting"),
         message="reconnecting shown")
    after = app.compose()
    x0, y0, x1, y1 = placed_box(app, "connection")
    assert not np.array_equal(before[y0:y1, x0:x1], after[y0:y1, x0:x1])
    # The frozen frame says so plainly, and its age keeps counting.
    assert placed_box(app, "unreachable") is not None
    from host_viewer.overlays import live_age_ms, unreachable_text

    assert unreachable_text(app.tile).startswith("agent unreachable since ")
    first = live_age_ms(app.tile)
    wait_until(lambda: live_age_ms(app.tile) > first + 50, 5, message="the age counting on")


def test_record_key_with_an_unusable_save_directory_is_a_status_line_error(start_agent, connect, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    for save_dir in (blocker / "sub", blocker):  # under a file (cannot be made), a file (not a directory)
        app = ViewerApp(connect(start_agent()), save_dir=save_dir)
        poll(app, lambda: app.tile.last_image is not None)
        app.handle_key(ord("r"))
        assert app.tile.recorder is None
        assert app.tile.status.startswith(f"cannot record to {save_dir}")
        app.compose()  # the window goes on, the error on its status line


def _no_overlaps(placed, rect):
    x0, y0, x1, y1 = rect
    for i, a in enumerate(placed):
        assert x0 <= a.box[0] < a.box[2] <= x1 and y0 <= a.box[1] < a.box[3] <= y1, (a.name, a.box, rect)
        for b in placed[i + 1:]:
            overlap = a.box[0] < b.box[2] and b.box[0] < a.box[2] and a.box[1] < b.box[3] and b.box[1] < a.box[3]
            assert not overlap, f"{a.name} {a.box} overlaps {b.name} {b.box}"


@pytest.mark.parametrize("size", [(320, 240), (640, 480), (1920, 1080), (240, 320)])
def test_every_overlay_on_never_overlaps_and_text_scales(start_agent, connect, size):
    from host_viewer.tile import CommandProgress

    app = ViewerApp(connect(start_agent(size=(640, 480))), overlays=["all"])
    poll(app, lambda: app.tile.last_image is not None and app.tile.last_frame.histograms() is not None)
    app.tile.progress = CommandProgress(name="calibrate", step="lens_shading", fraction=0.4)
    app.tile.set_status("snapshot 3280x2464 saved: imx219-20261129-231500.jpg, imx219-20261129-231500.dng")
    canvas = app.compose(size)
    assert canvas.shape == (size[1], size[0], 3)
    placed = app.placed[0]
    names = {p.name for p in placed}
    assert {"status", "connection"} <= names  # the state and the status line always find room
    # the video keeps its 4:3 shape inside the window: the overlays lie on it, never on the bars
    w = min(size[0], size[1] * 4 // 3)
    h = w * 3 // 4
    video = ((size[0] - w) // 2, (size[1] - h) // 2, (size[0] - w) // 2 + w, (size[1] - h) // 2 + h)
    _no_overlaps(placed, video)
    if size == (1920, 1080):
        assert names == {"status", "connection", "stats", "progress", "controls", "histogram"}
        small = app.compose((640, 480)) is not None and {p.name: p.box for p in app.placed[0]}
        large = {p.name: p.box for p in placed}
        for name in ("stats", "controls", "connection"):  # text grows with the window
            assert large[name][3] - large[name][1] >= 1.8 * (small[name][3] - small[name][1])


def test_tiles_keep_each_cameras_aspect_ratio(start_agent, connect):
    wide, square = start_agent(size=(640, 360)), start_agent(size=(320, 240))
    app = ViewerApp([connect(wide), connect(square)], overlays=[])
    poll(app, lambda: all(t.last_image is not None for t in app.tiles), message="both cameras")
    canvas = app.compose((1280, 480))  # two cells of 640x480
    wide_rows = 5 + np.flatnonzero(canvas[5:475, 100:540].max(axis=(1, 2)) > 0)  # inside the selection frame
    # 640x360 shown 640 wide in a 640x480 cell: 360 rows of video, bars of 60 above and below
    assert wide_rows[0] == 60 and wide_rows[-1] == 419
    square_cols = np.flatnonzero(canvas[100:380, 640:].max(axis=(0, 2)) > 0)
    assert square_cols[0] <= 2 and square_cols[-1] >= 637  # 4:3 fills its 4:3 cell


def test_the_window_buffer_is_reused_frame_after_frame(start_agent, connect):
    app = ViewerApp(connect(start_agent(size=(640, 480))))
    poll(app, lambda: app.tile.last_image is not None)
    first = app.compose((800, 600))
    sequence = app.tile.last_frame.sequence
    poll(app, lambda: app.tile.last_frame.sequence > sequence, message="a newer frame")
    again = app.compose((800, 600))
    assert again is first  # the same buffer, drawn again
    x0, y0, x1, y1 = 0, 0, 800, 600
    scaled = cv2.resize(app.tile.last_image, (800, 600), interpolation=cv2.INTER_LINEAR)
    # the video was scaled straight into it (compare where no overlay is drawn: the middle)
    assert np.abs(again[250:350, 300:500].astype(int) - scaled[250:350, 300:500]).max() <= 1
    assert app.compose((400, 300)) is not first  # a new size, a new buffer


def test_help_fits_by_pages_in_a_small_window(start_agent, connect):
    app = ViewerApp(connect(start_agent()))
    for key in "ewlacp":  # as many keys as the calibration keys add
        app.bind(key, f"an action bound to {key}", lambda: None)
    app.handle_key(ord("h"))
    app.compose((320, 240))
    assert app.show_help and app._help_pages > 1
    for _ in range(app._help_pages - 1):
        app.handle_key(ord("h"))
        app.compose((320, 240))
    assert app.show_help and app.help_page == app._help_pages - 1
    app.handle_key(ord("h"))
    assert not app.show_help
