"""The library's `Snapshot.save` names files as the viewer does, `<agent>-<time>-<frame>` (breaker F11: the
scripting example wrote `camera-…` where the viewer wrote `vm-…` for the same agent)."""

from __future__ import annotations

from host_viewer import cli
from pi_agent.camera.sim import SimulatedCamera


def test_library_and_viewer_snapshots_share_the_agents_name(start_agent, connect, tmp_path, capsys):
    agent = start_agent(camera=SimulatedCamera(seed=6), name="bench-pi")
    client = connect(agent)
    files = client.snapshot(full_resolution=False).save(tmp_path / "lib")
    assert files.jpeg.name.startswith("bench-pi-") and files.jpeg.suffix == ".jpg"
    assert cli.main([f"127.0.0.1:{agent.port}", "--headless", "--snapshot", str(tmp_path / "viewer"),
                     "--config-dir", str(tmp_path)]) == 0
    [viewer_jpeg] = (tmp_path / "viewer").glob("*.jpg")
    assert viewer_jpeg.name.startswith("bench-pi-")
    assert len(viewer_jpeg.stem.split("-")) == len(files.jpeg.stem.split("-"))  # same pattern
