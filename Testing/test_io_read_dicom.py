"""read_volume on synthetic DICOM series (pydicom-written) with analytic geometry and values.

Complements test_io_read.py: oblique slices, anisotropic pixels, rescale, shuffled file order,
regularisation that must keep every acquired slice, and geometry faults.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import generate_uid

from conftest import rotation
from medseg.core.errors import AmbiguousInputError, InputError
from medseg.core.frames import lps_to_ras_points
from medseg.io.volume_reader import read_volume

N_ROWS, N_COLS = 12, 16
#: DICOM PixelSpacing = (spacing between rows, spacing between columns) in mm
PIXEL_SPACING = (0.6, 0.8)


@pytest.fixture(scope="module")
def template(shared_data):
    return pydicom.dcmread(str(shared_data / "dcmqi_ct3slice/ct-3slice/01.dcm"))


def slice_values(k: int) -> np.ndarray:
    """Stored (pre-rescale) values of slice ``k``: unique per voxel and slice."""
    return (np.arange(N_ROWS * N_COLS).reshape(N_ROWS, N_COLS) + 300 * k).astype(np.int16)


def write_series(template, folder: Path, positions_lps, iop=(1, 0, 0, 0, 1, 0), uid=None, description="synthetic",
                 slope=1.0, intercept=-1024.0, names=None):
    """Write one slice per position (LPS mm); returns the file paths."""
    folder.mkdir(parents=True, exist_ok=True)
    uid = uid or generate_uid()
    paths = []
    for k, pos in enumerate(positions_lps):
        ds = copy.deepcopy(template)
        ds.Rows, ds.Columns = N_ROWS, N_COLS
        ds.PixelSpacing = [str(PIXEL_SPACING[0]), str(PIXEL_SPACING[1])]
        ds.ImagePositionPatient = [f"{float(x):.6f}" for x in pos]
        ds.ImageOrientationPatient = [f"{float(x):.8f}" for x in iop]
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = k + 1
        ds.SeriesDescription = description
        ds.RescaleSlope = str(slope)
        ds.RescaleIntercept = str(intercept)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = slice_values(k).tobytes()
        path = folder / (names[k] if names else f"s{k:03d}.dcm")
        ds.save_as(str(path))
        paths.append(path)
    return paths


def oblique_iop():
    r = rotation((1.0, 2.0, 0.5), 30.0)
    return r[:, 0], r[:, 1], r[:, 2]  # row direction, column direction, normal (LPS)


def expected_ras(ipp_lps, row, col, i, j):
    """Analytic DICOM voxel centre: IPP + i * column spacing * row dir + j * row spacing * col dir."""
    p = np.asarray(ipp_lps, float) + i * PIXEL_SPACING[1] * row + j * PIXEL_SPACING[0] * col
    return lps_to_ras_points(p)


def test_oblique_series_geometry_values_and_rescale(template, tmp_path):
    row, col, normal = oblique_iop()
    origin = np.array([10.0, -20.0, 30.0])
    spacing = 2.5
    positions = [origin + k * spacing * normal for k in range(4)]
    # file names in reverse order of position: sorting must come from the geometry
    folder = tmp_path / "päth with spaces" / "oblique"
    write_series(template, folder, positions, iop=tuple(row) + tuple(col), slope=2.0, intercept=-1000.0,
                 names=[f"z{9 - k}.dcm" for k in range(4)])
    warnings: list = []
    vol = read_volume(folder, warnings=warnings)
    assert warnings == []
    assert vol.array.shape == (4, N_ROWS, N_COLS)
    for k in range(4):
        np.testing.assert_array_equal(vol.array[k], slice_values(k) * 2.0 - 1000.0)
    np.testing.assert_allclose(vol.spacing, [PIXEL_SPACING[1], PIXEL_SPACING[0], spacing], atol=1e-5)
    for i, j, k in [(0, 0, 0), (N_COLS - 1, 0, 0), (0, N_ROWS - 1, 0), (N_COLS - 1, N_ROWS - 1, 3), (5, 7, 2)]:
        np.testing.assert_allclose(vol.ijk_to_ras_points([(i, j, k)])[0], expected_ras(positions[k], row, col, i, j),
                                   atol=1e-4)
    # and it agrees with SimpleITK reading the same series
    img = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    p = np.array(img.TransformIndexToPhysicalPoint((3, 4, 2)))
    np.testing.assert_allclose(vol.ijk_to_ras_points([(3, 4, 2)])[0], lps_to_ras_points(p), atol=1e-4)
    np.testing.assert_array_equal(vol.array, sitk.GetArrayFromImage(img))


def test_missing_slices_keep_every_acquired_slice(template, tmp_path):
    """Steps 2, 4 mm (one slice of a 2 mm series lost): the regular grid must be 2 mm so no
    acquired slice is replaced by an interpolated one."""
    folder = tmp_path / "gap"
    write_series(template, folder, [(0, 0, z) for z in (0.0, 2.0, 6.0)])
    warnings: list = []
    vol = read_volume(folder, warnings=warnings)
    assert any("4.000" in w for w in warnings), warnings
    assert vol.array.shape[0] == 4
    np.testing.assert_allclose(vol.spacing[2], 2.0, atol=1e-6)
    hu = [slice_values(k) - 1024 for k in range(3)]
    np.testing.assert_array_equal(vol.array[0], hu[0])
    np.testing.assert_array_equal(vol.array[1], hu[1])
    np.testing.assert_array_equal(vol.array[3], hu[2])
    np.testing.assert_allclose(vol.array[2], (hu[1] + hu[2]) / 2, atol=0.5)
    np.testing.assert_allclose(vol.ijk_to_ras_points([(0, 0, 3)])[0], [0, 0, 6.0], atol=1e-6)


def test_regular_series_not_resampled(template, tmp_path):
    folder = tmp_path / "regular"
    write_series(template, folder, [(-5, 7, z) for z in (-3.0, -1.75, -0.5, 0.75)])
    warnings: list = []
    vol = read_volume(folder, warnings=warnings)
    assert warnings == []
    assert vol.array.shape[0] == 4
    np.testing.assert_allclose(vol.origin, [5, -7, -3.0], atol=1e-6)
    np.testing.assert_allclose(vol.spacing[2], 1.25, atol=1e-6)


def test_two_series_listed_then_chosen(template, tmp_path):
    folder = tmp_path / "two"
    write_series(template, folder, [(0, 0, z) for z in (0, 1, 2)], uid="1.2.826.0.1.3680043.2.1125.1",
                 description="arterial", names=["a0.dcm", "a1.dcm", "a2.dcm"])
    write_series(template, folder, [(0, 0, z) for z in (0, 3)], uid="1.2.826.0.1.3680043.2.1125.2",
                 description="venous", names=["v0.dcm", "v1.dcm"])
    with pytest.raises(AmbiguousInputError) as err:
        read_volume(folder)
    msg = str(err.value)
    for text in ("1.2.826.0.1.3680043.2.1125.1", "1.2.826.0.1.3680043.2.1125.2", "arterial", "venous"):
        assert text in msg
    vol = read_volume(folder, series_uid="1.2.826.0.1.3680043.2.1125.2")
    assert vol.array.shape[0] == 2 and vol.name == "venous"
    with pytest.raises(InputError, match=r"1\.2\.3\.4\.5") as err:
        read_volume(folder, series_uid="1.2.3.4.5")
    assert "1.2.826.0.1.3680043.2.1125.1" in str(err.value)


def test_gantry_tilt_refused(template, tmp_path):
    folder = tmp_path / "tilt"
    # slices 2 mm apart along z, each shifted 0.7 mm in y: a 19 degree tilt
    write_series(template, folder, [(0, 0.7 * k, 2.0 * k) for k in range(4)])
    with pytest.raises(InputError, match=r"(?i)gantry tilt|shear"):
        read_volume(folder)


def test_mixed_orientation_refused(template, tmp_path):
    folder = tmp_path / "mixed"
    write_series(template, folder, [(0, 0, z) for z in (0, 1, 2)], uid="1.2.826.0.1.3680043.2.1125.7")
    write_series(template, folder, [(0, 0, 5)], iop=(1, 0, 0, 0, 0, -1), uid="1.2.826.0.1.3680043.2.1125.7",
                 names=["localizer.dcm"])
    with pytest.raises(InputError, match=r"orientation"):
        read_volume(folder)


def test_duplicate_positions_refused(template, tmp_path):
    folder = tmp_path / "dup"
    write_series(template, folder, [(0, 0, z) for z in (0, 1, 1, 2)])
    with pytest.raises(InputError, match=r"position"):
        read_volume(folder)


def test_junk_and_truncated_files_are_skipped(template, tmp_path):
    folder = tmp_path / "junk"
    paths = write_series(template, folder, [(0, 0, z) for z in (0, 1, 2)])
    (folder / "scan.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(300))
    (folder / "cut.dcm").write_bytes(paths[0].read_bytes()[:100])
    (folder / "notes.txt").write_text("not an image")
    warnings: list = []
    vol = read_volume(folder, warnings=warnings)
    assert vol.array.shape[0] == 3
    text = " ".join(warnings)
    for name in ("scan.png", "cut.dcm", "notes.txt"):
        assert name in text


def test_folder_with_only_segmentations(shared_data):
    with pytest.raises(InputError, match=r"no DICOM image series"):
        read_volume(shared_data / "dcmqi_ct3slice")


def test_empty_and_missing_folder(tmp_path):
    with pytest.raises(InputError, match=r"no DICOM image series"):
        read_volume(tmp_path)
    with pytest.raises(InputError, match=r"does not exist"):
        read_volume(tmp_path / "absent")


def test_three_slice_real_series_matches_simpleitk(shared_data):
    folder = shared_data / "dcmqi_ct3slice/ct-3slice"
    vol = read_volume(folder)
    img = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    np.testing.assert_array_equal(vol.array, sitk.GetArrayFromImage(img))
    assert vol.array.min() == -3024 and vol.array.max() == 1381
    for ijk in [(0, 0, 0), (511, 511, 2), (100, 400, 1)]:
        p = np.array(img.TransformIndexToPhysicalPoint(ijk))
        np.testing.assert_allclose(vol.ijk_to_ras_points([ijk])[0], lps_to_ras_points(p), atol=1e-3)
