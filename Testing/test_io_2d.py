"""2D images as one-slice volumes (medseg.io.image2d through read_volume): PNG/JPEG pixel types,
spacing from pHYs/JFIF or said to be unknown, the radiograph orientation, 2D NRRD against SimpleITK's
physical points, and masks as label values."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from medseg.core.errors import InputError
from medseg.io.image2d import RADIOGRAPH_DIRECTION_RAS, mask_labels
from medseg.io.volume_reader import read_volume

ROWS, COLS = 7, 12  # non-square: a swapped axis shows


def _grey8() -> np.ndarray:
    return (np.arange(ROWS * COLS).reshape(ROWS, COLS) * 3 % 251).astype(np.uint8)


def _save(arr: np.ndarray, path: Path, **kw) -> Path:
    Image.fromarray(arr).save(path, **kw)
    return path


def _png_with_phys(arr: np.ndarray, path: Path, ppm_x: int, ppm_y: int, unit: int) -> Path:
    """A grey 8-bit PNG with an exact pHYs chunk (Pillow writes dpi only, rounded)."""
    raw = b"".join(b"\0" + row.tobytes() for row in arr)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", arr.shape[1], arr.shape[0], 8, 0, 0, 0, 0)
    phys = struct.pack(">IIB", ppm_x, ppm_y, unit)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"pHYs", phys)
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def test_png_8bit_without_spacing_is_one_slice_in_pixels_with_a_warning(tmp_path):
    a = _grey8()
    p = _save(a, tmp_path / "xray.png")
    warnings: list[str] = []
    vol = read_volume(p, warnings=warnings)
    assert vol.shape_kji == (1, ROWS, COLS)
    assert vol.array.dtype == np.uint8
    np.testing.assert_array_equal(vol.array[0], a)
    assert vol.meta["dims"] == 2 and vol.meta["spacing_known"] is False
    np.testing.assert_allclose(vol.spacing, [1.0, 1.0, 1.0])
    assert len(warnings) == 1
    assert str(p) in warnings[0] and "in pixels, not mm" in warnings[0] and "no pHYs" in warnings[0]
    assert vol.name == "xray"


def test_png_orientation_row0_superior_column0_patient_right(tmp_path):
    """Pixel (row r, column c) lies at RAS (-c * sx, 0, -r * sy): column 0 is the patient's right
    (largest R), row 0 superior (largest S)."""
    p = _png_with_phys(_grey8(), tmp_path / "phys.png", 10000, 5000, 1)  # 0.1 mm columns, 0.2 mm rows
    vol = read_volume(p)
    np.testing.assert_allclose(vol.spacing, [0.1, 0.2, 1.0])
    assert vol.meta["spacing_known"] is True
    np.testing.assert_allclose(vol.direction, RADIOGRAPH_DIRECTION_RAS)
    assert np.linalg.det(vol.direction) == pytest.approx(1.0)
    # i = column, j = row
    ras = vol.ijk_to_ras_points(np.array([[0, 0, 0], [COLS - 1, 0, 0], [0, ROWS - 1, 0], [5, 3, 0]]))
    np.testing.assert_allclose(ras, [[0, 0, 0], [-(COLS - 1) * 0.1, 0, 0], [0, 0, -(ROWS - 1) * 0.2],
                                     [-0.5, 0, -0.6]], atol=1e-12)
    assert ras[0, 0] > ras[1, 0]  # column 0 more to the patient's right
    assert ras[0, 2] > ras[2, 2]  # row 0 more superior


@pytest.mark.parametrize(("ppm", "known"), [(2835, False), (2834, False), (3780, False), (10000, True), (5906, True)])
def test_png_phys_screen_defaults_are_no_spacing(tmp_path, ppm, known):
    """72 dpi (2834.6 px/m) and 96 dpi (3779.5 px/m) are software defaults; 0.1 mm and 150 dpi are sizes."""
    warnings: list[str] = []
    vol = read_volume(_png_with_phys(_grey8(), tmp_path / "d.png", ppm, ppm, 1), warnings=warnings)
    assert vol.meta["spacing_known"] is known
    if known:
        np.testing.assert_allclose(vol.spacing[:2], [1000.0 / ppm] * 2)
        assert warnings == []
    else:
        np.testing.assert_allclose(vol.spacing, [1.0, 1.0, 1.0])
        assert "image-software default" in warnings[0]


def test_png_phys_aspect_only_keeps_the_aspect_and_says_unknown(tmp_path):
    warnings: list[str] = []
    vol = read_volume(_png_with_phys(_grey8(), tmp_path / "a.png", 2, 1, 0), warnings=warnings)
    np.testing.assert_allclose(vol.spacing, [1.0, 2.0, 1.0])
    assert vol.meta["spacing_known"] is False and "aspect ratio only" in warnings[0]


def test_png_16bit_grey_keeps_values(tmp_path):
    a = (np.arange(ROWS * COLS).reshape(ROWS, COLS) * 797).astype(np.uint16)
    vol = read_volume(_save(a, tmp_path / "g16.png"))
    assert vol.array.dtype == np.uint16 and int(vol.array.max()) > 255
    np.testing.assert_array_equal(vol.array[0], a)


def test_rgb_png_by_luminance_with_a_warning_and_grey_rgb_exact(tmp_path):
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (ROWS, COLS, 3), dtype=np.uint8)
    warnings: list[str] = []
    vol = read_volume(_save(rgb, tmp_path / "c.png"), warnings=warnings)
    want = np.rint(rgb.astype(float) @ [0.299, 0.587, 0.114]).astype(np.uint8)
    np.testing.assert_array_equal(vol.array[0], want)
    assert any("by luminance 0.299" in w for w in warnings)
    assert vol.meta["converted_from"] == "RGB"
    grey = _grey8()
    warnings = []
    vol = read_volume(_save(np.stack([grey] * 3, axis=-1), tmp_path / "g.png"), warnings=warnings)
    np.testing.assert_array_equal(vol.array[0], grey)
    assert not any("by luminance" in w for w in warnings) and "converted_from" not in vol.meta


def test_rgba_png_drops_alpha_with_a_warning(tmp_path):
    rgba = np.zeros((ROWS, COLS, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 128
    warnings: list[str] = []
    vol = read_volume(_save(rgba, tmp_path / "a.png"), warnings=warnings)
    assert int(vol.array[0, 0, 0]) == round(200 * 0.299)
    assert any("alpha" in w for w in warnings)


def test_rgb_16bit_png_full_depth(tmp_path):
    a = (np.arange(ROWS * COLS).reshape(ROWS, COLS) * 700).astype(np.uint16)
    rgb = np.stack([a, a // 2, a // 3], axis=-1)
    p = tmp_path / "rgb16.png"
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(p))
    vol = read_volume(p)
    assert vol.array.dtype == np.uint16
    np.testing.assert_array_equal(vol.array[0], np.rint(rgb.astype(float) @ [0.299, 0.587, 0.114]).astype(np.uint16))


def test_palette_png_keeps_indices_as_labels(tmp_path):
    idx = np.zeros((ROWS, COLS), dtype=np.uint8)
    idx[1:3, 2:5] = 3
    idx[4:6, 7:11] = 7  # non-consecutive label values
    im = Image.fromarray(idx, mode="P")
    im.putpalette([0, 0, 0] * 3 + [255, 0, 0] + [0, 0, 0] * 3 + [0, 255, 0] + [0, 0, 0] * 248)
    p = tmp_path / "labels.png"
    im.save(p)
    vol = read_volume(p)
    np.testing.assert_array_equal(vol.array[0], idx)
    assert vol.meta["palette"][3] == [255, 0, 0] and vol.meta["palette"][7] == [0, 255, 0]
    np.testing.assert_array_equal(mask_labels(vol).array[0], idx)


def test_mask_labels_binary_antialiased_and_colour(tmp_path):
    m = np.zeros((ROWS, COLS), dtype=np.uint8)
    m[2:5, 3:9] = 255
    np.testing.assert_array_equal(mask_labels(read_volume(_save(m, tmp_path / "m.png"))).array[0], m // 255)
    aa = m.copy()
    aa[2, 3] = 100
    aa[4, 8] = 200
    vol = read_volume(_save(aa, tmp_path / "aa.png"))
    with pytest.raises(InputError, match="threshold"):
        mask_labels(vol)
    got = mask_labels(vol, threshold=127).array[0]
    assert got[2, 3] == 0 and got[4, 8] == 1 and got.sum() == (m > 0).sum() - 1
    colour = np.zeros((ROWS, COLS, 3), dtype=np.uint8)
    colour[2:5, 3:9] = (255, 0, 0)
    with pytest.raises(InputError, match="colour"):
        mask_labels(read_volume(_save(colour, tmp_path / "c.png")))


def test_jpeg_grey_and_jfif_density(tmp_path):
    a = np.full((ROWS * 8, COLS * 8), 90, dtype=np.uint8)
    a[:, COLS * 4:] = 180
    warnings: list[str] = []
    vol = read_volume(_save(a, tmp_path / "x.jpg", dpi=(300, 300), quality=95), warnings=warnings)
    assert vol.shape_kji == (1, ROWS * 8, COLS * 8)
    np.testing.assert_allclose(vol.spacing[:2], [25.4 / 300] * 2)
    assert vol.meta["spacing_known"] is True and warnings == []
    assert np.abs(vol.array[0].astype(int) - a).max() <= 8  # lossy
    vol = read_volume(_save(a, tmp_path / "y.jpeg", dpi=(72, 72)))
    assert vol.meta["spacing_known"] is False


def test_2d_nrrd_matches_sitk_physical_points(tmp_path):
    """A 2D NRRD with a flipped, rotated 2D direction, anisotropic spacing and an origin: every
    pixel's RAS position is SimpleITK's physical point (LPS) with x, y negated, at z = 0."""
    a = np.arange(ROWS * COLS, dtype=np.int16).reshape(ROWS, COLS)
    img = sitk.GetImageFromArray(a)
    t = np.deg2rad(30)
    img.SetDirection((np.cos(t), np.sin(t), np.sin(t), -np.cos(t)))  # rotated and flipped
    img.SetSpacing((0.7, 1.3))
    img.SetOrigin((12.5, -40.0))
    p = tmp_path / "slice.nrrd"
    sitk.WriteImage(img, str(p))
    vol = read_volume(p)
    assert vol.shape_kji == (1, ROWS, COLS) and vol.meta["dims"] == 2 and vol.meta["spacing_known"] is True
    np.testing.assert_array_equal(vol.array[0], a)
    for i, j in [(0, 0), (COLS - 1, 0), (0, ROWS - 1), (5, 3)]:
        x, y = img.TransformIndexToPhysicalPoint((i, j))
        np.testing.assert_allclose(vol.ijk_to_ras_points([[i, j, 0]])[0], [-x, -y, 0.0], atol=1e-9)


def test_2d_nrrd_without_spacing_is_said(tmp_path):
    p = tmp_path / "nospacing.nrrd"
    a = np.arange(ROWS * COLS, dtype=np.uint8).reshape(ROWS, COLS)
    p.write_bytes(f"NRRD0004\ntype: uchar\ndimension: 2\nsizes: {COLS} {ROWS}\nencoding: raw\n\n".encode()
                  + a.tobytes())
    warnings: list[str] = []
    vol = read_volume(p, warnings=warnings)
    np.testing.assert_array_equal(vol.array[0], a)
    assert vol.meta["spacing_known"] is False and "no spacing field" in warnings[0]


def test_3d_volume_unchanged(tmp_path):
    a = np.zeros((3, 4, 5), dtype=np.int16)
    p = tmp_path / "v.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(a), str(p))
    vol = read_volume(p)
    assert vol.shape_kji == (3, 4, 5) and "dims" not in vol.meta


def test_png_size_promise_checked_before_decoding_and_corrupt_png(tmp_path):
    p = _save(_grey8(), tmp_path / "x.png")
    with pytest.raises(InputError, match="limit"):
        read_volume(p, max_voxels=ROWS * COLS - 1)
    data = p.read_bytes()
    bad = tmp_path / "bad.png"
    bad.write_bytes(data[:50])  # signature, IHDR and the start of IDAT
    with pytest.raises(InputError, match=r"bad\.png"):
        read_volume(bad)
    with pytest.raises(InputError, match="not a PNG"):
        read_volume(_save(_grey8(), tmp_path / "really.jpg").rename(tmp_path / "fake.png"))
