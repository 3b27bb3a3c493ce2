"""The client library for scripts: the README's example run exactly as written, the typed methods against a
real agent, and one exception class per error code."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from host_viewer import errors
from host_viewer.results import CalibrationResult, Controls, Snapshot, Status
from pi_agent.camera.sim import SimulatedCamera
from protocol.errors import ErrorCode

from .conftest import wait_until

ROOT = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    """The one ```python block of the README's "Scripting" section, as a user would copy it."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Scripting\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the Scripting section has one complete example"
    return blocks[0]


def test_the_readme_scripting_example_runs_as_written(start_agent, tmp_path):
    # the agent the README asks for: `pi-agent --camera sim --scene white`
    agent = start_agent(SimulatedCamera(sensor="imx219", scene="white", seed=1), size=(320, 240), fps=30)
    script = tmp_path / "script.py"
    script.write_text(readme_example())
    run = subprocess.run([sys.executable, str(script), f"127.0.0.1:{agent.port}"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    # ten frames, each newer than the one before
    numbers = [int(n) for n in re.findall(r"^frame (\d+):", out, flags=re.M)]
    assert len(numbers) == 10 and all(b > a for a, b in zip(numbers, numbers[1:])), out
    # the full-resolution still of an IMX219 and its files
    assert "raw mosaic (2464, 3280) uint16" in out, out
    saved = sorted(p.suffix for p in (tmp_path / "snapshots").iterdir())
    assert saved == [".dng", ".jpg", ".json"]
    # the calibration ran to the end (the bar reached 100 %) and is in force on the agent
    assert "calibrated: ('exposure', 'white_balance', 'lens_shading')" in out, out
    assert "100/100" in run.stderr
    state = agent.calibration.summary()
    assert state["in_force"] and set(state) >= {"exposure", "white_balance", "lens_shading"}
    assert f"ExposureTime {state['exposure']['ExposureTime']} µs" in out


def test_typed_methods_return_typed_results(start_agent, connect):
    agent = start_agent(size=(320, 240), fps=30)
    client = connect(agent)
    requested = client.set_controls(ExposureTime=12_000, ColourGains=(1.5, 2.0))
    assert requested["ExposureTime"] == 12_000 and requested["AeEnable"] is False
    assert requested["ColourGains"] == [1.5, 2.0] and requested["AwbEnable"] is False
    assert agent.camera.controls()["ExposureTime"] == 12_000

    controls = client.get_controls()
    assert isinstance(controls, Controls) and controls.requested["ExposureTime"] == 12_000
    low, high = controls.ranges["ExposureTime"].min, controls.ranges["ExposureTime"].max
    assert low < 12_000 < high

    status = client.status()
    assert isinstance(status, Status) and status.busy is None and status.viewers == 1

    frames = client.frames()
    first, second = next(frames), next(frames)
    assert second.sequence > first.sequence and first.decode().shape == (240, 320, 3)

    shot = client.snapshot(full_resolution=False, quality=90)
    assert isinstance(shot, Snapshot) and not shot.full_resolution
    assert shot.raw.dtype == np.uint16 and shot.raw.shape == (1232, 1640)
    assert shot.image().shape == (240, 320, 3) and shot.metadata["ExposureTime"] > 0
    assert client.snapshot(full_resolution=False, raw=False).raw is None

    steps = []
    result = client.calibrate("exposure", on_progress=lambda p: steps.append((p.step, p.fraction)))
    assert isinstance(result, CalibrationResult) and result.parts == ("exposure",)
    assert result.exposure["converged"] is True and result.exposure_time_us == result.exposure["ExposureTime"]
    assert result.state_file is None  # this agent has no state directory
    assert steps and all(0 <= f <= 1 for _, f in steps)


@pytest.mark.parametrize("call, exception", [
    (lambda c: c.set_controls(ExposureTime=10**9), errors.OutOfRange),
    (lambda c: c.set_controls(Brightness=0.5), errors.BadArgument),
    (lambda c: c.calibrate("everything"), errors.BadArgument),
    (lambda c: c.snapshot(quality=0), errors.BadArgument),
    (lambda c: c.command("warp_drive"), errors.UnknownCommand),
])
def test_each_error_code_raises_its_own_exception(start_agent, connect, call, exception):
    client = connect(start_agent())
    with pytest.raises(exception) as info:
        call(client)
    assert isinstance(info.value, errors.CommandFailed) and info.value.code == exception.CODE


def test_busy_and_cancelled_while_a_calibration_runs(start_agent, connect):
    agent = start_agent()
    client = connect(agent)
    pending = client.send_command("calibrate", {"what": "all"}, ttl=60)
    wait_until(lambda: client.status().busy == "calibrate", timeout=10, message="the calibration to start")
    with pytest.raises(errors.Busy):
        client.set_controls(ExposureTime=5000)
    assert client.command("cancel", {"id": pending.id})["cancelled"] == [pending.id]
    with pytest.raises(errors.Cancelled):
        pending.future.result(timeout=30)


def test_a_calibration_that_times_out_is_cancelled_on_the_agent_and_saves_nothing(start_agent, connect, tmp_path):
    """Breaker B3: `calibrate(timeout=1)` raised Timeout while the calibration went on holding the camera and
    then replaced the saved calibration. Now the timeout cancels it: the agent is idle, nothing is saved."""
    state = tmp_path / "state"
    # At 5 fps "all" needs several seconds of frames whatever the CPU: far more than the 1 s allowed.
    agent = start_agent(camera=SimulatedCamera(sensor="imx219", scene="white", seed=2), state_dir=state, fps=5.0)
    client = connect(agent)
    saved_before = sorted((p.relative_to(state), p.read_bytes()) for p in state.rglob("*") if p.is_file())
    with pytest.raises(errors.Timeout) as timed_out:
        client.calibrate("all", timeout=1.0)
    assert "cancelled on the agent" in timed_out.value.message, timed_out.value.message
    assert client.status().busy is None
    client.set_controls(ExposureTime=5000)  # the camera is free again
    saved_after = sorted((p.relative_to(state), p.read_bytes()) for p in state.rglob("*") if p.is_file())
    assert saved_after == saved_before


def test_every_protocol_error_code_has_one_exception_class_under_one_base():
    assert set(errors.ERRORS) >= ErrorCode.ALL
    classes = [errors.ERRORS[code] for code in ErrorCode.ALL]
    assert len(set(classes)) == len(classes)
    for code, cls in errors.ERRORS.items():
        exc = errors.command_error(code, "why", {"k": 1})
        assert type(exc) is cls and isinstance(exc, errors.CommandFailed) and exc.code == code
        assert exc.message == "why" and exc.detail == {"k": 1} and cls.__doc__
    unknown = errors.command_error("from_the_future", "a code this client does not know")
    assert type(unknown) is errors.CommandFailed
    assert isinstance(errors.command_error("timeout", "t"), TimeoutError)
    # and every code the client itself fails a command with (breaker B10: three had no class)
    source = (ROOT / "host_viewer" / "client.py").read_text()
    own = set(re.findall(r'(?:_fail\([^,]+,|command_error\()\s*"([a-z_]+)"', source))
    assert {"timeout", "reply_lost", "agent_restarted", "unreachable"} <= own, own
    assert own <= set(errors.ERRORS), own - set(errors.ERRORS)


def test_misuses_of_the_client_fail_at_once_with_a_sentence(start_agent, connect):
    """Breaker B7, B11, B14: a timeout that is no finite number of seconds, a closed client, and a command
    waited for inside a callback (on the I/O thread that would carry its reply)."""
    import math

    client = connect(start_agent())
    for bad in (math.inf, math.nan, 1e12):
        with pytest.raises(ValueError, match="timeout must be a finite number of seconds"):
            client.command("status", timeout=bad)
    inside: list = []

    def on_progress(_progress):
        if not inside:
            try:
                client.status()
            except RuntimeError as exc:
                inside.append(str(exc))

    client.calibrate("exposure", on_progress=on_progress, timeout=60)
    assert inside and "I/O thread" in inside[0]
    assert client.reconnects == 0  # the I/O thread was never blocked
    client.close()
    with pytest.raises(errors.ClientClosed, match="closed"):
        client.status()


@pytest.mark.parametrize("name, args", [("set_controls", {1: 2}), ("set_controls", {"controls": {7: 1}})])
def test_a_command_the_agent_could_not_read_is_refused_before_it_is_sent(start_agent, connect, name, args):
    """Breaker B6: the agent answers an unreadable message with a protocol error that carries no command id,
    so the command waited out its timeout and said "no reply"; it is refused at once, saying why."""
    client = connect(start_agent())
    with pytest.raises(errors.BadArgument, match="could not read it"):
        client.command(name, args, timeout=30)
    assert client.command("status")["viewers"] == 1
