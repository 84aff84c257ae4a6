"""read_volume on image files: geometry against SimpleITK's physical points, values, errors."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import make_sitk_image, sitk_index_to_ras, sitk_physical_points_ras
from medseg.core.errors import InputError
from medseg.io.volume_reader import read_volume, volume_name

EXTENSIONS = [".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd"]


@pytest.fixture()
def odd_dir(tmp_path):
    """A folder whose path has spaces and non-ASCII characters."""
    d = tmp_path / "päth with spaces"
    d.mkdir()
    return d


def _random_image(case: str, pixel=sitk.sitkInt16, seed: int = 0) -> sitk.Image:
    ref = make_sitk_image(case, pixel)
    dtype = sitk.GetArrayViewFromImage(ref).dtype
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 200, size=sitk.GetArrayViewFromImage(ref).shape).astype(dtype)
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(ref)
    return img


def _check_geometry(volume, img: sitk.Image, atol: float) -> None:
    """Every voxel centre of ``volume`` (RAS) equals ITK's physical point (LPS -> RAS)."""
    pts = sitk_physical_points_ras(img)  # (K, J, I, 3)
    k, j, i = np.meshgrid(*[np.arange(n) for n in volume.array.shape], indexing="ij")
    ijk = np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1)
    np.testing.assert_allclose(volume.ijk_to_ras_points(ijk), pts.reshape(-1, 3), atol=atol)


@pytest.mark.parametrize("ext", EXTENSIONS)
def test_roundtrip_geometry_and_values(odd_dir, geometry_case, ext):
    img = _random_image(geometry_case)
    path = odd_dir / f"my scan.v2{ext}"
    sitk.WriteImage(img, str(path))
    warnings: list = []
    vol = read_volume(path, warnings=warnings)
    assert warnings == []
    assert vol.name == "my scan.v2"
    np.testing.assert_array_equal(vol.array, sitk.GetArrayFromImage(img))
    assert vol.array.dtype == np.int16
    # NIfTI stores the matrix as float32, hence the looser tolerance
    _check_geometry(vol, img, atol=1e-3 if ext.startswith(".nii") else 1e-6)
    assert vol.meta["format"] == {".nrrd": "NRRD", ".nhdr": "NRRD", ".nii": "NIfTI", ".nii.gz": "NIfTI"}.get(
        ext, "MetaImage"
    )
    assert vol.meta["path"].endswith(path.name)


@pytest.mark.parametrize(
    "pixel,dtype",
    [(sitk.sitkUInt8, np.uint8), (sitk.sitkUInt16, np.uint16), (sitk.sitkInt32, np.int32),
     (sitk.sitkFloat64, np.float64)],
)
def test_dtype_kept_as_read(tmp_path, pixel, dtype):
    img = _random_image("axial_iso", pixel)
    sitk.WriteImage(img, str(tmp_path / "a.nrrd"))
    vol = read_volume(tmp_path / "a.nrrd")
    assert vol.array.dtype == dtype
    np.testing.assert_array_equal(vol.array, sitk.GetArrayFromImage(img))


@pytest.mark.parametrize(
    "rel,shape_kji,ras_direction",
    [
        # brain1 direction diag(1,-1,1) in LPS -> RAS columns diag(-1, 1, 1)
        ("pyradiomics/brain1_image.nrrd", (25, 256, 256), np.diag([-1.0, 1.0, 1.0])),
        ("pyradiomics/lung1_image.nrrd", (48, 512, 512), np.diag([-1.0, -1.0, 1.0])),
        # example_ct direction diag(-1,-1,1) in LPS -> identity in RAS
        ("totalsegmentator/example_ct.nii.gz", (112, 101, 122), np.eye(3)),
    ],
)
def test_real_files_match_simpleitk(shared_data, rel, shape_kji, ras_direction):
    path = shared_data / rel
    vol = read_volume(path)
    img = sitk.ReadImage(str(path))
    assert vol.array.shape == shape_kji
    assert vol.name == path.name.split(".")[0]
    np.testing.assert_array_equal(vol.array, sitk.GetArrayViewFromImage(img))
    np.testing.assert_allclose(vol.direction, ras_direction, atol=1e-6)
    size = np.array(img.GetSize())
    probes = [(0, 0, 0), tuple(size - 1), (size[0] - 1, 0, 0), (0, size[1] - 1, 0), (0, 0, size[2] - 1), (17, 5, 3)]
    for ijk in probes:
        np.testing.assert_allclose(vol.ijk_to_ras_points(np.array([ijk]))[0], sitk_index_to_ras(img, ijk), atol=1e-6)


def test_single_slice_3d_is_accepted(tmp_path):
    img = sitk.Image([8, 9, 1], sitk.sitkInt16)
    img.SetSpacing((0.5, 0.5, 3.0))
    sitk.WriteImage(img, str(tmp_path / "one.nrrd"))
    vol = read_volume(tmp_path / "one.nrrd")
    assert vol.array.shape == (1, 9, 8)
    np.testing.assert_allclose(vol.spacing, [0.5, 0.5, 3.0])


def test_2d_image_is_a_one_slice_volume(tmp_path):
    sitk.WriteImage(sitk.Image(64, 48, sitk.sitkInt16), str(tmp_path / "flat.nrrd"))
    vol = read_volume(tmp_path / "flat.nrrd")
    assert vol.array.shape == (1, 48, 64) and vol.meta["dims"] == 2


@pytest.mark.parametrize("ext", [".nii.gz", ".mha"])
def test_4d_needs_frame(odd_dir, ext):
    frames = [_random_image("oblique_aniso_flipped", seed=s) for s in range(3)]
    path = odd_dir / f"series4d{ext}"
    sitk.WriteImage(sitk.JoinSeries(frames), str(path))
    with pytest.raises(InputError, match=r"4D with 3 frames.*\(0\.\.2\)"):
        read_volume(path)
    vol = read_volume(path, frame=1)
    np.testing.assert_array_equal(vol.array, sitk.GetArrayFromImage(frames[1]))
    _check_geometry(vol, frames[1], atol=1e-3)
    assert vol.meta["frame"] == 1
    for bad in (3, -1):
        with pytest.raises(InputError, match=r"out of range.*0\.\.2"):
            read_volume(path, frame=bad)


def test_4d_with_single_frame_is_3d(tmp_path):
    img = _random_image("axial_iso")
    sitk.WriteImage(sitk.JoinSeries([img]), str(tmp_path / "one_frame.nii.gz"))
    vol = read_volume(tmp_path / "one_frame.nii.gz")
    np.testing.assert_array_equal(vol.array, sitk.GetArrayFromImage(img))


def test_vector_image_refused(tmp_path):
    comps = [_random_image("axial_iso", sitk.sitkUInt8, seed=s) for s in range(3)]
    sitk.WriteImage(sitk.Compose(comps), str(tmp_path / "rgb.nrrd"))
    with pytest.raises(InputError, match=r"rgb\.nrrd.*vector of 8-bit unsigned integer.*3 components"):
        read_volume(tmp_path / "rgb.nrrd")


def test_complex_image_refused(tmp_path):
    sitk.WriteImage(sitk.Image([4, 4, 4], sitk.sitkComplexFloat32), str(tmp_path / "c.nii"))
    with pytest.raises(InputError, match=r"complex"):
        read_volume(tmp_path / "c.nii")


def test_frame_on_plain_3d(tmp_path):
    sitk.WriteImage(_random_image("axial_iso"), str(tmp_path / "a.mha"))
    assert read_volume(tmp_path / "a.mha", frame=0).array.shape == (40, 40, 40)
    with pytest.raises(InputError, match=r"a\.mha.*is 3D"):
        read_volume(tmp_path / "a.mha", frame=1)


def test_missing_path(tmp_path):
    with pytest.raises(InputError, match=r"does not exist") as err:
        read_volume(tmp_path / "nope.nrrd")
    assert "nope.nrrd" in str(err.value)


def test_unsupported_extension(tmp_path):
    (tmp_path / "photo.bmp").write_bytes(b"BM" + bytes(64))
    with pytest.raises(InputError, match=r"photo\.bmp.*unsupported file type"):
        read_volume(tmp_path / "photo.bmp")


def test_random_bytes_nrrd(odd_dir):
    path = odd_dir / "garbage.nrrd"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(InputError, match=r"cannot read .*garbage\.nrrd as NRRD") as err:
        read_volume(path)
    assert isinstance(err.value.__cause__, RuntimeError)  # chained, not swallowed


def test_truncated_nifti(tmp_path):
    good = tmp_path / "good.nii.gz"
    sitk.WriteImage(_random_image("axial_iso"), str(good))
    raw = gzip.decompress(good.read_bytes())
    bad = tmp_path / "cut.nii.gz"
    bad.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    with pytest.raises(InputError, match=r"cut\.nii\.gz.*truncated"):
        read_volume(bad)
    cut_stream = tmp_path / "cut_stream.nii.gz"
    data = good.read_bytes()
    cut_stream.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut_stream\.nii\.gz.*truncated"):
        read_volume(cut_stream)
    plain = tmp_path / "cut.nii"
    plain.write_bytes(raw[: len(raw) - 10])
    with pytest.raises(InputError, match=r"cut\.nii.*truncated"):
        read_volume(plain)


def test_mhd_without_raw(tmp_path):
    sitk.WriteImage(_random_image("axial_iso"), str(tmp_path / "a.mhd"))
    (tmp_path / "a.raw").unlink()
    with pytest.raises(InputError, match=r"a\.mhd"):
        read_volume(tmp_path / "a.mhd")


def test_volume_name():
    assert volume_name(Path("/x/lung1_image.nrrd")) == "lung1_image"
    assert volume_name(Path("/x/example_ct.nii.gz")) == "example_ct"
    assert volume_name(Path("/x/case.01.MHA")) == "case.01"
    assert volume_name(Path("/x/series_folder")) == "series_folder"
