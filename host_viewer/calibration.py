"""Asking the agent to calibrate: the command, progress lines, and the summary's `calibration` object.

Used by the headless CLI and by the window's keys (calibration_ui.py); usable from a Python program too.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from protocol import Progress

from .client import AgentClient, PendingCommand

log = logging.getLogger(__name__)

# CLI spelling → command argument
WHAT = {"exposure": "exposure", "white-balance": "white_balance", "lens-shading": "lens_shading", "all": "all"}
TIMEOUT = 180.0  # seconds a whole "all" may take on a slow Pi (long exposures, 12 MP raw)


def calibrate_args(what: str, *, target: float | None = None, tolerance: float | None = None,
                   percentile: float | None = None) -> dict[str, Any]:
    """The `calibrate` command's arguments (CLI spellings such as "white-balance" accepted)."""
    args: dict[str, Any] = {"what": WHAT.get(what, what)}
    for name, value in (("target", target), ("tolerance", tolerance), ("percentile", percentile)):
        if value is not None:
            args[name] = value
    return args


def start_calibration(client: AgentClient, what: str, *, target: float | None = None,
                      tolerance: float | None = None, percentile: float | None = None,
                      on_progress: Callable[[Progress], None] | None = None) -> PendingCommand:
    """Send `calibrate`; the returned PendingCommand's future gives the result value (or CommandFailed)."""
    args = calibrate_args(what, target=target, tolerance=tolerance, percentile=percentile)
    return client.send_command("calibrate", args, ttl=TIMEOUT, on_progress=on_progress)


def progress_line(progress: Progress) -> str:
    """One human line for a progress event, e.g. `exposure  40%  level=312.0 target=636.0`."""
    detail = " ".join(f"{k}={v}" for k, v in progress.detail.items() if not isinstance(v, (dict, list, bytes)))
    return f"calibrate: {progress.step:<13} {progress.fraction * 100:5.1f}%  {detail}".rstrip()


def calibration_summary(result: dict[str, Any]) -> dict[str, Any]:
    """The summary JSON's `calibration` object: only the parts that ran."""
    out: dict[str, Any] = {}
    if "exposure" in result:
        e = result["exposure"]
        out["exposure"] = {k: e.get(k) for k in ("level", "target", "measurements", "frames", "seconds")}
        out["exposure"].update({k: e.get(k) for k in ("ExposureTime", "AnalogueGain", "converged", "reason")})
        if e.get("passes"):  # every exposure pass of the run ("all" has two); the totals above sum them
            out["exposure"]["passes"] = e["passes"]
    if "white_balance" in result:
        w = result["white_balance"]
        out["white_balance"] = {k: w.get(k) for k in ("colour_gains", "neutral_error_pct")}
    if "lens_shading" in result:
        s = result["lens_shading"]
        out["lens_shading"] = {k: s.get(k) for k in ("grid", "residual_pct", "worst_cell_pct")}
    return out


def failure_summary(failure: str, detail: dict[str, Any] | None) -> dict[str, Any]:
    """The summary's `calibration` object for a run that failed: `error` {code, message} (from the
    "code: sentence" the CLI prints), the steps that completed before the failure (as calibration_summary
    gives them), and whether their result is `in_force` / `persisted`: as the agent's reply says, else no
    (a failed run puts the previous calibration back on the agent and saves nothing)."""
    code, _, message = failure.partition(": ")
    detail = detail if isinstance(detail, dict) else {}
    out: dict[str, Any] = {"error": {"code": code, "message": message or code}}
    out["completed"] = calibration_summary(detail)
    out["in_force"] = bool(detail.get("in_force", False))
    out["persisted"] = bool(detail.get("persisted", False))
    if "agent_state" in detail:  # a reply lost in an outage: what the agent holds now
        out["agent_state"] = detail["agent_state"]
    return out
