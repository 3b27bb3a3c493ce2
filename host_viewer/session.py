"""What a viewing run measures: frames decoded, their ages, rates; and the JSON summary of it."""

from __future__ import annotations

import time

from .client import AgentClient
from .stats import RateMeter, percentile


def _round(value, digits: int = 2):
    return None if value is None else round(value, digits)


class ViewingSession:
    def __init__(self, client: AgentClient):
        self.client = client
        self.ages: list[float] = []
        self.frames = 0
        self.first: float | None = None
        self.last: float | None = None
        self.width = self.height = 0
        self.fps_meter = RateMeter()

    def record(self, frame, image) -> float:
        """Count one decoded frame; returns its age in ms (capture on the agent → decoded here)."""
        now_ns = time.monotonic_ns()
        age = (now_ns + self.client.clock.offset_ns - frame.capture_ns) / 1e6
        if self.client.clock.known:
            self.ages.append(age)
        self.frames += 1
        now = now_ns / 1e9
        self.first = self.first or now
        self.last = now
        self.height, self.width = image.shape[:2]
        self.fps_meter.add(1, now)
        return age

    def summary(self) -> dict:
        welcome = self.client.welcome
        span = (self.last - self.first) if self.first and self.last and self.last > self.first else 0.0
        best = self.client.clock.best
        return {
            "frames": self.frames,
            "fps": round((self.frames - 1) / span, 2) if span else 0.0,
            "width": self.width,
            "height": self.height,
            "age_ms_p50": _round(percentile(self.ages, 50)),
            "age_ms_p99": _round(percentile(self.ages, 99)),
            "dropped": self.client.frames_dropped,
            "sensor": welcome.sensor.get("model") if welcome else None,
            "agent": welcome.agent.get("name") if welcome else None,
            "state": self.client.state,
            "reconnects": self.client.reconnects,
            "clock_offset_ms": _round(best.offset_ns / 1e6 if best else None),
            "rtt_ms": _round(best.rtt_ns / 1e6 if best else None),
            "mbit_s": round(self.client.bytes_received * 8 / 1e6 / span, 3) if span else 0.0,
            "events": dict(self.client.event_counts),  # the agent's events by name, e.g. {"camera_error": 2}
        }
