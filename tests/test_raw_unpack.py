"""Raw unpacking: format names, golden bytes of every layout, padding, and refusals."""

from __future__ import annotations

import numpy as np
import pytest

from pi_agent.camera.raw_unpack import RawFormatError, parse_raw_format, unpack_raw
from tests.fakes.raw_layouts import decompress_comp1, raw_buffer


@pytest.mark.parametrize("name, order, bits, packing", [
    ("SBGGR10_CSI2P", "BGGR", 10, "CSI2P"),
    ("SRGGB12_CSI2P", "RGGB", 12, "CSI2P"),
    ("SRGGB12", "RGGB", 12, "unpacked"),
    ("SGBRG10", "GBRG", 10, "unpacked"),
    ("SBGGR16", "BGGR", 16, "unpacked"),
    ("GRBG_PISP_COMP1", "GRBG", 8, "PISP_COMP1"),
])
def test_format_names_parse(name, order, bits, packing):
    fmt = parse_raw_format(name)
    assert (fmt.bayer_order, fmt.container_bits, fmt.packing) == (order, bits, packing)
    assert fmt.msb_aligned == (name == "SBGGR16")


@pytest.mark.parametrize("name", ["YUV420", "R8_CSI2P", "R14", "SBGGR8_CSI2P", "SXXXX10", "BGGR", ""])
def test_unknown_formats_are_refused_clearly(name):
    with pytest.raises(RawFormatError, match="raw format"):
        parse_raw_format(name)


def test_golden_bytes_of_every_layout():
    # CSI-2 RAW10: 4 high bytes, then the 2-bit LSBs with pixel 0 lowest; then 3 bytes of padding.
    raw10 = np.array([[0xFF, 0x00, 0x55, 0xAA, 0x97, 0xFF, 0xFF, 0xFF]], dtype=np.uint8)
    assert unpack_raw(raw10, "SBGGR10_CSI2P", (4, 1)).tolist() == [[0x3FF, 0x001, 0x155, 0x2AA]]
    # CSI-2 RAW12: 2 high bytes, then pixel 1's LSBs in the high nibble and pixel 0's in the low one.
    raw12 = np.array([[0xAB, 0x12, 0x3C, 0xEE]], dtype=np.uint8)
    assert unpack_raw(raw12, "SRGGB12_CSI2P", (2, 1)).tolist() == [[0xABC, 0x123]]
    # Pi 4 unpacked: little-endian, LSB-aligned.
    lsb = np.array([[0x34, 0x02, 0xFF, 0x03, 0xEE, 0xEE]], dtype=np.uint8)
    assert unpack_raw(lsb, "SBGGR10", (2, 1)).tolist() == [[0x234, 0x3FF]]
    # Pi 5 unpacked: 16-bit left-aligned, shifted down by 16 − bit depth.
    msb = np.array([[0xC0, 0xAB, 0x30, 0x12, 0xEE, 0xEE]], dtype=np.uint8)
    assert unpack_raw(msb, "SBGGR16", (2, 1), bit_depth=12).tolist() == [[0xABC, 0x123]]
    assert unpack_raw(msb, "SBGGR16", (2, 1), bit_depth=10).tolist() == [[0xABC0 >> 6, 0x1230 >> 6]]


@pytest.mark.parametrize("fmt, bits, platform", [
    ("SBGGR10", 10, "vc4"), ("SBGGR12", 12, "vc4"), ("SBGGR10_CSI2P", 10, "vc4"), ("SRGGB12_CSI2P", 12, "vc4"),
    ("SBGGR16", 10, "pisp"), ("SBGGR16", 12, "pisp"),
])
@pytest.mark.parametrize("width", [6, 10, 64, 1332])
def test_every_code_survives_the_fake_s_byte_layouts(fmt, bits, platform, width):
    rng = np.random.default_rng(width + bits)
    mosaic = rng.integers(0, 2**bits, size=(6, width), dtype=np.uint16)
    mosaic[0, :2] = (0, 2**bits - 1)  # the extremes
    buffer, stride = raw_buffer(mosaic, fmt, bits, platform, garbage_seed=3)
    assert buffer.dtype == np.uint8 and buffer.shape == (6, stride) and stride % (32 if platform == "vc4" else 64) == 0
    out = unpack_raw(buffer, fmt, (width, 6), bits)
    assert out.dtype == np.uint16 and out.shape == (6, width)
    np.testing.assert_array_equal(out, mosaic)


def test_padding_is_cropped_not_read():
    mosaic = np.full((4, 6), 100, dtype=np.uint16)
    buffer, stride = raw_buffer(mosaic, "SBGGR10", 10, "vc4")
    assert stride == 32 and (buffer[:, 12:] != 0).all()  # garbage in the padding
    assert unpack_raw(buffer, "SBGGR10", (6, 4)).max() == 100


def test_comp1_is_refused_without_a_decompressor_and_decoded_with_one():
    mosaic = np.random.default_rng(1).integers(0, 4096, size=(4, 64), dtype=np.uint16)
    buffer, _ = raw_buffer(mosaic, "BGGR_PISP_COMP1", 12, "pisp")
    with pytest.raises(RawFormatError, match="compressed"):
        unpack_raw(buffer, "BGGR_PISP_COMP1", (64, 4), 12)
    out = unpack_raw(buffer, "BGGR_PISP_COMP1", (64, 4), 12, decompress=decompress_comp1)
    assert out.shape == (4, 64)
    assert np.abs(out.astype(int) - mosaic).max() < 0.02 * 4096 + 16  # lossy, but the same picture


def test_bad_buffers_get_clear_errors():
    good = np.zeros((4, 32), dtype=np.uint8)
    with pytest.raises(RawFormatError, match="holds 12-bit"):
        unpack_raw(good, "SBGGR12", (8, 4), bit_depth=10)
    with pytest.raises(RawFormatError, match="bit depth is needed"):
        unpack_raw(good, "SBGGR16", (8, 4))
    with pytest.raises(RawFormatError, match="shorter"):
        unpack_raw(good, "SBGGR10", (20, 4))
    with pytest.raises(RawFormatError, match="rows"):
        unpack_raw(good, "SBGGR10", (8, 5))
    with pytest.raises(RawFormatError, match="uint8"):
        unpack_raw(good.view(np.uint16), "SBGGR10", (8, 4))
