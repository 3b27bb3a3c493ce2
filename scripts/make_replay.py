"""Render frames with the simulated camera and save them as a replay file for `--camera replay:FILE`.

    python scripts/make_replay.py replay-640x480.npz --size 640x480 --frames 30
    python -m pi_agent.cli --camera replay:replay-640x480.npz --fps 30

The file holds the main BGR frames, the raw mosaics and each frame's metadata (see pi_agent/camera/replay.py).
It is written to a temporary file in the same directory, fsynced and renamed: never half-written.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pi_agent.camera.replay import FORMAT, VERSION  # noqa: E402
from pi_agent.camera.sim import SimulatedCamera  # noqa: E402
from pi_agent.wire import plain  # noqa: E402

log = logging.getLogger("make_replay")

# Per-frame values that the replay camera sets itself when it serves the frame.
SERVED_FIELDS = ("SensorTimestamp",)


def render(size: tuple[int, int], frames: int, *, sensor: str = "imx219", scene: str = "chart",
           colour_temperature: float = 5000.0, seed: int = 0, warmup: int = 8) -> dict[str, np.ndarray]:
    """`frames` frames of the simulator (after `warmup` frames for auto exposure to settle), as npz arrays."""
    camera = SimulatedCamera(sensor=sensor, scene=scene, colour_temperature=colour_temperature, seed=seed,
                             pacing=False)
    camera.configure(size, 30.0)
    camera.start()
    try:
        for _ in range(warmup):
            camera.capture()
        captured = [camera.capture() for _ in range(frames)]
    finally:
        camera.close()
    first = captured[0]
    info = {"format": FORMAT, "version": VERSION, "sensor": camera.sensor.model, "bayer_order": first.bayer_order,
            "bit_depth": first.bit_depth, "black_level": first.black_level, "fps": 30.0}
    metadata = [{k: v for k, v in plain(f.metadata).items() if k not in SERVED_FIELDS} for f in captured]
    return {
        "main": np.stack([f.main for f in captured]),
        "raw": np.stack([f.raw for f in captured]),
        "info": np.array(json.dumps(info)),
        "metadata": np.array(json.dumps(metadata)),
    }


def write_replay(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """Write an npz atomically: temporary file in the same directory, fsync, os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    from pi_agent.cli import parse_size

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("output", help="replay file to write (.npz)")
    p.add_argument("--size", type=parse_size, default=(640, 480), metavar="WxH", help="main stream size")
    p.add_argument("--frames", type=int, default=30, help="number of frames (served in a cycle)")
    p.add_argument("--sensor", default="imx219")
    p.add_argument("--scene", default="chart")
    p.add_argument("--colour-temperature", type=float, default=5000.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.frames < 1:
        p.error("--frames must be ≥ 1")
    try:
        arrays = render(args.size, args.frames, sensor=args.sensor, scene=args.scene,
                        colour_temperature=args.colour_temperature, seed=args.seed)
    except ValueError as exc:
        print(f"make_replay: {exc}", file=sys.stderr)
        return 2
    write_replay(args.output, arrays)
    log.info("wrote %s: %d frames, main %s, raw %s", args.output, args.frames, arrays["main"].shape[1:3],
             arrays["raw"].shape[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
