"""The ISP: table interpolation between cell centres, Bayer order of the demosaic, colour gains, speed caches."""

import numpy as np
import pytest

from pi_agent.camera.base import LensShadingTable
from pi_agent.camera.isp import Isp, upsample_table


def direct_bilinear(cells: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear between cell centres (j + 0.5)·W/N, clamped flat beyond the outermost centres."""
    rows, cols = cells.shape
    ys = np.clip((np.arange(h) + 0.5) * rows / h - 0.5, 0, rows - 1)
    xs = np.clip((np.arange(w) + 0.5) * cols / w - 0.5, 0, cols - 1)
    y0 = np.minimum(np.floor(ys).astype(int), rows - 2 if rows > 1 else 0)
    x0 = np.minimum(np.floor(xs).astype(int), cols - 2 if cols > 1 else 0)
    fy, fx = ys - y0, xs - x0
    y1, x1 = np.minimum(y0 + 1, rows - 1), np.minimum(x0 + 1, cols - 1)
    c = cells.astype(np.float64)
    top = c[y0][:, x0] * (1 - fx) + c[y0][:, x1] * fx
    bot = c[y1][:, x0] * (1 - fx) + c[y1][:, x1] * fx
    return top * (1 - fy)[:, None] + bot * fy[:, None]


@pytest.mark.parametrize("shape,out", [((12, 16), (1232, 1640)), ((32, 32), (616, 820)), ((12, 16), (480, 640)), ((3, 5), (37, 53))])
def test_upsample_table_matches_direct_formula(shape, out):
    rng = np.random.default_rng(1)
    cells = rng.uniform(1.0, 3.0, size=shape).astype(np.float32)
    got = upsample_table(cells, out)
    assert got.dtype == np.float32 and got.shape == out
    np.testing.assert_allclose(got, direct_bilinear(cells, *out), rtol=0, atol=2e-3)
    # at a cell centre the value is the cell's own (when the centre falls on a pixel centre)
    h, w = out
    if h % shape[0] == 0 and w % shape[1] == 0 and (h // shape[0]) % 2 == 1 and (w // shape[1]) % 2 == 1:
        assert got[h // shape[0] // 2, w // shape[1] // 2] == pytest.approx(cells[0, 0], abs=1e-5)
    # flat beyond the outermost centres
    assert got[0, 0] == pytest.approx(cells[0, 0], abs=1e-5)
    assert got[-1, -1] == pytest.approx(cells[-1, -1], abs=1e-5)


def mosaic_of(order: str, rgb: tuple[float, float, float], size=(64, 48), black=64, white=1023) -> np.ndarray:
    w, h = size
    raw = np.full((h, w), black, dtype=np.uint16)
    val = {c: int(black + v * (white - black)) for c, v in zip("RGB", rgb)}
    for dy in (0, 1):
        for dx in (0, 1):
            raw[dy::2, dx::2] = val[order[dy * 2 + dx]]
    return raw


@pytest.mark.parametrize("order", ["BGGR", "RGGB", "GBRG", "GRBG"])
def test_demosaic_bayer_order_pure_red_is_red(order):
    isp = Isp((64, 48), order, 10, 64, ccm=np.eye(3))
    for rgb, channel in (((0.8, 0, 0), 2), ((0, 0.8, 0), 1), ((0, 0, 0.8), 0)):
        bgr = isp.process(mosaic_of(order, rgb), linear=True)
        centre = bgr[16:32, 16:48].reshape(-1, 3).mean(axis=0)
        assert int(np.argmax(centre)) == channel, (order, rgb, centre)
        assert centre[channel] == pytest.approx(0.8, abs=0.01)
        others = [centre[i] for i in range(3) if i != channel]
        assert max(others) < 0.01
    out = isp.process(mosaic_of(order, (0.8, 0, 0)))
    assert out.dtype == np.uint8 and out.shape == (48, 64, 3)
    assert out[24, 32, 2] > 200 and out[24, 32, 0] < 5 and out[24, 32, 1] < 5


def test_colour_gains_and_normalisation():
    isp = Isp((64, 48), "BGGR", 10, 64, ccm=np.eye(3))
    lin = isp.process(mosaic_of("BGGR", (0.25, 0.5, 0.2)), colour_gains=(2.0, 2.5), linear=True)
    np.testing.assert_allclose(lin[8:40, 8:56].reshape(-1, 3).mean(axis=0), [0.5, 0.5, 0.5], atol=0.003)
    # neutral stays neutral through the default colour matrix
    isp2 = Isp((64, 48), "BGGR", 10, 64)
    lin2 = isp2.process(mosaic_of("BGGR", (0.4, 0.4, 0.4)), linear=True)
    np.testing.assert_allclose(lin2[8:40, 8:56].reshape(-1, 3).mean(axis=0), [0.4, 0.4, 0.4], atol=0.003)


def test_lens_shading_gains_applied_per_channel_and_cached():
    w, h = 160, 120
    isp = Isp((w, h), "BGGR", 10, 64, main_size=(w, h), ccm=np.eye(3))
    lum = np.linspace(1.0, 2.0, 16 * 12).reshape(12, 16)
    cr = np.full((12, 16), 2.0)  # ÷ min → 1: only the shape of Cr/Cb matters
    cb = np.full((12, 16), 1.5)
    isp.set_lens_shading(LensShadingTable(grid=(16, 12), luminance=lum, cr=cr, cb=cb))
    lin = isp.process(mosaic_of("BGGR", (0.3, 0.3, 0.3), size=(w, h)), linear=True)
    expected = upsample_table(lum, (h, w)) * 0.3
    for c in range(3):
        np.testing.assert_allclose(lin[4:-4, 4:-4, c], expected[4:-4, 4:-4], rtol=0.01)
    m1 = isp.gain_map((1.0, 1.0))
    assert isp.gain_map((1.0, 1.0)) is m1  # cached until the gains or the table change


def test_resize_to_main():
    isp = Isp((1640, 1232), "BGGR", 10, 64, main_size=(640, 480))
    out = isp.process(mosaic_of("BGGR", (0.5, 0.5, 0.5), size=(1640, 1232)))
    assert out.shape == (480, 640, 3) and out.dtype == np.uint8
    with pytest.raises(ValueError):
        isp.process(np.zeros((10, 10), np.uint16))
