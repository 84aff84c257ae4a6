"""Reading inputs: formats, geometry vs SimpleITK, DICOM series checks and bad files."""

import shutil

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from conftest import sitk_index_to_ras, sphere_image
from medseg.core.errors import AmbiguousInputError, InputError
from medseg.io.volume_reader import read_volume


def _check_geometry(vol, img):
    size = np.array(img.GetSize()) - 1
    for ijk in [(0, 0, 0), tuple(size), (size[0] // 2, 0, size[2]), (0, size[1] // 3, size[2] // 2)]:
        np.testing.assert_allclose(vol.ijk_to_ras_points(ijk)[0], sitk_index_to_ras(img, ijk), atol=1e-4)


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz", ".mha"])
def test_formats_round_trip_oblique(tmp_path, suffix):
    img = sphere_image("oblique_aniso_flipped", (0, 0, 0), 10.0, inside=300, outside=-5)
    folder = tmp_path / "päth with spaces"
    folder.mkdir()
    p = folder / f"vol{suffix}"
    sitk.WriteImage(img, str(p))
    vol = read_volume(p)
    assert vol.name == "vol" and vol.meta["path"] == str(p)
    back = sitk.ReadImage(str(p))
    _check_geometry(vol, back)
    np.testing.assert_array_equal(vol.array, sitk.GetArrayFromImage(back))


@pytest.mark.parametrize("rel", ["pyradiomics/brain1_image.nrrd", "pyradiomics/lung1_image.nrrd",
                                 "totalsegmentator/example_ct.nii.gz"])
def test_real_files(shared_data, rel):
    p = shared_data / rel
    vol = read_volume(p)
    img = sitk.ReadImage(str(p))
    _check_geometry(vol, img)
    np.testing.assert_array_equal(vol.array, sitk.GetArrayFromImage(img))


def test_brain1_flip_is_kept(shared_data):
    vol = read_volume(shared_data / "pyradiomics/brain1_image.nrrd")
    # LPS direction diag(1,-1,1) is RAS diag(-1,1,1)
    np.testing.assert_allclose(vol.direction, np.diag([-1.0, 1.0, 1.0]), atol=1e-9)


def test_real_dicom_series(shared_data):
    folder = shared_data / "totalsegmentator/example_ct_dicom"
    warnings = []
    vol = read_volume(folder, warnings=warnings)
    assert warnings == []
    assert vol.shape_ijk == (512, 512, 20)
    assert vol.array.min() == -1024 and vol.array.max() == 1839
    np.testing.assert_allclose(vol.origin, [249.51171875, 437.51171875, -804.5], atol=1e-3)
    r = sitk.ImageSeriesReader()
    r.SetFileNames(r.GetGDCMSeriesFileNames(str(folder)))
    img = r.Execute()
    _check_geometry(vol, img)
    assert vol.meta["modality"] == "CT"


def test_rtstruct_in_folder_is_ignored_with_warning(shared_data):
    warnings = []
    vol = read_volume(shared_data / "rtutils_phantom_rtstruct", warnings=warnings)
    assert vol.shape_ijk == (512, 512, 2)
    assert any("rt.dcm" in w for w in warnings)


def _series(tmp_path, shared_data, n=5, name="series"):
    """A synthetic n-slice series from one real CT slice, 1.25 mm apart."""
    src = pydicom.dcmread(shared_data / "dcmqi_ct3slice/ct-3slice/01.dcm")
    folder = tmp_path / name
    folder.mkdir()
    uid = pydicom.uid.generate_uid()
    base = np.array(src.ImagePositionPatient, dtype=float)
    for k in range(n):
        ds = src.copy()
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [float(x) for x in base + np.array([0, 0, 1.25 * k])]  # element-wise
        ds.save_as(folder / f"s{k:02d}.dcm")
    return folder, uid


def test_missing_slice_warns_and_keeps_geometry(tmp_path, shared_data):
    folder, _ = _series(tmp_path, shared_data, n=6)
    (folder / "s03.dcm").unlink()
    warnings = []
    vol = read_volume(folder, warnings=warnings)
    assert any("missing slice" in w and "2.500" in w for w in warnings)
    assert vol.shape_ijk[2] == 6  # regular 1.25 mm grid over the same extent
    assert vol.spacing[2] == pytest.approx(1.25)


def test_two_series_are_ambiguous(tmp_path, shared_data):
    folder, uid_a = _series(tmp_path, shared_data, n=3)
    other, uid_b = _series(tmp_path, shared_data, n=4, name="other")
    for f in other.iterdir():
        shutil.move(str(f), folder / ("b_" + f.name))
    with pytest.raises(AmbiguousInputError) as e:
        read_volume(folder)
    assert uid_a in str(e.value) and uid_b in str(e.value)
    assert read_volume(folder, series_uid=uid_b).shape_ijk[2] == 4
    with pytest.raises(InputError, match=r"no image series 1.2.3"):
        read_volume(folder, series_uid="1.2.3")


def test_sheared_series_refused(tmp_path, shared_data):
    folder, _ = _series(tmp_path, shared_data, n=4)
    for k, f in enumerate(sorted(folder.iterdir())):
        ds = pydicom.dcmread(f)
        p = np.array(ds.ImagePositionPatient, dtype=float)
        ds.ImagePositionPatient = [float(x) for x in p + np.array([0, 0.8 * k, 0])]  # element-wise
        ds.save_as(f)
    with pytest.raises(InputError, match="gantry tilt"):
        read_volume(folder)


def test_junk_files_skipped(tmp_path, shared_data):
    folder, _ = _series(tmp_path, shared_data, n=3)
    (folder / "picture.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 50)
    (folder / "cut.dcm").write_bytes((folder / "s00.dcm").read_bytes()[:100])
    warnings = []
    vol = read_volume(folder, warnings=warnings)
    assert vol.shape_ijk[2] == 3
    joined = " ".join(warnings)
    assert "picture.png" in joined and "cut.dcm" in joined


def test_2d_is_a_one_slice_volume(tmp_path):
    p = tmp_path / "slice.nrrd"
    sitk.WriteImage(sitk.Image(20, 30, sitk.sitkInt16), str(p))
    vol = read_volume(p)
    assert vol.array.shape == (1, 30, 20) and vol.meta["dims"] == 2


def test_4d_needs_a_frame(tmp_path):
    frames = []
    for k in range(3):
        a = np.full((4, 5, 6), k * 10, np.int16)
        frames.append(sitk.GetImageFromArray(a))
    img4 = sitk.JoinSeries(frames)
    p = tmp_path / "t.nii.gz"
    sitk.WriteImage(img4, str(p))
    with pytest.raises(InputError, match=r"4D with 3 frames.*--frame"):
        read_volume(p)
    vol = read_volume(p, frame=1)
    assert vol.shape_kji == (4, 5, 6) and np.all(vol.array == 10)
    with pytest.raises(InputError, match=r"0..2"):
        read_volume(p, frame=3)


def test_vector_and_complex_refused(tmp_path):
    rgb = sitk.Image([5, 5, 5], sitk.sitkVectorUInt8, 3)
    p = tmp_path / "rgb.mha"
    sitk.WriteImage(rgb, str(p))
    with pytest.raises(InputError, match="components"):
        read_volume(p)
    c = sitk.Image([5, 5, 5], sitk.sitkComplexFloat32)
    p2 = tmp_path / "c.mha"
    sitk.WriteImage(c, str(p2))
    with pytest.raises(InputError, match="complex"):
        read_volume(p2)


def test_missing_unsupported_corrupt(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_volume(tmp_path / "nope.nrrd")
    (tmp_path / "x.bmp").write_bytes(b"abc")
    with pytest.raises(InputError, match="unsupported file type"):
        read_volume(tmp_path / "x.bmp")
    bad = tmp_path / "bad.nrrd"
    bad.write_bytes(np.random.default_rng(0).bytes(300))
    with pytest.raises(InputError, match=r"bad.nrrd"):
        read_volume(bad)
    noise = np.random.default_rng(1).integers(-1000, 1000, size=(20, 30, 40)).astype(np.int16)
    good = tmp_path / "t.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(noise), str(good))
    cut = tmp_path / "cut.nii.gz"
    data = good.read_bytes()
    assert len(data) > 4000
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut.nii.gz"):
        read_volume(cut)
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(InputError, match="no DICOM image series"):
        read_volume(empty_dir)
