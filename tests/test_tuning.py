"""rpi.alsc rewriting: sizes per target, limits, v1/v2 layouts, round trip, inputs left alone."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from pi_agent.camera.base import LensShadingTable
from pi_agent.camera.tuning import (
    TuningError, alsc_section, find_algo, minimal_tuning, table_from_tuning, with_lens_shading,
)


def make_table(grid=(16, 12), lum_max=2.0):
    cols, rows = grid
    y, x = np.mgrid[0:rows, 0:cols]
    r2 = ((x - cols / 2) / cols) ** 2 + ((y - rows / 2) / rows) ** 2
    lum = 1 + (lum_max - 1) * r2 / r2.max()
    return LensShadingTable(grid=grid, luminance=lum, cr=1.2 + 0.1 * r2, cb=1.5 + 0.05 * r2, colour_temperature=4800)


@pytest.mark.parametrize("target, grid", [("bcm2835", (16, 12)), ("pisp", (32, 32))])
def test_round_trip_per_target(target, grid):
    base = {"version": 2.0, "target": target, "algorithms": [{"rpi.black_level": {"black_level": 4096}},
                                                             {"rpi.alsc": {"n_iter": 100}}]}
    original = copy.deepcopy(base)
    table = make_table(grid)
    out = with_lens_shading(base, table)
    assert base == original  # input untouched
    section = find_algo(out, "rpi.alsc")
    assert section["n_iter"] == 0 and section["luminance_strength"] == 1.0
    assert len(section["luminance_lut"]) == grid[0] * grid[1]
    assert find_algo(out, "rpi.black_level") == {"black_level": 4096}
    back = table_from_tuning(out)
    assert back.grid == grid and back.colour_temperature == 4800
    assert np.allclose(back.luminance, table.luminance, atol=5e-4)
    assert np.allclose(back.cr, table.cr, atol=5e-4) and np.allclose(back.cb, table.cb, atol=5e-4)


def test_wrong_grid_and_out_of_range_gains_are_refused():
    with pytest.raises(TuningError, match="32x32"):
        alsc_section(make_table((16, 12)), "pisp")
    with pytest.raises(TuningError, match="outside"):
        alsc_section(make_table((32, 32), lum_max=9.0), "pisp")
    nan = make_table()
    nan.luminance[0, 0] = np.nan
    with pytest.raises(TuningError, match="finite"):
        alsc_section(nan)


def test_v1_layout_and_bad_entry_count():
    out = with_lens_shading({"rpi.awb": {}}, make_table())
    assert "rpi.alsc" in out and "rpi.awb" in out
    broken = minimal_tuning()
    broken["algorithms"].append({"rpi.alsc": {"luminance_lut": [1.0] * 10}})
    with pytest.raises(TuningError, match="Invalid number of entries"):
        table_from_tuning(broken)
    with pytest.raises(TuningError, match="version"):
        find_algo({"version": 999}, "rpi.alsc")
