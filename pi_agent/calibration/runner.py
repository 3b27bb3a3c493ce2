"""Running one calibration request: exposure, white balance, lens shading, or all of them in order.

"all" is exposure → lens shading → white balance → exposure again: the table is fitted on a well-exposed
white target, white balance then accounts for the table now in force, and the final exposure puts the
corrected image back on the target (the table does not change raw, but the order keeps each step measuring
what the next one relies on).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..camera.base import LensShadingTable
from .exposure import ExposureSettings, calibrate_exposure
from .frames import CalibrationError, FrameSource
from .lens_shading import calibrate_lens_shading, thumbnail_jpeg
from .white_balance import calibrate_white_balance

WHAT = ("exposure", "white_balance", "lens_shading", "all")
ALIASES = {"white-balance": "white_balance", "lens-shading": "lens_shading", "wb": "white_balance",
           "lst": "lens_shading"}
STEPS = {
    "exposure": ("exposure",),
    "white_balance": ("white_balance",),
    "lens_shading": ("lens_shading",),
    "all": ("exposure", "lens_shading", "white_balance", "exposure"),
}


@dataclass
class Outcome:
    """What a run produced: the result value for the viewer, and what to persist."""

    result: dict[str, Any] = field(default_factory=dict)
    table: LensShadingTable | None = None
    tuning: dict | None = None


def normalise_what(what: Any) -> str:
    if not isinstance(what, str) or ALIASES.get(what, what) not in WHAT:
        raise ValueError(f"'what' must be one of {', '.join(WHAT)}, not {str(what)[:40]!r}")
    return ALIASES.get(what, what)


PASS_KEYS = ("level", "measurements", "frames", "seconds", "ExposureTime", "AnalogueGain", "converged", "reason")


def with_passes(previous: dict[str, Any] | None, report: dict[str, Any]) -> dict[str, Any]:
    """The exposure report of a run with one or more exposure passes: the last pass's values, `passes`
    listing every pass, and `measurements`, `frames`, `seconds` summed over them (the run's whole cost)."""
    passes = list(previous["passes"]) if previous else []
    passes.append({k: report[k] for k in PASS_KEYS})
    out = dict(report)
    out["passes"] = passes
    for key in ("measurements", "frames"):
        out[key] = sum(p[key] for p in passes)
    out["seconds"] = round(sum(p["seconds"] for p in passes), 3)
    return out


def run(what: str, source: FrameSource, settings: ExposureSettings | None = None,
        progress: Callable[[str, float, dict], None] = lambda s, f, d: None,
        check_cancelled: Callable[[], None] = lambda: None) -> Outcome:
    """Run the steps of `what`; the overall fraction goes 0 → 1 across them. A step that does not reach
    its goal (exposure not converged) raises CalibrationError carrying the partial outcome."""
    steps = STEPS[normalise_what(what)]
    outcome = Outcome()
    for index, step in enumerate(steps):
        def step_progress(name: str, fraction: float, detail: dict, _i=index) -> None:
            progress(name, (_i + min(max(fraction, 0.0), 1.0)) / len(steps), detail)

        check_cancelled()
        if step == "exposure":
            report = calibrate_exposure(source, settings, step_progress, check_cancelled)
            outcome.result["exposure"] = with_passes(outcome.result.get("exposure"), report)
            if not report["converged"]:
                error = CalibrationError(f"exposure did not converge: {report['reason'].replace('_', ' ')} "
                                         f"(level {report['level']:g}, target {report['target']:g})")
                error.outcome = outcome  # type: ignore[attr-defined]
                raise error
        elif step == "white_balance":
            outcome.result["white_balance"] = calibrate_white_balance(source, progress=step_progress,
                                                                      check_cancelled=check_cancelled)
        else:
            report, outcome.table, outcome.tuning = calibrate_lens_shading(source, progress=step_progress,
                                                                           check_cancelled=check_cancelled)
            outcome.result["lens_shading"] = report
    if "lens_shading" in outcome.result and steps[-1] != "lens_shading":
        # The "after" picture shows the white target as the user will see it: with the white balance and
        # exposure that followed the table in force too (uniformity, measured per channel, is not changed
        # by colour gains or exposure).
        frame, _ = source.fresh()
        outcome.result["lens_shading"]["after_jpeg"] = thumbnail_jpeg(frame.main)
        outcome.result["lens_shading"]["after_picture"] = "after all steps"
    return outcome
