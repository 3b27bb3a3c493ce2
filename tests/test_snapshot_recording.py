"""Snapshots and recordings from a simulated agent, checked with standard tools and against ground truth.

The recording must probe (ffprobe) with the right codec, frame count and size and decode with ffmpeg; its
packets must be the received JPEG bytes unchanged. The snapshot is a full-resolution still (3280x2464 for an
IMX219 streaming 640x480): its DNG must open in LibRaw (rawpy) and in exiftool, and its mosaic must give
exactly the raw statistics the agent computed for that very still; the stream goes on for every viewer.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from host_viewer import cli
from host_viewer.client import CommandFailed
from host_viewer.recording import Recorder, RecordingError
from pi_agent.camera.base import CameraError
from pi_agent.camera.sim import SimulatedCamera
from pi_agent.stats import compute_stats
from protocol import unpack_array

from .conftest import wait_until

FFPROBE = shutil.which("ffprobe")
FFMPEG = shutil.which("ffmpeg")
needs_ffmpeg = pytest.mark.skipif(FFPROBE is None or FFMPEG is None,
                                  reason="ffprobe/ffmpeg not installed (scripts/ensure_apt.sh installs ffmpeg)")


def ffprobe_stream(path: Path) -> dict:
    out = subprocess.run(
        [FFPROBE, "-v", "error", "-count_packets", "-select_streams", "v:0", "-show_entries",
         "stream=codec_name,width,height,nb_read_packets", "-of", "json", str(path)],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout
    return json.loads(out)["streams"][0]


def packet_times(path: Path) -> list[float]:
    out = subprocess.run([FFPROBE, "-v", "error", "-select_streams", "v:0", "-show_entries", "packet=pts_time",
                          "-of", "csv=p=0", str(path)], check=True, capture_output=True, text=True, timeout=60).stdout
    return [float(line) for line in out.split()]


@needs_ffmpeg
def test_headless_snapshot_and_recording_open_in_standard_tools(start_agent, connect, tmp_path, capsys):
    rawpy = pytest.importorskip("rawpy")
    agent = start_agent(size=(640, 480), fps=30.0)
    watcher = connect(agent)  # a second viewer, watching while the first takes the still
    before = watcher.wait_frame(5).sequence
    record = tmp_path / "rec.mkv"
    snapdir = tmp_path / "snaps"
    summary_path = tmp_path / "summary.json"
    code = cli.main([f"127.0.0.1:{agent.port}", "--headless", "--snapshot", str(snapdir), "--record", str(record),
                     "--frames", "12", "--summary-json", str(summary_path)])
    assert code == 0
    summary = json.loads(summary_path.read_text())

    # Recording: probes as MJPEG with every recorded frame, the stream's size, rising timestamps; decodes.
    recording = summary["recording"]
    assert recording["frames"] == 12  # every frame shown was recorded: no count depends on speed
    stream = ffprobe_stream(record)
    assert stream["codec_name"] == "mjpeg"
    assert (stream["width"], stream["height"]) == (640, 480)
    assert int(stream["nb_read_packets"]) == recording["frames"]
    times = packet_times(record)
    assert len(times) == recording["frames"] and all(b > a for a, b in zip(times, times[1:]))
    assert times[-1] == pytest.approx(recording["duration_s"], abs=0.002)
    # Every frame decodes (framecrc: one line per decoded frame, its size in bytes: 320x240 yuvj420p).
    decoded = subprocess.run([FFMPEG, "-v", "error", "-i", str(record), "-fps_mode", "passthrough",
                              "-enc_time_base", "-1", "-f", "framecrc", "-"], capture_output=True, text=True, timeout=60)
    assert decoded.returncode == 0 and decoded.stderr.strip() == ""
    lines = [line.split(",") for line in decoded.stdout.splitlines() if not line.startswith("#")]
    assert len(lines) == recording["frames"]
    assert {int(line[4]) for line in lines} == {640 * 480 * 3 // 2}

    # Snapshot: a full-resolution still (the IMX219's 3280x2464 mode while the stream runs 1640x1232 binned):
    # JPEG and DNG at the full array, a JSON sidecar.
    snap = summary["snapshot"]
    assert snap["full_resolution"] is True
    assert tuple(agent.configuration["raw"]["size"]) == (1640, 1232)
    raw_size = (3280, 2464)
    jpeg = cv2.imread(snap["jpeg"])
    assert jpeg.shape == (2464, 3280, 3)
    sidecar = json.loads(Path(snap["sidecar"]).read_text())
    assert sidecar["full_resolution"] is True and tuple(sidecar["metadata"]["ScalerCrop"]) == (0, 0, 3280, 2464)
    assert tuple(snap["raw_shape"]) == (raw_size[1], raw_size[0])
    with rawpy.imread(snap["raw"]) as dng:
        raw = dng.raw_image.copy()
        assert raw.shape == (raw_size[1], raw_size[0])
        assert dng.white_level == (1 << sidecar["bit_depth"]) - 1
        assert list(dng.black_level_per_channel) == [sidecar["black_level"]] * 4
        assert dng.camera_whitebalance[0] == pytest.approx(sidecar["metadata"]["ColourGains"][0], rel=1e-4)
        developed = dng.postprocess(use_camera_wb=True)
        assert developed.shape[:2] == raw.shape

    # The saved mosaic round-trips to the statistics the agent sent for that frame.
    stats = sidecar["stats"]
    again = compute_stats(raw, sidecar["bayer_order"], sidecar["bit_depth"], sidecar["black_level"]).to_wire()
    assert unpack_array(again["hist"]).tolist() == stats["hist"]
    assert again["mean"] == pytest.approx(stats["mean"], abs=1e-3)
    assert again["clipped"] == pytest.approx(stats["clipped"])
    assert again["level"] == stats["level"]

    exiftool = shutil.which("exiftool")
    if exiftool:
        tags = json.loads(subprocess.run([exiftool, "-json", "-n", snap["raw"]], capture_output=True, text=True,
                                         check=True, timeout=60).stdout)[0]
        assert tags["Model"] == "imx219"
        assert (tags["ImageWidth"], tags["ImageHeight"]) == raw_size
        assert tags["ExposureTime"] == pytest.approx(sidecar["metadata"]["ExposureTime"] / 1e6, rel=1e-6)

    # The stream kept running across the still: the second viewer's frame numbers rise past it, the first
    # viewer recorded after it, and the agent still streams its own mode.
    assert before <= snap["frame"]
    wait_until(lambda: watcher.latest().sequence > snap["frame"] + 10, 5, message="watcher frames after the still")
    assert summary["frames"] == recording["frames"] == 12
    assert watcher.latest().width == 640 and agent.camera.mode.size == (1640, 1232)


def test_recording_keeps_the_received_jpeg_bytes(tmp_path):
    av = pytest.importorskip("av")
    import simplejpeg

    class F:
        def __init__(self, i):
            image = np.zeros((48, 64, 3), np.uint8)
            image[:, : 4 * (i + 1)] = 200
            self.jpeg = simplejpeg.encode_jpeg(image, quality=70, colorspace="BGR")
            self.capture_ns, self.width, self.height, self.sequence = 1_000_000_000 + i * 33_333_333, 64, 48, i

    frames = [F(i) for i in range(6)]
    path = tmp_path / "r.mkv"
    recorder = Recorder(path)
    for f in frames + [frames[-1]]:  # a repeated frame is not written twice
        recorder.write(f)
    assert not path.exists()  # nothing under the final name until the recording is finished
    summary = recorder.close()
    assert summary.frames == 6 and summary.duration_s == pytest.approx(0.166, abs=0.002)
    with av.open(str(path)) as container:
        packets = [bytes(p) for p in container.demux(video=0) if p.size]
    assert packets == [f.jpeg for f in frames]
    assert not list(tmp_path.glob(".*tmp"))


def test_recorder_refuses_other_containers_and_writes_nothing_without_frames(tmp_path):
    pytest.importorskip("av")
    with pytest.raises(RecordingError, match=".mkv"):
        Recorder(tmp_path / "r.mp4")
    with pytest.raises(RecordingError, match="does not exist"):
        Recorder(tmp_path / "missing" / "r.mkv")
    empty = Recorder(tmp_path / "empty.mkv")
    assert empty.close().frames == 0
    assert list(tmp_path.iterdir()) == []


def test_snapshot_while_streaming_and_a_second_viewer_is_unaffected(start_agent, connect):
    agent = start_agent(size=(320, 240), fps=30.0)
    taker, watcher = connect(agent), connect(agent)
    watcher.wait_frame(5)
    before_frames = watcher.frames_received
    captured_before = agent.pipeline.frames_captured
    value = taker.command("snapshot", {"quality": 90, "full_resolution": False}, timeout=10)
    raw = unpack_array(value["raw"], "raw")
    assert raw.shape == tuple(reversed(agent.configuration["raw"]["size"]))  # the stream's own mode
    assert value["full_resolution"] is False and "reason" not in value
    assert value["quality"] == 90 and value["frame"] >= captured_before - 1
    # The stream kept going for both viewers; the watcher never got the snapshot's bytes.
    wait_until(lambda: watcher.frames_received > before_frames + 10, 5, message="watcher frames after snapshot")
    wait_until(lambda: taker.wait_frame(2, newer_than=value["frame"] + 5), 5, message="taker frames after snapshot")
    assert watcher.bytes_received < 40 * watcher.frames_received * 1024 + 100_000
    # Controls set by one viewer reach the camera both watch; each keeps its own stream.
    taker.command("set_controls", {"controls": {"ExposureTime": 5000, "AnalogueGain": 1.0}})
    wait_until(lambda: abs(watcher.latest().metadata["ExposureTime"] - 5000) < 50, 5, message="exposure seen")


def test_snapshot_bad_arguments_get_clear_errors(start_agent, connect):
    agent = start_agent()
    client = connect(agent)
    with pytest.raises(CommandFailed, match="quality") as exc:
        client.command("snapshot", {"quality": 0})
    assert exc.value.code == "bad_argument"
    with pytest.raises(CommandFailed, match="raw"):
        client.command("snapshot", {"raw": "yes"})
    with pytest.raises(CommandFailed, match="full_resolution"):
        client.command("snapshot", {"full_resolution": 1})
    value = client.command("snapshot", {"raw": False, "full_resolution": False}, timeout=10)
    assert "raw" not in value and value["jpeg"][:2] == b"\xff\xd8"
    assert client.command("status")["frames_captured"] > 0  # the agent is fine


class GatedStillCamera(SimulatedCamera):
    """The simulator whose stills wait for a gate: a still in progress can be held open by the test."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.gate = threading.Event()
        self.still_started = threading.Event()

    def capture_still(self, timeout: float = 5.0, **kwargs):
        self.still_started.set()
        if not self.gate.wait(timeout):
            raise CameraError("gate not opened")
        return super().capture_still(timeout, **kwargs)


def test_one_still_at_a_time_and_the_stream_flows_while_it_is_taken(start_agent, connect):
    camera = GatedStillCamera(sensor="imx219", seed=2)
    agent = start_agent(camera=camera, size=(320, 240), fps=30.0)
    taker, watcher = connect(agent), connect(agent)
    first = taker.send_command("snapshot", {}, ttl=15)
    wait_until(camera.still_started.is_set, 5, message="still started")
    with pytest.raises(CommandFailed, match="still is being taken") as exc:
        taker.command("snapshot", {}, timeout=5)
    assert exc.value.code == "busy"
    # While the still is being taken, both viewers keep receiving the stream.
    during = watcher.wait_frame(5).sequence
    wait_until(lambda: watcher.latest().sequence > during + 5, 5, message="watcher frames during the still")
    mine = taker.wait_frame(5).sequence
    wait_until(lambda: taker.latest().sequence > mine + 5, 5, message="taker frames during the still")
    camera.gate.set()
    value = first.future.result(timeout=15)
    assert value["full_resolution"] is True and (value["width"], value["height"]) == (3280, 2464)
    # The lock is free again: the next still is taken.
    assert taker.command("snapshot", {"raw": False}, timeout=15)["full_resolution"] is True
