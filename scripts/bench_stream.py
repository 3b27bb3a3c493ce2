"""Streaming: picamlink against imagezmq (PUB/SUB) and a bare ZeroMQ PUSH/PULL, side by side, in one run.

    python scripts/bench_stream.py            # everything (≈ 10 min); writes section "stream" of docs/benchmarks.md
    python scripts/bench_stream.py --quick    # a short smoke run of every part; writes nothing

The same pre-rendered frames (replay files made from the simulator, cached in --cache) feed all three:
  picamlink  the agent with a replay camera → AgentClient (the host-viewer library), decoding every frame it takes;
  imagezmq   imagezmq.ImageSender(REQ_REP=False).send_jpg → ImageHub.recv_jpg, decode (imagezmq from PyPI);
  bare       encode → zmq PUSH (copy=False) → PULL → decode: no protocol at all, the floor.
All encode with simplejpeg at the same quality, 4:2:0, and decode with simplejpeg. Sender and receiver are
separate processes; the sender (the agent) is pinned to one core with taskset, the receiver to the other;
each reads its own CPU time (getrusage, all threads) over the same measuring window on CLOCK_MONOTONIC.

Parts (issue 15's table, and issue 17's lossy links):
  cpu         640x480 at 30 fps and at --max-fps: CPU ms per frame sent, fps, frame age (repeats interleaved,
              the best of each kept by one rule for all methods); and the same under a CPU quota (cgroup
              cpu controller: --quota % of one core, standing in for a slower core): frames per second that fit.
  idle        the agent with nobody watching: CPU % of a core, frames captured and encoded.
  free        a free-running camera (--fps 0): frames captured, analysed (stream statistics), encoded, sent.
  bytes       bytes per frame beyond the JPEG: compact statistics (default) and full ones (hello "full_stats").
  connect     viewer start → first frame, --connects times.
  link        a shaped link between two network namespaces this script creates (user-space TAP shaper,
              scripts/shaped_link.py; this kernel has no netem), falling back to a loopback TCP shaper:
              5 Mbit/s, 3 ± 2 ms, 0.5 % loss, 640x480 at 30 fps, each method in turn; and 10 Mbit/s, 20 ± 5 ms,
              1 % loss (then delay alone) with host-viewer's adaptive credit and a fixed 2-credit viewer on the
              same link at the same time.
  window      the windowed viewer (host_viewer.app.ViewerApp, a real OpenCV window under Xvfb) on 1920x1080 at
              30 fps: frames received, frames shown, CPU per shown frame against decode alone.
  slow        a slow consumer: the viewer takes 5 fps from a 30 fps stream.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

METHODS = ("picamlink", "imagezmq", "bare")
QUALITY = 80
AGENT_CPU, VIEWER_CPU = "1", "0"  # taskset cores: the sender (agent) on one, receivers on the other

# ------------------------------------------------------------------------------------------------ helpers
def cpu_seconds() -> float:
    """User + system CPU seconds of this process, all threads."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def encode(image: np.ndarray, quality: int) -> bytes:
    import simplejpeg

    return simplejpeg.encode_jpeg(image, quality=quality, colorspace="BGR", colorsubsampling="420")


def decode(jpeg) -> np.ndarray:
    import simplejpeg

    return simplejpeg.decode_jpeg(jpeg, colorspace="BGR")


class Window:
    """The measuring window [start, end] on CLOCK_MONOTONIC, shared by sender and receiver processes."""

    def __init__(self, start: float, end: float):
        self.start, self.end = start, end
        self.cpu0: float | None = None
        self.cpu1: float | None = None

    def tick(self, now: float) -> None:
        """Read the CPU clock when the window opens and when it closes."""
        if self.cpu0 is None and now >= self.start:
            self.cpu0 = cpu_seconds()
        if self.cpu1 is None and now >= self.end:
            self.cpu1 = cpu_seconds()

    def inside(self, now: float) -> bool:
        return self.start <= now < self.end

    @property
    def cpu(self) -> float:
        return (self.cpu1 or cpu_seconds()) - (self.cpu0 or 0.0)


def sleep_until(deadline: float) -> None:
    """Sleep until CLOCK_MONOTONIC reaches `deadline` (time.sleep may wake early by a few µs)."""
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(left)


class Pacer:
    """A camera clock: `wait()` returns at `fps` (0: at once); when late it drops the backlog."""

    def __init__(self, fps: float):
        self.period = 1.0 / fps if fps > 0 else 0.0
        self.deadline: float | None = None

    def wait(self) -> None:
        if not self.period:
            return
        now = time.monotonic()
        if self.deadline is None or self.deadline < now - self.period:
            self.deadline = now
        else:
            self.deadline += self.period
        if self.deadline > now:
            time.sleep(self.deadline - now)


# ------------------------------------------------------------------------------------------------ senders
def make_agent(args):
    from pi_agent.agent import Agent
    from pi_agent.camera.replay import ReplayCamera
    from pi_agent.cli import limit_opencv_threads

    camera = ReplayCamera(args.replay)
    limit_opencv_threads(camera)  # as `pi-agent --camera replay:FILE` does
    return Agent(camera, f"{args.host}:{args.port}", size=tuple(args.size), fps=args.fps, quality=args.quality)


def send_picamlink(args, window: Window) -> dict:
    agent = make_agent(args)
    agent.start()
    counters, pipeline = agent.server.counters, agent.pipeline

    def read() -> dict:
        return {"sent": counters["frames_sent"], "captured": pipeline.frames_captured,
                "encoded": pipeline.frames_encoded, "analysed": pipeline.stream_stats}

    try:
        # Sleep to each edge of the window (no polling loop here: its wake-ups would count as the agent's CPU).
        sleep_until(window.start)
        before = read()
        window.tick(time.monotonic())
        sleep_until(window.end)
        window.tick(time.monotonic())
        after = read()
        time.sleep(args.tail)
    finally:
        agent.stop()
    delta = {k: after[k] - before[k] for k in after}
    return {"frames": delta["sent"], "cpu": window.cpu, **delta}


def send_loop(args, window: Window, send) -> dict:
    """The imagezmq and bare senders: take a frame at the source rate, stamp it, encode, send."""
    with np.load(args.replay) as data:
        frames = list(data["main"])
    pacer = Pacer(args.fps)
    sent = 0
    i = 0
    stop = window.end + args.tail
    while True:
        pacer.wait()
        now = time.monotonic()
        window.tick(now)
        if now >= stop:
            break
        captured_ns = time.monotonic_ns()
        jpeg = encode(frames[i % len(frames)], args.quality)
        i += 1
        if send(captured_ns, jpeg) and window.inside(now):
            sent += 1
    return {"frames": sent, "captured": sent, "encoded": sent, "analysed": 0, "sent": sent, "cpu": window.cpu}


def send_imagezmq(args, window: Window) -> dict:
    import imagezmq
    import zmq

    sender = imagezmq.ImageSender(connect_to=f"tcp://{args.host}:{args.port}", REQ_REP=False)  # PUB binds
    try:
        def send(captured_ns: int, jpeg: bytes) -> bool:
            sender.send_jpg(str(captured_ns), jpeg)
            return True

        return send_loop(args, window, send)
    finally:
        sender.zmq_socket.setsockopt(zmq.LINGER, 0)
        sender.close()


def send_bare(args, window: Window) -> dict:
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDTIMEO, 500)
    sock.bind(f"tcp://{args.host}:{args.port}")
    try:
        def send(captured_ns: int, jpeg: bytes) -> bool:
            try:
                sock.send_multipart([captured_ns.to_bytes(8, "little"), jpeg], copy=False)
                return True
            except zmq.Again:
                return False

        return send_loop(args, window, send)
    finally:
        sock.close(linger=0)
        ctx.term()


def run_pipeline(args, window: Window) -> dict:
    """The agent's capture thread alone (capture, statistics, JPEG, frame message) with no sockets: what the
    whole agent costs beyond it is the socket side (server thread, ZeroMQ, wake-ups)."""
    from pi_agent.camera.replay import ReplayCamera
    from pi_agent.cli import limit_opencv_threads
    from pi_agent.pipeline import CapturePipeline

    camera = ReplayCamera(args.replay)
    limit_opencv_threads(camera)
    camera.configure(tuple(args.size), args.fps)
    pipeline = CapturePipeline(camera, on_frame=lambda frame: None, quality=args.quality)
    pipeline.start()
    try:
        sleep_until(window.start)
        before = pipeline.frames_encoded
        window.tick(time.monotonic())
        sleep_until(window.end)
        window.tick(time.monotonic())
        frames = pipeline.frames_encoded - before
    finally:
        pipeline.stop()
    return {"frames": frames, "cpu": window.cpu, "captured": frames, "encoded": frames, "analysed": frames,
            "sent": 0}


def run_idle(args, window: Window) -> dict:
    """The agent alone: nobody connects."""
    return send_picamlink(args, window)


# ------------------------------------------------------------------------------------------------ receivers
def receive_loop(args, window: Window, take) -> dict:
    """take() -> (capture_ns, jpeg buffer, message bytes) or None on timeout; decode each; record age."""
    taker = Pacer(args.take_fps)  # the viewer's pace (0: as fast as frames come)
    ages: list[tuple[float, float]] = []  # (seconds since window start, age ms)
    wire = jpeg_bytes = 0
    while True:
        taker.wait()
        now = time.monotonic()
        window.tick(now)
        if now >= window.end:
            break
        got = take()
        if got is None:
            continue
        captured_ns, jpeg, size = got
        decode(jpeg)
        done_ns = time.monotonic_ns()
        now = done_ns / 1e9
        if window.inside(now):
            ages.append((now - window.start, (done_ns - captured_ns) / 1e6))
            wire += size
            jpeg_bytes += len(jpeg)
    return {"frames": len(ages), "cpu": window.cpu, "ages": ages, "wire_bytes": wire, "jpeg_bytes": jpeg_bytes}


def picamlink_client(args):
    from host_viewer.client import AgentClient

    return AgentClient(f"{args.host}:{args.port}", credit=args.credit, adaptive_credit=not args.fixed_credit,
                       full_stats=args.full_stats)


def receive_picamlink(args, window: Window) -> dict:
    with picamlink_client(args) as client:
        client.wait_connected(timeout=20)
        last = [None]

        def take():
            try:
                frame = client.wait_frame(timeout=0.5, after=last[0])
            except TimeoutError:
                return None
            last[0] = frame
            return frame.capture_ns, frame.jpeg, frame.wire_bytes

        result = receive_loop(args, window, take)
        result["window_credit"] = client._governor.target
        return result


def receive_imagezmq(args, window: Window) -> dict:
    import imagezmq
    import zmq

    hub = imagezmq.ImageHub(open_port=f"tcp://{args.host}:{args.port}", REQ_REP=False)  # SUB connects
    hub.zmq_socket.setsockopt(zmq.RCVTIMEO, 500)
    try:
        def take():
            try:
                msg, jpeg = hub.recv_jpg()
            except zmq.Again:
                return None
            jpeg = jpeg.buffer if hasattr(jpeg, "buffer") else jpeg
            return int(msg), jpeg, len(jpeg) + len(msg)

        return receive_loop(args, window, take)
    finally:
        hub.zmq_socket.setsockopt(zmq.LINGER, 0)
        hub.close()


def receive_bare(args, window: Window) -> dict:
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 500)
    sock.connect(f"tcp://{args.host}:{args.port}")
    try:
        def take():
            try:
                stamp, jpeg = sock.recv_multipart(copy=False)
            except zmq.Again:
                return None
            return int.from_bytes(stamp.bytes, "little"), jpeg.buffer, len(jpeg.buffer) + 8

        return receive_loop(args, window, take)
    finally:
        sock.close(linger=0)
        ctx.term()


def run_connect(args, window: Window) -> dict:
    """Viewer start → first frame, `args.connects` times (a fresh client each time)."""
    import host_viewer.client  # noqa: F401 - imported before the clock starts: a library user's program has it

    sleep_until(window.start)
    times = []
    for _ in range(args.connects):
        if time.monotonic() > window.end - 1.0:
            break  # the agent stops at the window's end: no connection may outlive it
        t0 = time.monotonic()
        with picamlink_client(args) as client:
            client.wait_frame(timeout=10)
            times.append((time.monotonic() - t0) * 1e3)
        time.sleep(0.2)
    return {"frames": len(times), "cpu": 0.0, "connect_ms": times}


def run_window(args, window: Window) -> dict:
    """The windowed viewer (a real OpenCV window on $DISPLAY): frames received and shown, CPU per shown frame,
    and where the window thread's CPU goes (thread CPU time of each step: poll_frames = decode, compose =
    scale + overlays into the reused canvas, imshow + waitKey = OpenCV/Qt's conversion and event handling);
    what is left of the process's CPU is the other threads (receiving: ZeroMQ, msgpack, the client's I/O)."""
    import cv2

    import host_viewer.app as app_module
    from host_viewer.app import ViewerApp

    spent = {"decode": 0.0, "compose": 0.0, "imshow": 0.0}

    def timed(step: str, fn):
        def wrapper(*a, **kw):
            t = time.thread_time()
            try:
                return fn(*a, **kw)
            finally:
                spent[step] += time.thread_time() - t
        return wrapper

    with picamlink_client(args) as client, tempfile.TemporaryDirectory() as save_dir:
        client.wait_connected(timeout=20)
        app = ViewerApp(client, save_dir=save_dir)
        app.run(max(0.5, window.start - time.monotonic()))  # warm-up: the window opens, first frames drawn
        app.poll_frames = timed("decode", app.poll_frames)
        app.compose = timed("compose", app.compose)
        original = app_module.cv2
        shim = type("TimedCv2", (), {"__getattr__": staticmethod(lambda name: getattr(cv2, name)),
                                     "imshow": staticmethod(timed("imshow", cv2.imshow)),
                                     "waitKey": staticmethod(timed("imshow", cv2.waitKey))})
        app_module.cv2 = shim()
        try:
            received0, shown0, cpu0 = client.frames_received, app.session.frames, cpu_seconds()
            t0 = time.monotonic()
            app.run(window.end - t0)
            span = time.monotonic() - t0
            received, shown, cpu = client.frames_received - received0, app.session.frames - shown0, cpu_seconds() - cpu0
        finally:
            app_module.cv2 = original
    return {"frames": shown, "received": received, "cpu": cpu, "span": span, "steps": spent}


ROLES = {
    ("sender", "picamlink"): send_picamlink, ("sender", "imagezmq"): send_imagezmq, ("sender", "bare"): send_bare,
    ("receiver", "picamlink"): receive_picamlink, ("receiver", "imagezmq"): receive_imagezmq,
    ("receiver", "bare"): receive_bare, ("idle", "picamlink"): run_idle, ("connect", "picamlink"): run_connect,
    ("window", "picamlink"): run_window, ("pipeline", "picamlink"): run_pipeline,
}


def run_role(args) -> int:
    window = Window(args.start, args.start + args.duration)
    result = ROLES[(args.role, args.method)](args, window)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


# ------------------------------------------------------------------------------------------------ CPU quota
class CpuQuota:
    """A cgroup (v2 `cpu.max` or v1 `cpu.cfs_quota_us`) limiting its processes to `percent` % of one core;
    `prefix()` puts a command in it. `reason` says why it cannot be made (then it is not used)."""

    def __init__(self, percent: float):
        self.percent = percent
        self.path: Path | None = None
        self.reason = ""
        period = 100_000
        quota = int(period * percent / 100)
        name = f"picamlink-bench-{os.getpid()}"
        try:
            if Path("/sys/fs/cgroup/cgroup.controllers").exists():
                self.path = Path("/sys/fs/cgroup") / name
                self.path.mkdir()
                (self.path / "cpu.max").write_text(f"{quota} {period}\n")
            elif Path("/sys/fs/cgroup/cpu").is_dir():
                self.path = Path("/sys/fs/cgroup/cpu") / name
                self.path.mkdir()
                (self.path / "cpu.cfs_period_us").write_text(f"{period}\n")
                (self.path / "cpu.cfs_quota_us").write_text(f"{quota}\n")
            else:
                self.reason = "no cgroup cpu controller"
        except OSError as exc:
            self.reason = f"cannot make a cgroup: {exc}"
            self.close()

    @property
    def usable(self) -> bool:
        return self.path is not None and not self.reason

    def prefix(self) -> list[str]:
        return ["sh", "-c", f'echo $$ > {self.path}/cgroup.procs && exec "$@"', "sh"]

    def close(self) -> None:
        if self.path is not None:
            try:
                self.path.rmdir()
            except OSError:
                pass
            self.path = None


# ------------------------------------------------------------------------------------------------ the parent
def replay_file(cache: Path, size: tuple[int, int], frames: int) -> Path:
    from scripts.make_replay import render, write_replay

    path = cache / f"replay-{size[0]}x{size[1]}-{frames}.npz"
    if not path.exists():
        print(f"rendering {frames} frames at {size[0]}x{size[1]} into {path}", flush=True)
        write_replay(path, render(size, frames))
    return path


def taskset(cpu: str) -> list[str]:
    return ["taskset", "-c", cpu]


def run_group(method: str, replay: Path, size, *, fps: float, duration: float, warmup: float, quality: int,
              receivers: list[dict], role: str = "sender", sender_prefix: list[str] | None = None,
              host: str = "127.0.0.1", connect: tuple[str, int] | None = None, env: dict | None = None,
              port: int | None = None, lead: float = 3.0) -> dict:
    """One measurement: a sender (or agent-only role) and any number of receivers, in separate processes.

    receivers: [{"role": "receiver", "prefix": [...], "args": [...]}]; `connect` = (host, port) receivers
    use instead of the sender's (a shaper in between)."""
    port = port or free_port()
    start = time.monotonic() + lead + warmup  # imports and connection first (`lead` s)
    common = ["--method", method, "--replay", str(replay), "--size", str(size[0]), str(size[1]),
              "--fps", str(fps), "--quality", str(quality), "--start", repr(start), "--duration", str(duration)]
    script = [sys.executable, str(Path(__file__).resolve())]
    procs = []
    sender = subprocess.Popen((sender_prefix or taskset(AGENT_CPU)) + script
                              + ["--role", role, "--host", host, "--port", str(port)] + common,
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    procs.append(("sender", sender))
    to_host, to_port = connect or (host, port)
    for i, r in enumerate(receivers):
        p = subprocess.Popen(r.get("prefix", taskset(VIEWER_CPU)) + script
                             + ["--role", r.get("role", "receiver"), "--host", to_host, "--port", str(to_port)]
                             + common + r.get("args", []),
                             stdout=subprocess.PIPE, text=True, cwd=ROOT, env=r.get("env", env))
        procs.append((f"receiver {i}", p))
    outputs = {}
    try:
        for name, p in reversed(procs):
            outputs[name], _ = p.communicate(timeout=duration + warmup + 90)
    finally:
        for _, p in procs:
            if p.poll() is None:
                p.kill()

    def result(text: str, who: str) -> dict:
        lines = [l for l in (text or "").splitlines() if l.startswith("RESULT ")]
        if not lines:
            raise RuntimeError(f"{method} {who} gave no result (see its stderr above)")
        return json.loads(lines[-1][7:])

    return {"sender": result(outputs["sender"], role), "duration": duration,
            "receivers": [result(outputs[f"receiver {i}"], "receiver") for i in range(len(receivers))]}


def run_pair(method: str, replay: Path, size, *, take_fps: float = 0.0, credit: int = 2, extra: list[str] = (),
             **kw) -> dict:
    run = run_group(method, replay, size, receivers=[{"args": ["--take-fps", str(take_fps), "--credit", str(credit),
                                                                *extra]}], **kw)
    run["receiver"] = run["receivers"][0]
    return run


def baseline(replay: Path, quality: int, repeats: int) -> dict:
    """CPU ms per frame of encode alone, decode alone and the agent's per-frame raw statistics alone (the
    sampled stream statistics and their compact wire map), and the mean JPEG size."""
    import cv2

    from pi_agent.stats import compute_stream_stats

    cv2.setNumThreads(1)  # as the agent runs with a replay or Picamera2 camera (pi_agent.cli.limit_opencv_threads)

    with np.load(replay) as data:
        frames, raws = list(data["main"]), list(data["raw"])
        info = json.loads(str(data["info"]))
    jpegs = [encode(f, quality) for f in frames]

    def per_frame(fn, items) -> float:
        for item in items[:2]:  # warm-up: library set-up and first touches are not per-frame costs
            fn(item)
        c0 = cpu_seconds()
        n = 0
        while n < repeats:
            for item in items:
                fn(item)
                n += 1
        return (cpu_seconds() - c0) / n * 1e3

    return {
        "encode_ms": per_frame(lambda f: encode(f, quality), frames),
        "decode_ms": per_frame(decode, jpegs),
        "stats_ms": per_frame(lambda r: compute_stream_stats(r, info["bayer_order"], info["bit_depth"],
                                                             info["black_level"]).to_compact_wire(), raws),
        "jpeg_bytes": float(np.mean([len(j) for j in jpegs])),
        "raw_size": f"{raws[0].shape[1]}x{raws[0].shape[0]}",
    }


def pct(values, q) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def summarise(run: dict, receiver: dict | None = None) -> dict:
    s, r = run["sender"], receiver or run["receivers"][0]
    ages = [a for _, a in r["ages"]]
    trend = age_trend(r["ages"], run["duration"], min(2.0, run["duration"] / 3))
    return {
        "fps": r["frames"] / run["duration"],
        "age_p50": pct(ages, 50), "age_p99": pct(ages, 99), "slope": trend["slope"],
        "first": trend["first"], "last": trend["last"],
        "send_ms": s["cpu"] / max(s["frames"], 1) * 1e3,
        "recv_ms": r["cpu"] / max(r["frames"], 1) * 1e3,
        "send_fps": s["frames"] / run["duration"],
        "mbit": r.get("wire_bytes", 0) * 8 / 1e6 / run["duration"],
        "overhead": (r.get("wire_bytes", 0) - r.get("jpeg_bytes", 0)) / max(r["frames"], 1),
        "window": r.get("window_credit"),
    }


def age_trend(points, duration: float, seconds: float) -> dict:
    """Median age in the first and last `seconds` of the window and its slope (ms per second of stream)."""
    if len(points) < 2:
        return {"first": float("nan"), "last": float("nan"), "slope": float("nan")}
    t = np.array([p[0] for p in points])
    a = np.array([p[1] for p in points])
    first, last = a[t < seconds], a[t >= duration - seconds]
    return {
        "first": float(np.median(first)) if len(first) else float("nan"),
        "last": float(np.median(last)) if len(last) else float("nan"),
        "slope": float(np.polyfit(t, a, 1)[0]),
    }


def f1(x) -> str:
    return "–" if x is None or x != x else f"{x:.1f}"


def f2(x) -> str:
    return "–" if x is None or x != x else f"{x:.2f}"


def part_cpu(args, cache, q) -> tuple[str, dict]:
    """Agent CPU per frame at 30 fps and at the maximum rate, pinned; frames that fit in a CPU quota."""
    from scripts.benchdoc import table

    replay = replay_file(cache, (640, 480), q["frames"])
    base = baseline(replay, args.quality, q["baseline"])
    print(f"640x480: encode {base['encode_ms']:.2f} ms, decode {base['decode_ms']:.2f} ms, stats "
          f"{base['stats_ms']:.2f} ms (raw {base['raw_size']}), JPEG {base['jpeg_bytes'] / 1e3:.1f} kB", flush=True)
    runs = {m: {"30": [], "max": [], "quota": []} for m in METHODS}
    alone = {"30": [], "max": []}  # the capture pipeline without sockets
    quota = CpuQuota(args.quota)
    try:
        for _ in range(q["repeats"]):  # interleaved: a burst of outside load hits one repeat of every method
            for method in METHODS:
                kw = dict(duration=q["seconds"], warmup=q["warmup"], quality=args.quality)
                runs[method]["30"].append(summarise(run_pair(method, replay, (640, 480), fps=30.0, **kw)))
                runs[method]["max"].append(summarise(run_pair(method, replay, (640, 480), fps=args.max_fps, **kw)))
                if method == "picamlink":
                    for key, rate in (("30", 30.0), ("max", args.max_fps)):
                        s = run_group(method, replay, (640, 480), role="pipeline", fps=rate, receivers=[], **kw)["sender"]
                        alone[key].append(s["cpu"] / max(s["frames"], 1) * 1e3)
                if quota.usable:
                    runs[method]["quota"].append(summarise(run_pair(
                        method, replay, (640, 480), fps=args.max_fps,
                        sender_prefix=quota.prefix() + taskset(AGENT_CPU), **kw)))
    finally:
        quota.close()
    best = {}
    for method in METHODS:
        # The same rule for every method: the run with the least sender CPU per frame (interference only
        # ever adds CPU), and for the quota the run with the most frames.
        best[method] = {
            "30": min(runs[method]["30"], key=lambda r: r["send_ms"]),
            "max": min(runs[method]["max"], key=lambda r: r["send_ms"]),
            "quota": max(runs[method]["quota"], key=lambda r: r["fps"]) if runs[method]["quota"] else None,
        }
        b = best[method]
        print(f"  {method:9s} 30 fps: {b['30']['fps']:.1f} fps, agent {b['30']['send_ms']:.2f} ms/frame, age p50 "
              f"{b['30']['age_p50']:.1f} ms · max: {b['max']['fps']:.1f} fps, {b['max']['send_ms']:.2f} ms/frame"
              + (f" · quota {args.quota:g} %: {b['quota']['fps']:.1f} fps" if b["quota"] else ""), flush=True)
    izmq = best["imagezmq"]
    rows = []
    for method in METHODS:
        b = best[method]
        rows.append([method, f1(b["30"]["fps"]), f2(b["30"]["send_ms"]), f2(b["30"]["send_ms"] / izmq["30"]["send_ms"]),
                     f1(b["30"]["age_p50"]), f1(b["30"]["age_p99"]), f2(b["30"]["recv_ms"]),
                     f1(b["max"]["fps"]), f2(b["max"]["send_ms"]), f2(b["max"]["send_ms"] / izmq["max"]["send_ms"]),
                     f1(b["quota"]["fps"]) if b["quota"] else "–",
                     f2(b["quota"]["send_ms"]) if b["quota"] else "–"])
    text = (f"### Agent CPU per frame, 640x480 (sender pinned to core {AGENT_CPU}, receiver to core {VIEWER_CPU})\n\n"
            f"encode alone {base['encode_ms']:.2f} ms, decode alone {base['decode_ms']:.2f} ms, the agent's stream "
            f"statistics alone {base['stats_ms']:.2f} ms (sampled from the {base['raw_size']} raw mosaic, compact wire "
            f"map); JPEG {base['jpeg_bytes'] / 1e3:.1f} kB. {q['repeats']} interleaved repeat(s) of {q['seconds']:g} s "
            "per method, the one with the least sender CPU per frame kept (the quota: the most frames). Quota: the "
            f"sender in a cgroup limited to {args.quota:g} % of one core"
            + ("" if quota.reason == "" else f" — not run here: {quota.reason}") + f", source at {args.max_fps:g} fps.\n\n"
            + table(["Method", "30 fps: fps", "agent ms/frame", "÷ imagezmq", "age p50 ms", "age p99 ms",
                     "viewer ms/frame", f"{args.max_fps:g} fps source: fps", "agent ms/frame", "÷ imagezmq",
                     f"quota {args.quota:g} %: fps", "agent ms/frame"], rows))
    ours = best["picamlink"]
    pipe30, pipemax = min(alone["30"]), min(alone["max"])
    text += ("\nWhere the agent's CPU per frame goes (ms; the same runs, least of the repeats): the capture pipeline "
             "alone is the agent's capture thread (replay capture, sampled raw statistics, JPEG, frame message) with "
             "no sockets; the rest is the socket side (server thread woken per frame and per credit, ZeroMQ).\n\n"
             + table(["Source", "JPEG encode alone", "statistics alone", "capture pipeline alone", "whole agent",
                      "socket side (difference)", "imagezmq sender", "bare sender"],
                     [["30 fps", f2(base["encode_ms"]), f2(base["stats_ms"]), f2(pipe30), f2(ours["30"]["send_ms"]),
                       f2(ours["30"]["send_ms"] - pipe30), f2(izmq["30"]["send_ms"]), f2(best["bare"]["30"]["send_ms"])],
                      [f"{args.max_fps:g} fps", f2(base["encode_ms"]), f2(base["stats_ms"]), f2(pipemax),
                       f2(ours["max"]["send_ms"]), f2(ours["max"]["send_ms"] - pipemax), f2(izmq["max"]["send_ms"]),
                       f2(best["bare"]["max"]["send_ms"])]]))
    return text, {"best": best, "base": base, "pipeline": (pipe30, pipemax)}


def part_idle_free(args, cache, q) -> tuple[str, dict]:
    from scripts.benchdoc import table

    replay = replay_file(cache, (640, 480), q["frames"])
    idle = run_group("picamlink", replay, (640, 480), role="idle", fps=30.0, duration=q["idle_seconds"],
                     warmup=q["warmup"], quality=args.quality, receivers=[])["sender"]
    idle_pct = idle["cpu"] / q["idle_seconds"] * 100
    print(f"idle agent: {idle_pct:.2f} % of a core, captured {idle['captured']}, encoded {idle['encoded']}", flush=True)
    free = run_pair("picamlink", replay, (640, 480), fps=0.0, duration=q["seconds"], warmup=q["warmup"],
                    quality=args.quality)
    s = free["sender"]
    print(f"free-running: captured {s['captured']}, analysed {s['analysed']}, encoded {s['encoded']}, sent {s['sent']}",
          flush=True)
    text = ("### No work for nobody\n\n"
            f"The agent at 640x480, 30 fps (replay camera), pinned, with no viewer for {q['idle_seconds']:g} s; then "
            f"free-running (`--fps 0`) with one viewer decoding every frame for {q['seconds']:g} s. Counters from the "
            "agent (`status`: frames_captured, stream_stats, frames_encoded, frames_sent).\n\n"
            + table(["Run", "agent CPU % of a core", "captured", "analysed (stream statistics)", "encoded", "sent"],
                    [["no viewer, 30 fps", f"{idle_pct:.2f}", idle["captured"], idle["analysed"], idle["encoded"],
                      idle["sent"]],
                     ["free-running, one viewer", f"{s['cpu'] / q['seconds'] * 100:.1f}", s["captured"],
                      s["analysed"], s["encoded"], s["sent"]]]))
    return text, {"idle_pct": idle_pct, "free": s}


def part_bytes_connect(args, cache, q) -> tuple[str, dict]:
    from scripts.benchdoc import table

    replay = replay_file(cache, (640, 480), q["frames"])
    kw = dict(fps=30.0, duration=q["short_seconds"], warmup=q["warmup"], quality=args.quality)
    compact = summarise(run_pair("picamlink", replay, (640, 480), **kw))
    full = summarise(run_pair("picamlink", replay, (640, 480), extra=["--full-stats"], **kw))
    conn = run_group("picamlink", replay, (640, 480), fps=30.0, duration=q["connects"] * 1.0, warmup=q["warmup"],
                     quality=args.quality, receivers=[{"role": "connect", "args": ["--connects", str(q["connects"])]}])
    times = conn["receivers"][0]["connect_ms"]
    print(f"bytes beyond the JPEG: compact {compact['overhead']:.0f}, full {full['overhead']:.0f}; connect → first "
          f"frame ms {[round(t) for t in times]}", flush=True)
    text = ("### Bytes beyond the JPEG, and connect → first frame\n\n"
            + table(["Frame statistics", "bytes per frame beyond the JPEG (metadata, statistics, envelope)"],
                    [["compact (default)", f"{compact['overhead']:.0f}"], ["full (hello `full_stats`)",
                                                                         f"{full['overhead']:.0f}"],
                     ["imagezmq (its text header)", "≈ 19 (the capture time as text)"]])
            + f"\nViewer start (AgentClient created) → first frame, 640x480 at 30 fps, {len(times)} connections: "
            f"median {pct(times, 50):.0f} ms, max {max(times):.0f} ms "
            f"(each: {', '.join(f'{t:.0f}' for t in times)}). Part of it is the wait for the camera's next frame "
            "(≤ 33 ms at 30 fps): the agent encodes only for a viewer holding credit.\n")
    return text, {"compact": compact["overhead"], "full": full["overhead"], "connect": times}


def make_link(rate: float, delay_ms: float, jitter_ms: float, loss: float):
    from scripts.shaped_link import NamespaceLink, namespaces_available

    why = namespaces_available()
    if why is None:
        try:
            return NamespaceLink(rate, delay_ms, jitter_ms, loss).__enter__(), ""
        except Exception as exc:  # e.g. no permission for netns inside a container
            why = str(exc)
    return None, why


def run_on_link(method: str, replay, size, rate, delay_ms, jitter_ms, loss, receivers: list[dict], **kw) -> tuple[dict, str]:
    """One run across a fresh shaped link (namespaces, or the loopback TCP shaper as fallback)."""
    from scripts.shaped_link import LoopbackShaper

    link, why = make_link(rate, delay_ms, jitter_ms, loss)
    if link is not None:
        try:
            for r in receivers:
                r["prefix"] = link.prefix("b") + taskset(VIEWER_CPU)
            run = run_group(method, replay, size, receivers=receivers, host=link.address("a"),
                            sender_prefix=link.prefix("a") + taskset(AGENT_CPU), **kw)
            return run, link.describe() + " (network namespaces, user-space TAP shaper)"
        finally:
            link.close()
    # fallback: the sender on loopback, receivers through a loopback TCP shaper made for its port
    port = free_port()
    shaper = LoopbackShaper(port, rate, delay_ms, jitter_ms)
    try:
        run = run_group(method, replay, size, receivers=receivers, port=port,
                        connect=("127.0.0.1", shaper.port), **kw)
        return run, shaper.describe() + f" (namespaces unavailable: {why})"
    finally:
        shaper.close()


def part_link(args, cache, q) -> tuple[str, dict]:
    from scripts.benchdoc import table

    replay = replay_file(cache, (640, 480), q["frames"])
    kw = dict(fps=30.0, duration=q["link_seconds"], warmup=q["warmup"] + 1.0, quality=args.quality)
    rows, out, where = [], {}, ""
    for method in METHODS:
        run, where = run_on_link(method, replay, (640, 480), 5e6, 3.0, 2.0, 0.005, [{"args": []}], **kw)
        r = summarise(run)
        out[method] = r
        print(f"5 Mbit/s {method}: {r['fps']:.1f} fps, age p50 {r['age_p50']:.0f} p99 {r['age_p99']:.0f} ms, "
              f"slope {r['slope']:.1f} ms/s, {r['mbit']:.2f} Mbit/s, window {r['window']}", flush=True)
        rows.append([method, f1(r["fps"]), f"{r['age_p50']:.0f}", f"{r['age_p99']:.0f}", f"{r['first']:.0f}",
                     f"{r['last']:.0f}", f1(r["slope"]), f2(r["mbit"])])
    text = (f"### Thin link: {where}, 640x480 at 30 fps, {q['link_seconds']:g} s per method\n\n"
            + table(["Method", "fps received", "age p50 ms", "age p99 ms", "age first 2 s", "age last 2 s",
                     "age growth ms/s", "Mbit/s received"], rows))
    lossy_rows = []
    for label, loss in (("1 % loss", 0.01), ("delay alone", 0.0)):
        receivers = [{"args": []}, {"args": ["--fixed-credit", "--credit", "2"]}]
        run, where = run_on_link("picamlink", replay, (640, 480), 10e6, 20.0, 5.0, loss, receivers, **kw)
        adaptive, fixed = summarise(run, run["receivers"][0]), summarise(run, run["receivers"][1])
        out[label] = (adaptive, fixed)
        for name, r in (("host-viewer (adaptive credit)", adaptive), ("fixed 2 credits", fixed)):
            print(f"10 Mbit/s {label} {name}: {r['fps']:.1f} fps, p50 {r['age_p50']:.0f} ms, p99 {r['age_p99']:.0f}, "
                  f"window {r['window']}", flush=True)
            lossy_rows.append([f"{label}: {where.split(' (')[0]}", name, f1(r["fps"]), f"{r['age_p50']:.0f}",
                               f"{r['age_p99']:.0f}", f1(r["slope"]), str(r["window"])])
    text += ("\n### Lossy link (issue 17): host-viewer's adaptive credit and a fixed 2-credit viewer, same link, "
             "same time\n\n"
             f"Both viewers connected at once to one agent across the same shaped link, 640x480 at 30 fps, "
             f"{q['link_seconds']:g} s; `window` = the credit window the viewer held at the end.\n\n"
             + table(["Link", "Viewer", "fps received", "age p50 ms", "age p99 ms", "age growth ms/s", "window"],
                     lossy_rows))
    return text, out


def part_window(args, cache, q) -> tuple[str, dict]:
    from scripts.benchdoc import table
    from scripts.xdisplay import XServer, missing_tools

    missing = [t for t in missing_tools() if t.startswith("Xvfb")]
    if missing:
        return f"### Windowed viewer\n\nNot run: {', '.join(missing)} missing.\n", {}
    size = (1920, 1080)
    replay = replay_file(cache, size, q["frames"])
    base = baseline(replay, args.quality, q["baseline"] // 4 or 4)
    rows, out = [], {}
    server = XServer(screen="2048x1536x24").start()
    try:
        for label, extra in (("adaptive credit (default)", []), ("fixed 2 credits", ["--fixed-credit"])):
            run = run_group("picamlink", replay, size, fps=30.0, duration=q["seconds"], warmup=q["warmup"] + 1.0,
                            quality=args.quality, receivers=[{"role": "window", "env": server.env, "args": extra}])
            w = run["receivers"][0]
            shown_fps, received_fps = w["frames"] / w["span"], w["received"] / w["span"]
            per_shown = w["cpu"] / max(w["frames"], 1) * 1e3
            steps = {k: v / max(w["frames"], 1) * 1e3 for k, v in w.get("steps", {}).items()}
            others = per_shown - sum(steps.values())
            print(f"window 1080p, {label}: received {received_fps:.1f} fps, shown {shown_fps:.1f} fps, "
                  f"{per_shown:.1f} ms CPU per shown frame (decode alone {base['decode_ms']:.1f} ms; in the viewer: "
                  + ", ".join(f"{k} {v:.2f}" for k, v in steps.items()) + f", other threads {others:.2f})", flush=True)
            rows.append([label, f1(received_fps), f1(shown_fps), f1(per_shown), f1(base["decode_ms"]),
                         f2(per_shown / base["decode_ms"])]
                        + [f2(steps.get(k, float("nan"))) for k in ("decode", "compose", "imshow")] + [f2(others)])
            out[label] = {"received": received_fps, "shown": shown_fps, "per_shown": per_shown, "steps": steps}
    finally:
        server.stop()
    text = ("### Windowed viewer, 1920x1080 at 30 fps (a real OpenCV window under Xvfb)\n\n"
            "host_viewer.app.ViewerApp with its default overlays, pinned to one core, the agent on the other. CPU: "
            "the viewer process, all threads (receive, decode, compose, imshow).\n\n"
            + table(["Viewer credit", "fps received", "fps shown", "viewer CPU ms per shown frame", "decode alone ms",
                     "÷ decode", "window thread: decode", "compose", "imshow + waitKey", "other threads"], rows)
            + "\nThe last four columns split the CPU per shown frame (thread CPU time of each step in the viewer's "
              "window thread; other threads = the rest of the process: receiving, ZeroMQ, msgpack).\n")
    return text, out


def part_slow(args, cache, q) -> tuple[str, dict]:
    from scripts.benchdoc import table

    replay = replay_file(cache, (640, 480), q["frames"])
    rows = []
    for method in ("picamlink", "imagezmq"):
        r = summarise(run_pair(method, replay, (640, 480), fps=30.0, duration=q["slow_seconds"], warmup=q["warmup"],
                               quality=args.quality, take_fps=5.0))
        print(f"slow consumer {method}: {r['fps']:.1f} fps, age first {r['first']:.0f} last {r['last']:.0f} ms", flush=True)
        rows.append([method, f1(r["fps"]), f"{r['first']:.0f}", f"{r['last']:.0f}", f"{r['age_p99']:.0f}", f1(r["slope"])])
    return (f"### Slow consumer: the viewer takes 5 fps from a 30 fps stream, 640x480, {q['slow_seconds']:g} s\n\n"
            + table(["Method", "fps taken", "age first 2 s ms", "age last 2 s ms", "age p99 ms", "growth ms/s"], rows),
            {})


PARTS = {"cpu": part_cpu, "idle": part_idle_free, "bytes": part_bytes_connect, "link": part_link,
         "window": part_window, "slow": part_slow}


def parent(args) -> int:
    from scripts.benchdoc import write_section

    import signal

    # A terminated run still removes its network namespaces and cgroup (the `finally` clauses run).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    if args.quick:
        q = {"frames": 4, "baseline": 12, "repeats": 1, "seconds": 1.5, "warmup": 0.5, "idle_seconds": 2.0,
             "short_seconds": 1.0, "connects": 3, "link_seconds": 3.0, "slow_seconds": 3.0}
    else:
        q = {"frames": 12, "baseline": 120, "repeats": args.repeats, "seconds": args.seconds, "warmup": 1.0,
             "idle_seconds": 10.0, "short_seconds": 3.0, "connects": 9, "link_seconds": args.link_seconds,
             "slow_seconds": args.slow_seconds}
    parts = args.parts.split(",") if args.parts else list(PARTS)
    texts, results = [], {}
    t0 = time.monotonic()
    for name in parts:
        print(f"\n== {name}", flush=True)
        text, results[name] = PARTS[name](args, cache, q)
        texts.append(text)
    text = "\n".join(texts)
    print("\n" + text)
    print(f"({time.monotonic() - t0:.0f} s)")
    if not args.quick and not args.parts:
        intro = (f"One machine ({os.cpu_count()} cores); sender and receivers in separate processes; JPEG quality "
                 f"{args.quality} 4:2:0 (simplejpeg) for all; imagezmq {imagezmq_version()} PUB/SUB. "
                 + (args.note + " " if args.note else "") + "Compare rows of one run.\n\n")
        write_section("stream", intro + text)
    return 0


def imagezmq_version() -> str:
    try:
        from importlib.metadata import version

        return version("imagezmq")
    except Exception:
        return "?"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="parts: " + ", ".join(PARTS), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short runs of every part; writes nothing")
    p.add_argument("--parts", help="comma-separated subset of the parts (then nothing is written)")
    p.add_argument("--seconds", type=float, default=5.0, help="measuring window of the CPU, free and window runs")
    p.add_argument("--link-seconds", type=float, default=12.0, help="measuring window of each shaped-link run")
    p.add_argument("--slow-seconds", type=float, default=10.0, help="slow consumer window")
    p.add_argument("--max-fps", type=float, default=240.0, help="source rate of the maximum-rate and quota runs")
    p.add_argument("--quota", type=float, default=10.0, help="CPU quota of the quota run, %% of one core")
    p.add_argument("--repeats", type=int, default=3, help="CPU runs per method (best kept)")
    p.add_argument("--quality", type=int, default=QUALITY)
    p.add_argument("--note", default="", help="a sentence for the doc's intro (e.g. that the machine was shared)")
    p.add_argument("--cache", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "picamlink-bench"),
                   help="where the replay files are kept")
    # the child processes
    p.add_argument("--role", choices=("sender", "receiver", "idle", "connect", "window", "pipeline"),
                   help=argparse.SUPPRESS)
    p.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)
    p.add_argument("--replay", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--fps", type=float, default=30.0, help=argparse.SUPPRESS)
    p.add_argument("--host", default="127.0.0.1", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--start", type=float, help=argparse.SUPPRESS)
    p.add_argument("--duration", type=float, help=argparse.SUPPRESS)
    p.add_argument("--take-fps", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--credit", type=int, default=2, help=argparse.SUPPRESS)
    p.add_argument("--fixed-credit", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--full-stats", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--connects", type=int, default=9, help=argparse.SUPPRESS)
    p.add_argument("--tail", type=float, default=0.3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.role:
        return run_role(args)
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
