"""The agent's calibration commands (`calibrate`, `clear_calibration`) and the calibration state in force.

`calibrate` runs as a job on its own thread holding the camera lease, so streaming continues (the viewer
watches it converge) and other control commands get "busy". A cancelled or failed run restores the
controls and lens shading table that were in force before it. Every successful result is persisted through
the StateStore and reapplied when the agent starts.
"""

from __future__ import annotations

import datetime
import logging
import math
import threading
from typing import Any

import numpy as np

from protocol import Command, ErrorCode

from ..camera.base import CameraError, LensShadingTable
from ..camera.tuning import GRIDS
from ..commands import CommandRouter, Job
from ..errors import CommandError
from ..state import StateStore, table_from_json, table_to_json
from .exposure import ExposureSettings
from .frames import CalibrationError, PipelineFrameSource
from .lens_shading import put_back_table
from .runner import normalise_what, run

log = logging.getLogger(__name__)

HOLDER = "calibrate"


def _number(args: dict, name: str, low: float, high: float) -> float | None:
    value = args.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CommandError(ErrorCode.BAD_ARGUMENT, f"calibrate: {name} must be a number")
    if not low < value < high:
        raise CommandError(ErrorCode.OUT_OF_RANGE, f"calibrate: {name} {value} must lie between {low} and {high}")
    return float(value)


def mono_refusal(what: str, model: str) -> str:
    """The sentence refusing a colour calibration on a monochrome sensor (only exposure applies)."""
    return (f"calibrate {what}: the {model} is a monochrome sensor; white balance and lens-shading colour tables "
            "need colour channels it does not have. Calibrate 'exposure' instead")


class NotPersisted(CommandError):
    """The calibration ran and is in force, but saving it failed: the reply says so (never a saved path),
    and the job keeps the new calibration in force (`in_force`) rather than rolling it back."""

    in_force = True

    def __init__(self, cause: Exception, result: dict[str, Any]):
        reason = getattr(cause, "strerror", None) or str(cause)
        super().__init__(ErrorCode.FAILED,
                         f"calibration done and in force, but NOT persisted ({reason}): it will be lost when "
                         f"the agent restarts; the files saved before are unchanged",
                         detail={**result, "in_force": True, "persisted": False})


def table_geometry_problem(geometry: Any, sensor) -> str | None:
    """Why a saved table cannot be put in force on `sensor` (None: it can, in every mode).

    A table is right in every mode only if it was measured over the whole pixel array of this sensor:
    libcamera (and our backends) resample it to each mode's crop. A table without a recorded geometry
    (saved before it was recorded) or measured in a crop is refused rather than silently wrong."""
    if not isinstance(geometry, dict):
        return "it does not record the geometry it was measured in"
    full = [int(v) for v in sensor.full_array]
    if geometry.get("coordinates") != "full pixel array" or list(geometry.get("full_array", [])) != full:
        return (f"it was measured in {geometry.get('measured_crop')} of a {geometry.get('full_array')} array, "
                f"not over this sensor's whole {full[0]}x{full[1]} array")
    crop = list(geometry.get("measured_crop", []))
    if crop != [0, 0, *full]:
        return f"it was measured in the crop {crop}, not over the whole {full[0]}x{full[1]} array"
    return None


class CalibrationService:
    """Registers the commands on `router` and keeps the calibration state (persisted when `store` is set)."""

    def __init__(self, context, router: CommandRouter, store: StateStore | None = None):
        self.context = context
        self.router = router
        self.store = store
        self._lock = threading.Lock()
        self.state: dict[str, Any] = {}
        self._persisted = True  # False while the state in force failed to save
        # The requested controls before any calibration result was put in force: what clear_calibration
        # puts back (None: no calibration applied since start).
        self._uncalibrated: dict[str, Any] | None = None
        router.register("calibrate", self._calibrate)
        router.register("clear_calibration", self._clear)
        context.extra["calibration_state"] = self.summary

    # state ------------------------------------------------------------------------------------------
    def restore(self) -> bool:
        """Load the saved state (if any) and put it in force; True when something was applied."""
        if self.store is None:
            return False
        saved = self.store.load()
        if not saved:
            return False
        camera = self.context.camera
        if saved.get("sensor") not in (None, camera.sensor.model):
            log.warning("saved calibration is for %s, the camera is %s: not applied", saved.get("sensor"),
                        camera.sensor.model)
            return False
        try:
            controls = saved.get("controls") or {}
            self._uncalibrated = camera.controls()
            if controls:
                camera.set_controls({k: (tuple(v) if isinstance(v, list) else v) for k, v in controls.items()})
            if saved.get("lens_shading_table"):
                table = table_from_json(saved["lens_shading_table"])
                if table.grid != GRIDS[camera.tuning_target]:
                    raise ValueError(f"table grid {table.grid} does not suit this ISP ({camera.tuning_target})")
                refused = table_geometry_problem(saved["lens_shading_table"].get("geometry"), camera.sensor)
                if refused:
                    log.error("saved lens shading table not applied: %s; calibrate lens shading again", refused)
                else:
                    camera.apply_lens_shading(table)
        except (ValueError, KeyError, TypeError, CameraError) as exc:
            log.error("could not apply the saved calibration from %s: %s", self.store.path, exc)
            return False
        with self._lock:
            self.state = saved
        log.info("calibration restored from %s", self.store.path)
        return True

    def summary(self) -> dict[str, Any]:
        """What is in force (for the welcome and status): small, no tables."""
        with self._lock:
            state = dict(self.state)
        persisted = self.store is not None and self._persisted
        out: dict[str, Any] = {"in_force": bool(state.get("results")), "saved": state.get("saved"),
                               "persisted": persisted and bool(state.get("results")),
                               "state_file": str(self.store.path) if persisted else None}
        if persisted and state.get("lens_shading_table"):
            out["tuning_file"] = str(self.store.tuning_path)
        out["controls"] = state.get("controls", {})
        out.update(state.get("results", {}))
        for part, reason in self._stale(state).items():
            out[part] = {**out[part], "stale": reason}
        return out

    def _stale(self, state: dict[str, Any]) -> dict[str, str]:
        """{part: why} for saved results the camera no longer has in force (controls changed since, e.g. by
        set_controls, or another table): they are reported as stale, never as still true."""
        results = state.get("results", {})
        if not results:
            return {}
        camera = self.context.camera
        requested = camera.controls()
        out: dict[str, str] = {}
        e = results.get("exposure")
        if e and (requested.get("AeEnable", True) or requested.get("ExposureTime") != e["ExposureTime"]
                  or abs(float(requested.get("AnalogueGain", 0.0)) - float(e["AnalogueGain"])) > 1e-6):
            out["exposure"] = "the exposure in force is no longer the calibrated one"
        w = results.get("white_balance")
        gains = requested.get("ColourGains")
        if w and (requested.get("AwbEnable", True) or gains is None
                  or any(abs(float(a) - float(b)) > 1e-6 for a, b in zip(gains, w["colour_gains"]))):
            out["white_balance"] = "the colour gains in force are no longer the calibrated ones"
        saved = state.get("lens_shading_table")
        table = camera.lens_shading
        if results.get("lens_shading") and saved and (
                table is None or not np.allclose(np.asarray(saved["luminance"]), table.luminance, atol=1e-3)):
            out["lens_shading"] = "the lens shading table in force is no longer the calibrated one"
        return out

    def _record(self, result: dict[str, Any], table: LensShadingTable | None, tuning: dict | None) -> None:
        """Merge a successful result into the state in force and persist it."""
        camera = self.context.camera
        with self._lock:
            state = dict(self.state)
            results = dict(state.get("results", {}))
            controls = dict(state.get("controls", {}))
            if "exposure" in result:
                e = result["exposure"]
                controls.update({"AeEnable": False, "ExposureTime": e["ExposureTime"], "AnalogueGain": e["AnalogueGain"]})
                results["exposure"] = {k: e[k] for k in ("level", "target", "measurements", "frames", "seconds",
                                                         "ExposureTime", "AnalogueGain")}
                if len(e.get("passes", ())) > 1:
                    results["exposure"]["passes"] = [{k: p[k] for k in ("level", "measurements", "frames")}
                                                     for p in e["passes"]]
            if "lens_shading" in result and table is not None:
                s = result["lens_shading"]
                # the table with the geometry it was measured in (full-array coordinates: right in every mode)
                state["lens_shading_table"] = {**table_to_json(table), "geometry": s["geometry"]}
                results["lens_shading"] = {k: s[k] for k in ("grid", "residual_pct", "worst_cell_pct")}
                kept = s.get("white_balance")
                if kept:  # the white balance in force was carried over to the new table and measured again
                    controls.update({"AwbEnable": False, "ColourGains": list(kept["colour_gains"])})
                    if "white_balance" in results:
                        results["white_balance"] = {"colour_gains": list(kept["colour_gains"]),
                                                    "neutral_error_pct": kept["neutral_error_pct"],
                                                    "measured_after": "lens_shading"}
            if "white_balance" in result:  # after the table: in "all" white balance follows lens shading
                w = result["white_balance"]
                controls.update({"AwbEnable": False, "ColourGains": list(w["colour_gains"])})
                results["white_balance"] = {k: w[k] for k in ("colour_gains", "neutral_error_pct")}
            state.update({"sensor": camera.sensor.model, "controls": controls, "results": results,
                          "saved": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
            self.state = state
        if self.store is not None:
            try:
                self.store.save(state, tuning)  # calibration.json and tuning.json as one unit
            except (OSError, ValueError) as exc:
                log.error("calibration in force but NOT saved to %s: %s", self.store.directory, exc)
                self._persisted = False
                raise NotPersisted(exc, result) from None
            self._persisted = True

    # commands ---------------------------------------------------------------------------------------
    def _calibrate(self, command: Command, reply) -> None:
        args = command.args if isinstance(command.args, dict) else {}
        try:
            what = normalise_what(args.get("what", "all"))
        except ValueError as exc:
            raise CommandError(ErrorCode.BAD_ARGUMENT, f"calibrate: {exc}") from None
        self.context.pipeline.require_running("calibrate")
        refusal = getattr(self.context.camera, "calibration_refusal", None)
        if refusal:  # before measuring anything: no target or setting could make it work
            raise CommandError(ErrorCode.BAD_ARGUMENT, f"calibrate {what}: {refusal}")
        sensor = self.context.camera.sensor
        if sensor.is_mono and what != "exposure":
            raise CommandError(ErrorCode.BAD_ARGUMENT, mono_refusal(what, sensor.model))
        settings = ExposureSettings(
            target=_number(args, "target", sensor.black_level, sensor.white_level),
            tolerance=_number(args, "tolerance", 0.0, 0.5) or 0.05,
            percentile=_number(args, "percentile", 50.0, 100.0) or 99.9,
        )
        camera = self.context.camera
        before_controls = camera.controls()  # the whole requested set: a failed run puts back exactly this
        before_table = camera.lens_shading
        not_persisted = threading.Event()  # set when the result is in force but could not be saved

        def restore() -> None:
            if not_persisted.is_set():
                return  # the new calibration stays in force; only saving it failed
            log.info("calibration stopped: restoring controls %s", before_controls)
            if camera.lens_shading is not before_table:
                put_back_table(camera, before_table)
            camera.restore_controls(before_controls)

        def work(job: Job) -> dict[str, Any]:
            source = PipelineFrameSource(camera, self.context.pipeline)
            try:
                outcome = run(what, source, settings, lambda step, fraction, detail: job.progress(step, fraction, **detail),
                              job.check_cancelled)
            except CalibrationError as exc:
                partial = getattr(exc, "outcome", None)
                raise CommandError(ErrorCode.FAILED, f"calibration failed: {exc}",
                                   detail=partial.result if partial is not None else {}) from None
            except CameraError as exc:
                raise CommandError(ErrorCode.CAMERA, f"calibration failed: the camera failed: {exc}") from None
            finally:
                source.close()
            job.check_cancelled()  # a cancel that came during the last step: keep the calibration in force
            if self._uncalibrated is None:
                self._uncalibrated = dict(before_controls)
            try:
                self._record(outcome.result, outcome.table, outcome.tuning)
            except NotPersisted:
                not_persisted.set()
                raise
            value = dict(outcome.result)
            if self.store is not None:
                value["state_file"] = str(self.store.path)
                if outcome.tuning is not None:
                    value.setdefault("lens_shading", {})["tuning_file"] = str(self.store.tuning_path)
            return value

        self.router.start_job(command, reply, HOLDER, work, on_failure=restore)
        return None

    def _clear(self, command: Command, reply) -> dict[str, Any]:
        self.context.lease.check_free()
        camera = self.context.camera
        # Files first: if they cannot be removed, nothing changes (camera and files keep agreeing).
        try:
            removed = self.store.clear() if self.store is not None else False
        except OSError as exc:
            raise CommandError(ErrorCode.FAILED, f"clear_calibration: could not remove the saved calibration "
                                                 f"({exc.strerror or exc}); it stays saved and in force") from None
        camera.clear_lens_shading()  # the stock (adaptive, on a Pi) table, not a flat one
        if self._uncalibrated is not None:  # the requested set from before the first calibration (None: none ran)
            camera.restore_controls(self._uncalibrated)
            self._uncalibrated = None
        with self._lock:
            self.state = {}
        return {"cleared": True, "state_file_removed": removed}
