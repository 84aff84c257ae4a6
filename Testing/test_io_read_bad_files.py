"""read_volume never answers confidently on input it cannot handle.

Damaged gzip data, headers whose sizes do not match the data, NaN/Inf lost by ITK's NIfTI reader,
data files outside the header's folder, headers that promise huge images, absurd geometry,
non-ASCII paths under a C locale, and ITK's raw warning text on stderr.
"""

from __future__ import annotations

import copy
import gzip
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import generate_uid

from medseg.core.errors import InputError
from medseg.io.volume_reader import read_volume
from medseg.preprocess.intensity import check_finite

SHAPE_KJI = (14, 15, 16)


def _image(dtype=np.int16, seed: int = 0) -> sitk.Image:
    rng = np.random.default_rng(seed)
    img = sitk.GetImageFromArray(rng.integers(0, 1000, size=SHAPE_KJI).astype(dtype))
    img.SetSpacing((0.7, 0.8, 2.5))
    img.SetOrigin((-10.0, 20.0, 5.0))
    return img


def _write(img: sitk.Image, path: Path, compress: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path), compress)
    return path


def _nrrd_parts(path: Path) -> tuple[bytes, bytes]:
    raw = path.read_bytes()
    cut = raw.index(b"\n\n") + 2
    return raw[:cut], raw[cut:]


# ------------------------------------------------------------------- 1. gzip CRC in NRRD data
def _flip_read_silently(bad: Path, head: bytes, data: bytes, want: np.ndarray, header: Path) -> None:
    """Write ``head + data`` with one bit flipped in the deflate data such that ITK reads
    ``header`` without error but with wrong voxels (what a damaged download does)."""
    for pos in range(len(data) // 2, len(data) - 8):
        body = bytearray(data)
        body[pos] ^= 0x01
        bad.write_bytes(head + bytes(body))
        try:
            got = sitk.GetArrayFromImage(sitk.ReadImage(str(header)))
        except RuntimeError:
            continue
        if not np.array_equal(got, want):
            return
    pytest.fail("no flipped bit that ITK reads silently")


def test_gzip_nrrd_with_flipped_data_bit_refused(tmp_path):
    img = _image()
    path = _write(img, tmp_path / "ct.nrrd", compress=True)
    head, data = _nrrd_parts(path)
    bad = tmp_path / "flipped.nrrd"
    _flip_read_silently(bad, head, data, sitk.GetArrayFromImage(img), bad)
    with pytest.raises(InputError, match=r"flipped\.nrrd: the gzip data is (corrupt|truncated)"):
        read_volume(bad)


def test_detached_gzip_data_with_flipped_bit_refused(tmp_path):
    img = _image()
    hdr = _write(img, tmp_path / "ct.nhdr", compress=True)
    data_file = tmp_path / "ct.raw.gz"
    assert f"data file: {data_file.name}" in hdr.read_text()
    np.testing.assert_array_equal(read_volume(hdr).array, sitk.GetArrayFromImage(img))  # intact: read
    _flip_read_silently(data_file, b"", data_file.read_bytes(), sitk.GetArrayFromImage(img), hdr)
    with pytest.raises(InputError, match=r"ct\.raw\.gz: the gzip data is (corrupt|truncated)"):
        read_volume(hdr)


# ------------------------------------------------------------ 2. sizes that do not match the data
@pytest.mark.parametrize("compress", [False, True])
def test_nrrd_sizes_promising_fewer_voxels_refused(tmp_path, compress):
    path = _write(_image(), tmp_path / "ct.nrrd", compress)
    head, data = _nrrd_parts(path)
    fewer = tmp_path / "fewer.nrrd"
    fewer.write_bytes(head.replace(b"sizes: 16 15 14", b"sizes: 16 15 13") + data)
    assert sitk.ReadImage(str(fewer)).GetSize() == (16, 15, 13)  # ITK reads a part silently
    with pytest.raises(InputError, match=r"fewer\.nrrd: the header promises 16x15x13 = 3,120 voxels "
                                         r"\(6,240 bytes of short\), but its attached data holds 6,720 bytes"):
        read_volume(fewer)


@pytest.mark.parametrize("compress", [False, True])
def test_nrrd_with_truncated_data_refused(tmp_path, compress):
    path = _write(_image(), tmp_path / "ct.nrrd", compress)
    head, data = _nrrd_parts(path)
    cut = tmp_path / "cut.nrrd"
    payload = data[:-40] if not compress else gzip.compress(gzip.decompress(data)[:-40])
    cut.write_bytes(head + payload)
    with pytest.raises(InputError, match=r"cut\.nrrd: the header promises 16x15x14 .* holds 6,680 bytes"):
        read_volume(cut)


def test_metaimage_with_more_data_than_promised_refused(tmp_path):
    path = _write(_image(), tmp_path / "ct.mha")
    extra = tmp_path / "extra.mha"
    extra.write_bytes(path.read_bytes() + bytes(32))
    assert sitk.ReadImage(str(extra)).GetSize() == (16, 15, 14)  # ITK ignores the excess
    with pytest.raises(InputError, match=r"extra\.mha: the header promises 16x15x14 .* holds 6,752 bytes"):
        read_volume(extra)


def test_detached_nrrd_with_byte_skip_list_and_pattern_read_exactly(tmp_path):
    """Valid detached forms are read as ITK reads them: byte skip, a data file LIST, a numbered pattern."""
    img = _image()
    hdr = _write(img, tmp_path / "ct.nhdr")
    text, data = hdr.read_text(), (tmp_path / "ct.raw").read_bytes()
    slab = len(data) // 2
    for k in range(2):
        (tmp_path / f"part{k}.raw").write_bytes(data[k * slab:(k + 1) * slab])
    (tmp_path / "skipped.raw").write_bytes(b"JUNKJUNK" + data)
    forms = {"skip.nhdr": "byte skip: 8\ndata file: skipped.raw",
             "list.nhdr": "data file: LIST 3\npart0.raw\npart1.raw",
             "pattern.nhdr": "data file: part%d.raw 0 1 1 3"}
    for name, field in forms.items():
        (tmp_path / name).write_text(text.replace("data file: ct.raw", field))
        np.testing.assert_array_equal(read_volume(tmp_path / name).array, sitk.GetArrayFromImage(img), err_msg=name)
    (tmp_path / "skipped.raw").write_bytes(b"JUNKJUNKX" + data)  # one byte too many now
    with pytest.raises(InputError, match=r"skip\.nhdr: the header promises .* holds 6,721 bytes"):
        read_volume(tmp_path / "skip.nhdr")


# ---------------------------------------------------------------------------- 3. NaN/Inf in NIfTI
@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
def test_nifti_nan_and_inf_arrive_in_the_array(tmp_path, ext):
    arr = sitk.GetArrayFromImage(_image(np.float32))
    arr[1, 2, 3], arr[2, 2, 2], arr[13, 14, 15] = np.nan, np.inf, -np.inf
    img = sitk.GetImageFromArray(arr)
    path = _write(img, tmp_path / f"f{ext}")
    assert np.isfinite(sitk.GetArrayFromImage(sitk.ReadImage(str(path)))).all()  # ITK writes 0 instead
    vol = read_volume(path)
    np.testing.assert_array_equal(vol.array, arr)  # NaN compares equal to NaN here
    assert np.isnan(vol.array[1, 2, 3]) and vol.array[2, 2, 2] == np.inf and vol.array[13, 14, 15] == -np.inf
    with pytest.raises(InputError, match=r"3 non-finite voxel\(s\) \(1 NaN, 2 Inf\)"):
        check_finite(vol)


def test_nifti_nan_in_the_chosen_frame_only(tmp_path):
    frames = [sitk.GetArrayFromImage(_image(np.float32, seed=s)) for s in range(3)]
    frames[1][4, 5, 6] = np.nan
    path = tmp_path / "f4d.nii.gz"
    sitk.WriteImage(sitk.JoinSeries([sitk.GetImageFromArray(f) for f in frames]), str(path))
    assert np.isfinite(read_volume(path, frame=0).array).all()
    assert np.isfinite(read_volume(path, frame=2).array).all()
    one = read_volume(path, frame=1).array
    assert np.isnan(one[4, 5, 6]) and np.isnan(one).sum() == 1


# ------------------------------------------------------------------ 4. data files outside the folder
def _detached(tmp_path: Path, ext: str) -> tuple[Path, str, sitk.Image]:
    img = _image()
    hdr = _write(img, tmp_path / "case" / f"ct{ext}")
    return hdr, hdr.read_text(), img


@pytest.mark.parametrize("ext,field", [(".nhdr", "data file: "), (".mhd", "ElementDataFile = ")])
def test_data_file_outside_header_folder_refused(tmp_path, ext, field):
    hdr, text, img = _detached(tmp_path, ext)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.move(tmp_path / "case" / "ct.raw", outside / "ct.raw")
    want = sitk.GetArrayFromImage(img)
    for target in ("../elsewhere/ct.raw", str(outside / "ct.raw")):
        hdr.write_text(text.replace(field + "ct.raw", field + target))
        with pytest.raises(InputError, match=rf"ct{re.escape(ext)}: its data file .* outside the header's folder"):
            read_volume(hdr)
        np.testing.assert_array_equal(read_volume(hdr, allow_external_data=True).array, want)
    hdr.write_text(text.replace(field + "ct.raw", field + "../../../../../../../../etc/passwd"))
    with pytest.raises(InputError, match=r"resolves to /etc/passwd, outside"):
        read_volume(hdr)
    (tmp_path / "case" / "link.raw").symlink_to(outside / "ct.raw")  # a link escaping the folder
    hdr.write_text(text.replace(field + "ct.raw", field + "link.raw"))
    with pytest.raises(InputError, match=r"link\.raw resolves to .*elsewhere/ct\.raw, outside"):
        read_volume(hdr)


def test_every_listed_data_file_is_checked(tmp_path):
    hdr, text, img = _detached(tmp_path, ".nhdr")
    data = (tmp_path / "case" / "ct.raw").read_bytes()
    (tmp_path / "case" / "a.raw").write_bytes(data[: len(data) // 2])
    (tmp_path / "b.raw").write_bytes(data[len(data) // 2:])
    hdr.write_text(text.replace("data file: ct.raw", "data file: LIST 3\na.raw\n../b.raw"))
    with pytest.raises(InputError, match=r"its data file .*b\.raw resolves to .* outside"):
        read_volume(hdr)
    hdr.write_text(text.replace("data file: ct.raw", "data file: LIST 3\na.raw\n../b.raw"))
    np.testing.assert_array_equal(read_volume(hdr, allow_external_data=True).array, sitk.GetArrayFromImage(img))
    hdr.write_text(text.replace("data file: ct.raw", "data file: part%s.raw 0 1 1 3"))
    with pytest.raises(InputError, match=r"pattern 'part%s\.raw' is not one integer conversion"):
        read_volume(hdr)


# ------------------------------------------------------------------------ 5. huge promised sizes
def test_small_gzip_promising_8_gib_refused(tmp_path):
    bomb = tmp_path / "bomb.nrrd"
    head = (b"NRRD0004\ntype: short\ndimension: 3\nsizes: 2048 2048 1024\nencoding: gzip\nendian: little\n"
            b"space directions: (1,0,0) (0,1,0) (0,0,1)\nspace origin: (0,0,0)\n\n")
    bomb.write_bytes(head + gzip.compress(bytes(1 << 20)))
    with pytest.raises(InputError, match=r"bomb\.nrrd: the header promises 2048x2048x1024 = 4,294,967,296 voxels "
                                         r"\(8\.0 GiB as stored\), more than the limit of 1,073,741,824 voxels.*"
                                         r"--max-voxels"):
        read_volume(bomb)


@pytest.mark.parametrize("ext", [".nii.gz", ".mha", ".nhdr"])
def test_max_voxels_limit_for_each_format(tmp_path, ext):
    path = _write(_image(), tmp_path / f"ct{ext}", compress=True)
    assert read_volume(path, max_voxels=16 * 15 * 14).array.shape == SHAPE_KJI
    with pytest.raises(InputError, match=r"promises 16x15x14 = 3,360 voxels .* limit of 3,359 voxels"):
        read_volume(path, max_voxels=16 * 15 * 14 - 1)


def test_nifti_header_promising_huge_size_refused_before_reading(tmp_path):
    path = _write(_image(), tmp_path / "ct.nii")
    raw = bytearray(path.read_bytes())
    raw[42:48] = np.array([30000, 30000, 30000], dtype="<i2").tobytes()
    (tmp_path / "huge.nii").write_bytes(bytes(raw))
    with pytest.raises(InputError, match=r"huge\.nii: the header promises 30000x30000x30000"):
        read_volume(tmp_path / "huge.nii")


def test_promised_size_over_available_memory_refused(tmp_path, monkeypatch):
    path = _write(_image(), tmp_path / "ct.nrrd")
    monkeypatch.setattr("medseg.io.input_checks.memory_available", lambda: 10_000)
    with pytest.raises(InputError, match=r"ct\.nrrd: the header promises 16x15x14 = 3,360 voxels, which need "
                                         r"13,440 bytes as float32 but only 10,000 bytes of memory is available"):
        read_volume(path)


def test_dicom_series_over_max_voxels_refused(shared_data):
    folder = shared_data / "totalsegmentator/example_ct_dicom"
    with pytest.raises(InputError, match=r"example_ct_dicom \(series .*\): the header promises 512x512x20 = "
                                         r"5,242,880 voxels .* limit of 1,000,000"):
        read_volume(folder, max_voxels=1_000_000)


# ------------------------------------------------------------------------------ 6. absurd geometry
@pytest.mark.parametrize("spacing,match", [
    ((6e-22, 1.0, 1.0), r"voxel spacing 6e-22 mm along i is outside 0\.001\.\.1000 mm"),
    ((1.0, 1e37, 1.0), r"voxel spacing 1e\+37 mm along j is outside"),
    ((1.0, 1.0, 900.0), r"the image is 7200 mm long along k, more than 5000 mm"),
])
def test_absurd_spacing_and_extent_refused(tmp_path, spacing, match):
    img = sitk.Image([4, 5, 8], sitk.sitkInt16)
    img.SetSpacing(spacing)
    path = _write(img, tmp_path / "odd.nrrd")
    with pytest.raises(InputError, match=rf"odd\.nrrd: {match}"):
        read_volume(path)


def test_nearly_singular_direction_and_far_origin_refused(tmp_path):
    path = _write(_image(), tmp_path / "odd.nrrd")
    head, data = _nrrd_parts(path)
    flat = tmp_path / "flat.nrrd"
    flat.write_bytes(head.replace(b"(0,0.80000000000000004,0)", b"(0.7,0.00001,0)") + data)
    with pytest.raises(InputError, match=r"flat\.nrrd: the image axes are nearly coplanar"):
        read_volume(flat)
    far = tmp_path / "far.nrrd"
    far.write_bytes(re.sub(rb"space origin: \([^)]*\)", b"space origin: (1e30,0,0)", head) + data)
    with pytest.raises(InputError, match=r"far\.nrrd: origin -1e\+30, .* more than 1e\+08 mm"):
        read_volume(far)


def test_dicom_with_absurd_pixel_spacing_refused(shared_data, tmp_path):
    template = pydicom.dcmread(str(shared_data / "dcmqi_ct3slice/ct-3slice/01.dcm"))
    uid = generate_uid()
    for k in range(3):
        ds = copy.deepcopy(template)
        ds.Rows, ds.Columns = 4, 5
        ds.PixelSpacing = ["1e-9", "1e-9"]
        ds.ImagePositionPatient = [0.0, 0.0, 2.0 * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SeriesInstanceUID, ds.SOPInstanceUID = uid, generate_uid()
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = np.zeros((4, 5), np.int16).tobytes()
        ds.save_as(str(tmp_path / f"s{k}.dcm"))
    with pytest.raises(InputError, match=r"voxel spacing 1e-09 mm along i is outside"):
        read_volume(tmp_path)


# ------------------------------------------------------------ 7. non-ASCII paths under a C locale
_CHILD = textwrap.dedent("""
    import sys
    from medseg.io.volume_reader import read_volume
    for p in sys.argv[1:]:
        v = read_volume(p)
        print(v.array.shape, int(v.array.astype("int64").sum()))
""")


@pytest.mark.slow
def test_non_ascii_paths_under_c_locale(tmp_path, shared_data):
    folder = tmp_path / "Müller_ß"
    img = _image()
    files = [_write(img, folder / f"ct{ext}") for ext in (".nrrd", ".nhdr", ".mhd", ".nii.gz")]
    dicom = folder / "série_ä"
    shutil.copytree(shared_data / "dcmqi_ct3slice/ct-3slice", dicom)
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}
    env.pop("PYTHONIOENCODING", None)
    done = subprocess.run([sys.executable, "-c", _CHILD, *map(str, files), str(dicom)], env=env,
                          capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    total = int(sitk.GetArrayFromImage(img).astype(np.int64).sum())
    want = sitk.GetArrayFromImage(sitk.ReadImage(sorted(str(p) for p in dicom.iterdir())))
    assert done.stdout.splitlines() == [f"{SHAPE_KJI} {total}"] * 4 + [f"{want.shape} {int(want.sum())}"]
    latin1 = tmp_path / os.fsdecode(b"caf\xe9.nrrd")  # bytes that are no UTF-8: refused, not aborted
    shutil.copy(files[0], latin1)
    done = subprocess.run([sys.executable, "-c", _CHILD, str(latin1)], capture_output=True, timeout=120)
    assert done.returncode == 1
    assert b"InputError: cannot read " in done.stderr and b"the path is not valid UTF-8" in done.stderr


# ---------------------------------------------------------------- 8. no raw ITK text on stderr
def test_itk_warning_text_stays_off_stderr(shared_data, tmp_path, capfd):
    src = shared_data / "totalsegmentator/example_ct_dicom"
    files = sorted(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(src)))
    for k, f in enumerate(files):
        if k != 5:
            shutil.copy(f, tmp_path / f"{k:03d}")
    warnings: list[str] = []
    vol = read_volume(tmp_path, warnings=warnings)
    err = capfd.readouterr().err
    assert "WARNING" not in err and "ImageSeriesReader" not in err and err == ""
    assert any("missing slice" in w for w in warnings)
    assert not any("ImageSeriesReader" in w or "0x" in w for w in warnings)
    assert vol.shape_ijk == (512, 512, 20)


def test_zlib_metaimage_with_bad_check_value_refused(tmp_path):
    path = _write(_image(), tmp_path / "ct.mha", compress=True)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF  # the zlib stream's adler32 check value
    (tmp_path / "bad.mha").write_bytes(bytes(raw))
    with pytest.raises(InputError, match=r"bad\.mha: the zlib data is corrupt"):
        read_volume(tmp_path / "bad.mha")
