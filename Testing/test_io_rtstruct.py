"""RTSTRUCT export and import: synthetic CT series on oblique/anisotropic/flipped grids, the real
JPEG 2000 CT of the shared data, and two real RTSTRUCTs.

Oracles: dciodvfy (dicom3tools) for the standard; an independent reader (pydicom for the contour
data, SimpleITK's series reader for the geometry, matplotlib's point-in-polygon at pixel centres,
even-odd across a slice's contours) for what a treatment-planning system would rasterise; the input
series' UIDs for the references; polygon areas integrated over slices for the imports.

dicompyler-core 0.5.6 (the newest release) was tried as a third-party reader: it installs, but does
not import with pydicom 3 (``pydicom.dicomio.read_file`` and ``pydicom.pixel_data_handlers`` are
gone), so the independent reader here is built from pydicom, SimpleITK and matplotlib.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from matplotlib.path import Path as MplPath
from scipy import ndimage

from conftest import make_sitk_image, sitk_physical_points_ras
from dicom_fixtures import as_read_by_dicom, write_ct_series
from medseg import __version__
from medseg.core.errors import InputError
from medseg.core.labelmap import LabelMap, Segment
from medseg.core.terminology import term
from medseg.core.volume import Volume
from medseg.io.dicom_series import dicom_source_files
from medseg.io.rtstruct import STRUCTURE_SET_LABEL, read_rtstruct, write_rtstruct
from medseg.io.volume_reader import read_volume


# ----------------------------------------------------------------------------- oracles
def dciodvfy(path: Path) -> list[str]:
    """Run dciodvfy; fail on any line with "Error"; return (and print) the warnings."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.fail("dciodvfy (dicom3tools) is not on PATH; install dicom3tools to validate DICOM output",
                    pytrace=False)
    run = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=300)
    lines = (run.stdout + run.stderr).splitlines()
    errors = [line for line in lines if "Error" in line]
    warnings = [line for line in lines if "Warning" in line]
    print(f"dciodvfy {path.name}: {len(warnings)} warning(s)", *warnings, sep="\n  ")
    assert not errors, "\n".join(errors)
    return warnings


def sitk_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def independent_masks(rt_path: Path, ct_folder: Path) -> dict[str, np.ndarray]:
    """ROI name -> KJI mask on SimpleITK's grid of the CT series, without MedSeg's code."""
    img = sitk_series(ct_folder)
    n_i, n_j, n_k = img.GetSize()
    d = np.array(img.GetDirection()).reshape(3, 3) * np.array(img.GetSpacing())
    inv, origin = np.linalg.inv(d), np.array(img.GetOrigin())
    ds = pydicom.dcmread(str(rt_path))
    names = {int(r.ROINumber): str(r.ROIName) for r in ds.StructureSetROISequence}
    out = {}
    for rc in ds.ROIContourSequence:
        mask = np.zeros((n_k, n_j, n_i), dtype=bool)
        for c in rc.get("ContourSequence", []):
            assert c.ContourGeometricType == "CLOSED_PLANAR"
            lps = np.array(c.ContourData, dtype=float).reshape(-1, 3)
            assert len(lps) == int(c.NumberOfContourPoints)
            idx = (lps - origin) @ inv.T
            k = round(float(idx[0, 2]))
            if not 0 <= k < n_k:
                continue  # a slice the series lacks
            np.testing.assert_allclose(idx[:, 2], k, atol=1e-3)
            lo = np.clip(np.floor(idx[:, :2].min(axis=0)).astype(int), 0, None)
            hi = np.minimum(np.ceil(idx[:, :2].max(axis=0)).astype(int) + 1, [n_i, n_j])
            jj, ii = np.mgrid[lo[1]:hi[1], lo[0]:hi[0]]
            inside = MplPath(idx[:, :2]).contains_points(np.column_stack([ii.ravel(), jj.ravel()]))
            mask[k, lo[1]:hi[1], lo[0]:hi[0]] ^= inside.reshape(jj.shape)
        out[names[int(rc.ReferencedROINumber)]] = mask
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def check_references(rt_path: Path, ct_files: list[Path]) -> None:
    """Study, frame of reference, patient copied; every image referenced, every reference an image of
    the series, and each contour on the plane of the image it references."""
    rt = pydicom.dcmread(str(rt_path))
    cts = {str(h.SOPInstanceUID): h for h in (pydicom.dcmread(str(f), stop_before_pixels=True) for f in ct_files)}
    ct = next(iter(cts.values()))
    for key in ("StudyInstanceUID", "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
                "StudyTime", "AccessionNumber", "ReferringPhysicianName", "StudyID", "FrameOfReferenceUID"):
        assert rt.get(key) == ct.get(key), key
    assert rt.SeriesInstanceUID != ct.SeriesInstanceUID and rt.SOPInstanceUID not in cts
    assert rt.Modality == "RTSTRUCT" and rt.Manufacturer == "MedSeg" and rt.SoftwareVersions == __version__
    assert rt.StructureSetLabel == STRUCTURE_SET_LABEL and "not reviewed" in rt.StructureSetDescription
    assert rt.ApprovalStatus == "UNAPPROVED"
    (frame,) = rt.ReferencedFrameOfReferenceSequence
    assert frame.FrameOfReferenceUID == ct.FrameOfReferenceUID
    (study,) = frame.RTReferencedStudySequence
    assert study.ReferencedSOPInstanceUID == ct.StudyInstanceUID
    (series,) = study.RTReferencedSeriesSequence
    assert series.SeriesInstanceUID == ct.SeriesInstanceUID
    listed = [str(x.ReferencedSOPInstanceUID) for x in series.ContourImageSequence]
    assert sorted(listed) == sorted(cts)
    for x in series.ContourImageSequence:
        assert x.ReferencedSOPClassUID == (cts[str(x.ReferencedSOPInstanceUID)].SOPClassUID
                                           or cts[str(x.ReferencedSOPInstanceUID)].file_meta.MediaStorageSOPClassUID)
    for roi in rt.StructureSetROISequence:
        assert roi.ReferencedFrameOfReferenceUID == ct.FrameOfReferenceUID
        assert roi.ROIGenerationAlgorithm == "AUTOMATIC" and __version__ in roi.ROIGenerationDescription
    for rc in rt.ROIContourSequence:
        for c in rc.ContourSequence:
            (ref,) = c.ContourImageSequence
            image = cts[str(ref.ReferencedSOPInstanceUID)]
            iop = np.array(image.ImageOrientationPatient, dtype=float)
            normal = np.cross(iop[:3], iop[3:])
            pts = np.array(c.ContourData, dtype=float).reshape(-1, 3)
            np.testing.assert_allclose(pts @ normal, np.array(image.ImagePositionPatient, dtype=float) @ normal,
                                       atol=1e-3)


# ----------------------------------------------------------------------------- synthetic series
def test_write_ct_series_matches_simpleitk_geometry(geometry_case, tmp_path):
    img = make_sitk_image(geometry_case)
    arr = (np.arange(int(np.prod(img.GetSize()))).reshape(sitk.GetArrayViewFromImage(img).shape) % 3000 - 1024)
    hu = sitk.GetImageFromArray(arr.astype(np.int16))
    hu.CopyInformation(img)
    files = write_ct_series(hu, tmp_path / "ct")
    assert len(files) == img.GetSize()[2]
    warnings: list[str] = []
    vol = read_volume(tmp_path / "ct", warnings=warnings)
    assert warnings == []
    expected = as_read_by_dicom(hu)
    pts = sitk_physical_points_ras(expected)
    k, j, i = np.meshgrid(*(np.arange(n) for n in vol.array.shape), indexing="ij")
    got = vol.ijk_to_ras_points(np.column_stack([i.ravel(), j.ravel(), k.ravel()])).reshape(pts.shape)
    np.testing.assert_allclose(got, pts, atol=1e-4)
    np.testing.assert_array_equal(vol.array, sitk.GetArrayFromImage(expected))
    # the files the reader lists are those written, in the reader's slice order
    order = files[::-1] if np.linalg.det(np.array(img.GetDirection()).reshape(3, 3)) < 0 else files
    assert [Path(f) for f in dicom_source_files(vol)] == order


def synthetic_labels(shape_kji: tuple[int, int, int]) -> np.ndarray:
    """Values 2 (a ring with a hole, and an island of 2 in the hole), 5 (an island in the hole),
    9 (two blobs touching only at a corner); shifted per slice, empty first and last slices."""
    arr = np.zeros(shape_kji, dtype=np.uint8)
    for k in range(1, shape_kji[0] - 1):
        s = k % 3
        sl = arr[k]
        sl[5 + s:30 + s, 5:35] = 2
        sl[10 + s:25 + s, 10:30] = 0
        sl[12 + s:15 + s, 12:15] = 2
        sl[18 + s:22 + s, 20:27] = 5
        sl[31:34, 3 + s:7 + s] = 9
        sl[34:37, 7 + s:11 + s] = 9
    return arr


SEGMENTS = (
    Segment("Segment_2", "Body", (0.9, 0.7, 0.5), 2, term("body")),
    Segment("Segment_5", "Lesion 1", (1.0, 0.0, 0.0), 5, term("nodule", region="lung")),
    Segment("Segment_9", "Left lung", (0.2, 0.6, 1.0), 9, term("left_lung")),
)
LESIONS = {"Segment_5": "lung nodule"}
ROI_NAMES = {2: "External", 5: "GTV1", 9: "Lung_L"}


def test_rtstruct_round_trip_on_synthetic_series(geometry_case, tmp_path):
    ct = tmp_path / "ct"
    write_ct_series(make_sitk_image(geometry_case), ct)
    vol = read_volume(ct)
    labels = synthetic_labels(vol.shape_kji)
    lm = LabelMap(vol.with_array(labels), SEGMENTS)
    files = dicom_source_files(vol)
    rt_path = tmp_path / "rtstruct.dcm"
    assert write_rtstruct(lm, files, rt_path, lesions=LESIONS) == []
    dciodvfy(rt_path)
    check_references(rt_path, files)

    rt = pydicom.dcmread(str(rt_path))
    rois = {int(r.ROINumber): r for r in rt.StructureSetROISequence}
    assert {n: str(r.ROIName) for n, r in rois.items()} == ROI_NAMES
    assert str(rois[5].ROIDescription) == "Lesion 1 (lung nodule)" and str(rois[9].ROIDescription) == "Left lung"
    types = {int(o.ReferencedROINumber): o.RTROIInterpretedType for o in rt.RTROIObservationsSequence}
    assert types == {2: "EXTERNAL", 5: "GTV", 9: "ORGAN"}
    colours = {int(c.ReferencedROINumber): [int(x) for x in c.ROIDisplayColor] for c in rt.ROIContourSequence}
    assert colours == {2: [230, 178, 128], 5: [255, 0, 0], 9: [51, 153, 255]}
    per_slice = {int(c.ReferencedROINumber): len(c.ContourSequence) for c in rt.ROIContourSequence}
    n_slices = vol.shape_kji[0] - 2
    # 2: outer + hole + island; 5: one; 9: two blobs touching at a corner are two contours
    assert per_slice == {2: 3 * n_slices, 5: n_slices, 9: 2 * n_slices}

    warnings: list[str] = []
    back = read_rtstruct(rt_path, vol, warnings=warnings)
    assert warnings == []
    assert back.volume.same_grid(vol)
    np.testing.assert_array_equal(back.array, labels)  # label values 2, 5, 9 kept
    assert [(s.name, s.label_value) for s in back.segments] == [(ROI_NAMES[v], v) for v in (2, 5, 9)]
    assert back.segment("Lung_L").terminology == term("left_lung")
    assert back.segment("External").color == pytest.approx((230 / 255, 178 / 255, 128 / 255))

    other = independent_masks(rt_path, ct)
    for value, name in ROI_NAMES.items():
        d = dice(other[name], labels == value)
        print(f"{geometry_case} {name}: Dice {d:.4f} (independent reader)")
        assert d >= 0.97
        np.testing.assert_array_equal(other[name], labels == value)  # exact voxel-boundary contours


def test_contour_points_are_voxel_corners_by_simpleitk(tmp_path):
    """One voxel on the oblique, anisotropic, flipped grid: its contour is the 4 corners
    (i +- 0.5, j +- 0.5, k) that SimpleITK places in LPS, and it references slice k's image."""
    img = make_sitk_image("oblique_aniso_flipped")
    files = write_ct_series(img, tmp_path / "ct")
    vol = read_volume(tmp_path / "ct")
    as_read = as_read_by_dicom(img)
    labels = np.zeros(vol.shape_kji, dtype=np.uint8)
    i, j, k = 40, 17, 3
    labels[k, j, i] = 4
    seg = Segment("Segment_4", "Heart", (1.0, 0.0, 0.0), 4, term("heart"))
    write_rtstruct(LabelMap(vol.with_array(labels), (seg,)), dicom_source_files(vol), tmp_path / "rt.dcm")
    rt = pydicom.dcmread(str(tmp_path / "rt.dcm"))
    (contour,) = rt.ROIContourSequence[0].ContourSequence
    pts = np.array(contour.ContourData, dtype=float).reshape(-1, 3)
    corners = [as_read.TransformContinuousIndexToPhysicalPoint((i + di, j + dj, float(k)))
               for di, dj in ((-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5))]
    assert len(pts) == 4
    for c in corners:
        assert np.min(np.linalg.norm(pts - np.array(c), axis=1)) < 1e-3
    slice_file = files[::-1][k]  # the flipped grid is read in reverse file order
    ref = contour.ContourImageSequence[0].ReferencedSOPInstanceUID
    assert ref == pydicom.dcmread(str(slice_file), stop_before_pixels=True).SOPInstanceUID
    assert str(rt.StructureSetROISequence[0].ROIName) == "Heart"
    back = read_rtstruct(tmp_path / "rt.dcm", vol)
    np.testing.assert_array_equal(back.array, labels)


def test_contour_longer_than_64_kib_round_trips(tmp_path):
    """A staircase outline of over 2,300 points (~70 KB of ContourData): more than an explicit-VR DS element
    can hold, so the file is Implicit VR Little Endian, and still valid and exact."""
    img = sitk.Image([600, 600, 2], sitk.sitkInt16)
    img.SetSpacing((0.8, 0.8, 2.0))
    img.SetOrigin((-1200.0, -1300.0, -1400.0))
    write_ct_series(img, tmp_path / "ct")
    vol = read_volume(tmp_path / "ct")
    yy, xx = np.mgrid[:600, :600]
    diamond = (np.abs(yy - 300) + np.abs(xx - 300) < 290).astype(np.uint8)
    labels = np.stack([diamond, np.zeros_like(diamond)])
    lm = LabelMap(vol.with_array(labels), (Segment("Segment_1", "Diamond", (1.0, 1.0, 0.0), 1),))
    write_rtstruct(lm, dicom_source_files(vol), tmp_path / "rt.dcm")
    rt = pydicom.dcmread(str(tmp_path / "rt.dcm"))
    assert rt.file_meta.TransferSyntaxUID == pydicom.uid.ImplicitVRLittleEndian
    (contour,) = rt.ROIContourSequence[0].ContourSequence
    assert int(contour.NumberOfContourPoints) > 2300
    assert len("\\".join(str(x) for x in contour.ContourData)) > 65535
    dciodvfy(tmp_path / "rt.dcm")
    np.testing.assert_array_equal(read_rtstruct(tmp_path / "rt.dcm", vol).array, labels)


def test_write_refuses_a_label_map_off_the_series_grid(tmp_path):
    write_ct_series(make_sitk_image("oblique_aniso_flipped"), tmp_path / "ct")
    vol = read_volume(tmp_path / "ct")
    lm = LabelMap(vol.with_array(synthetic_labels(vol.shape_kji)), SEGMENTS)
    files = dicom_source_files(vol)
    with pytest.raises(InputError, match="not that of the label map's slice"):
        write_rtstruct(lm, files[::-1], tmp_path / "rt.dcm")
    with pytest.raises(InputError, match="slices but"):
        write_rtstruct(lm, files[:-1], tmp_path / "rt.dcm")
    shifted = vol.ijk_to_ras.copy()
    shifted[0, 3] += 1.0
    with pytest.raises(InputError, match="label map"):
        write_rtstruct(LabelMap(Volume(lm.array, shifted), SEGMENTS), files, tmp_path / "rt.dcm")
    assert not (tmp_path / "rt.dcm").exists()


def test_segments_without_voxels_and_stray_values_are_warned(tmp_path):
    write_ct_series(make_sitk_image("axial_iso"), tmp_path / "ct")
    vol = read_volume(tmp_path / "ct")
    labels = synthetic_labels(vol.shape_kji)
    labels[labels == 9] = 0
    labels[0, 0, 0] = 77
    lm = LabelMap(vol.with_array(labels), SEGMENTS)
    warnings = write_rtstruct(lm, dicom_source_files(vol), tmp_path / "rt.dcm", lesions=LESIONS)
    assert any("'Left lung' has no voxels" in w for w in warnings)
    assert any("[77] have no segment" in w for w in warnings)
    rt = pydicom.dcmread(str(tmp_path / "rt.dcm"))
    assert [str(r.ROIName) for r in rt.StructureSetROISequence] == ["External", "GTV1"]
    only = read_rtstruct(tmp_path / "rt.dcm", vol, rois=["GTV1"])
    np.testing.assert_array_equal(only.array, np.where(labels == 5, 5, 0))


def test_read_overlaps_smallest_wins_and_bad_contours_are_warned(tmp_path):
    """An RTSTRUCT edited with pydicom: a big ROI listed last that covers the others, a contour half a
    slice off its plane, a POINT contour, an ROI without contours; then ROI numbers out of range."""
    write_ct_series(make_sitk_image("oblique_aniso_flipped"), tmp_path / "ct")
    vol = read_volume(tmp_path / "ct")
    labels = synthetic_labels(vol.shape_kji)
    write_rtstruct(LabelMap(vol.with_array(labels), SEGMENTS), dicom_source_files(vol), tmp_path / "rt.dcm",
                   lesions=LESIONS)
    rt = pydicom.dcmread(str(tmp_path / "rt.dcm"))
    contours = {int(c.ReferencedROINumber): c for c in rt.ROIContourSequence}
    # ROI 40 "Big": slice 4 entirely (a square around the whole slice, from the image corners)
    m = vol.ijk_to_ras
    n_i, n_j, _ = vol.shape_ijk
    corners = np.array([[-0.5, -0.5, 4], [n_i - 0.5, -0.5, 4], [n_i - 0.5, n_j - 0.5, 4], [-0.5, n_j - 0.5, 4]])
    lps = (corners @ m[:3, :3].T + m[:3, 3]) * [-1, -1, 1]
    big = pydicom.Dataset()
    big.ContourGeometricType, big.NumberOfContourPoints = "CLOSED_PLANAR", 4
    big.ContourData = [f"{x:.4f}" for x in lps.ravel()]
    roi = pydicom.Dataset()
    roi.ROINumber, roi.ROIName, roi.ReferencedFrameOfReferenceUID = 40, "Big", rt.FrameOfReferenceUID
    rc = pydicom.Dataset()
    rc.ReferencedROINumber, rc.ROIDisplayColor, rc.ContourSequence = 40, [1, 2, 3], [big]
    empty = pydicom.Dataset()
    empty.ROINumber, empty.ROIName, empty.ReferencedFrameOfReferenceUID = 41, "Empty", rt.FrameOfReferenceUID
    rt.StructureSetROISequence.extend([roi, empty])
    rt.ROIContourSequence.append(rc)
    # Lung_L: one contour moved half a slice along the normal; GTV1: a POINT
    lung = contours[9].ContourSequence
    moved = pydicom.Dataset()
    moved.ContourGeometricType, moved.NumberOfContourPoints = "CLOSED_PLANAR", lung[0].NumberOfContourPoints
    pts = np.array(lung[0].ContourData, dtype=float).reshape(-1, 3) + 0.5 * m[:3, 2] * [-1, -1, 1]
    moved.ContourData = [f"{x:.4f}" for x in pts.ravel()]
    lung.append(moved)
    point = pydicom.Dataset()
    point.ContourGeometricType, point.NumberOfContourPoints = "POINT", 1
    point.ContourData = list(lung[0].ContourData[:3])
    contours[5].ContourSequence.append(point)
    rt.save_as(tmp_path / "edited.dcm")

    warnings: list[str] = []
    lm = read_rtstruct(tmp_path / "edited.dcm", vol, warnings=warnings)
    assert "ROI 'Empty' has no contours; left out" in warnings
    assert any(w.startswith("ROI 'Lung_L': 1 contour(s) not on a slice plane of the reference (up to 2.50 mm off")
               for w in warnings), warnings
    assert "ROI 'GTV1': 1 contour(s) not CLOSED_PLANAR with >= 3 points; ignored" in warnings
    (overlap,) = [w for w in warnings if w.startswith("ROIs overlap")]
    for name, value in (("External", 2), ("GTV1", 5), ("Lung_L", 9)):
        assert f"'{name}' inside 'Big' ({int((labels[4] == value).sum())} voxels)" in overlap
    expected = labels.copy()
    expected[4][labels[4] == 0] = 40
    np.testing.assert_array_equal(lm.array, expected)
    assert lm.segment("Big").color == pytest.approx((1 / 255, 2 / 255, 3 / 255))
    # only the ROIs asked for: no overlap
    warnings = []
    only = read_rtstruct(tmp_path / "edited.dcm", vol, warnings=warnings, rois=["Big"])
    assert not any("overlap" in w for w in warnings)
    assert (only.array[4] == 40).all() and (only.array[[0, 1, 2, 3, 5]] == 0).all()
    with pytest.raises(InputError, match="no ROI named"):
        read_rtstruct(tmp_path / "edited.dcm", vol, rois=["Nothing"])
    # ROI numbers that cannot be label values: 1, 2, ... in file order
    for r, c, o in zip(rt.StructureSetROISequence[:3], rt.ROIContourSequence[:3], rt.RTROIObservationsSequence,
                       strict=True):
        r.ROINumber = c.ReferencedROINumber = o.ReferencedROINumber = int(r.ROINumber) + 70000
    rt.save_as(tmp_path / "big_numbers.dcm")
    warnings = []
    lm = read_rtstruct(tmp_path / "big_numbers.dcm", vol, warnings=warnings)
    assert any("not unique values in 1..65535" in w for w in warnings)
    assert [(s.name, s.label_value) for s in lm.segments] == [("External", 1), ("GTV1", 2), ("Lung_L", 3), ("Big", 4)]


# ----------------------------------------------------------------------------- real CT
def with_uids(folder: Path, out: Path) -> Path:
    """A copy of ``folder``'s series with the study, series and instance UIDs its anonymiser blanked
    (instance UIDs from the file meta; SOP Class UID left blank; pixel data copied as stored, JPEG 2000)."""
    out.mkdir()
    study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    for f in sorted(folder.iterdir()):
        ds = pydicom.dcmread(str(f))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.save_as(out / f.name)
    return out


@pytest.mark.slow
def test_rtstruct_on_real_jpeg2000_ct(shared_data, tmp_path):
    original = shared_data / "totalsegmentator" / "example_ct_dicom"
    vol = read_volume(original)
    assert vol.shape_kji == (20, 512, 512)
    hu = vol.array
    body = np.zeros(hu.shape, dtype=bool)
    for k in range(hu.shape[0]):
        lab, n = ndimage.label(hu[k] > -400)
        if n:
            sizes = ndimage.sum_labels(np.ones_like(lab), lab, range(1, n + 1))
            body[k] = ndimage.binary_fill_holes(lab == 1 + int(np.argmax(sizes)))
    labels = np.zeros(hu.shape, dtype=np.uint8)
    labels[body] = 3
    labels[body & (hu < -400)] = 8  # air inside the body (lungs, bowel gas)
    labels[body & (hu > 300)] = 12  # bone
    segments = (Segment("Segment_3", "Body", (0.9, 0.7, 0.5), 3, term("body")),
                Segment("Segment_8", "Air in body", (0.3, 0.7, 0.6), 8),
                Segment("Segment_12", "Bones", (0.95, 0.95, 0.85), 12, term("bone")))
    for value in (3, 8, 12):
        assert (labels == value).sum() > 1000
    # the shared series' anonymiser blanked its study, series and instance UIDs: nothing to attach to
    with pytest.raises(InputError, match="StudyInstanceUID, SeriesInstanceUID empty"):
        write_rtstruct(LabelMap(vol.with_array(labels), segments), dicom_source_files(vol), tmp_path / "no.dcm")
    assert not (tmp_path / "no.dcm").exists()

    folder = with_uids(original, tmp_path / "ct")
    vol = read_volume(folder)
    np.testing.assert_array_equal(vol.array, hu)
    lm = LabelMap(vol.with_array(labels), segments)
    files = dicom_source_files(vol)
    rt_path = tmp_path / "rtstruct.dcm"
    # its SOP Class UIDs are still blank: referenced with the file meta's (CT Image Storage)
    assert write_rtstruct(lm, files, rt_path) == [
        "20 blank SOP Class/Instance UID(s) in the source images taken from their file meta"]
    dciodvfy(rt_path)
    check_references(rt_path, files)
    names = {3: "External", 8: "Air in body", 12: "Bones"}
    rt = pydicom.dcmread(str(rt_path))
    assert {int(r.ROINumber): str(r.ROIName) for r in rt.StructureSetROISequence} == names

    back = read_rtstruct(rt_path, vol)
    other = independent_masks(rt_path, folder)
    for value, name in names.items():
        d_own, d_other = dice(back.array == value, labels == value), dice(other[name], labels == value)
        print(f"example_ct_dicom {name}: Dice {d_own:.4f} (read_rtstruct), {d_other:.4f} (independent)")
        assert d_own >= 0.97 and d_other >= 0.97
    np.testing.assert_array_equal(back.array, labels)


# ----------------------------------------------------------------------------- real RTSTRUCTs
def even_odd_area_mm2(contours: list[np.ndarray], row: np.ndarray, col: np.ndarray) -> float:
    """Area (mm^2) of a slice's contours under the even-odd rule, from the polygons themselves."""
    planar = [np.column_stack([c @ row, c @ col]) for c in contours]
    total = 0.0
    for n, p in enumerate(planar):
        x, y = p[:, 0], p[:, 1]
        area = 0.5 * abs(float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y)))
        depth = sum(bool(MplPath(q).contains_point(p[0])) for m, q in enumerate(planar) if m != n)
        total += area if depth % 2 == 0 else -area
    return total


def polygon_area_on_grid(rt: pydicom.Dataset, roi_number: int, vol: Volume) -> float:
    """Even-odd polygon area integrated over the slices the reference has (mm^3)."""
    m = vol.ijk_to_ras
    row = m[:3, 0] / np.linalg.norm(m[:3, 0]) * [-1, -1, 1]  # LPS row and column directions
    col = m[:3, 1] / np.linalg.norm(m[:3, 1]) * [-1, -1, 1]
    normal = np.cross(row, col)
    origin_lps = m[:3, 3] * [-1, -1, 1]
    planes: dict[int, list[np.ndarray]] = {}
    (rc,) = [c for c in rt.ROIContourSequence if int(c.ReferencedROINumber) == roi_number]
    for c in rc.ContourSequence:
        pts = np.array(c.ContourData, dtype=float).reshape(-1, 3)
        k = (float(np.mean((pts - origin_lps) @ normal)) / vol.spacing[2])
        if abs(k - round(k)) < 0.1 and 0 <= round(k) < vol.shape_kji[0]:
            planes.setdefault(round(k), []).append(pts)
    return sum(even_odd_area_mm2(cs, row, col) for cs in planes.values()) * float(vol.spacing[2])


def test_import_rtutils_phantom_with_other_frame_of_reference(shared_data):
    folder = shared_data / "rtutils_phantom_rtstruct"
    vol = read_volume(folder)
    warnings: list[str] = []
    lm = read_rtstruct(folder / "rt.dcm", vol, warnings=warnings)
    assert len(warnings) == 1 and "frame of reference" in warnings[0] and "differs" in warnings[0]
    assert [s.name for s in lm.segments] == ["ROI-1"]
    mask = lm.mask(lm.segments[0])
    # both contours lie on ct_1 (z = 60 mm; the data README says one per slice): a 24 mm square with an
    # octagon inside it, which the even-odd rule makes a hole
    assert mask[0].any() and not mask[1].any()
    centre = np.rint(vol.ras_to_ijk_points([[39.5, 39.5, 60.0]])[0]).astype(int)  # LPS (-39.5, -39.5, 60)
    assert not mask[centre[2], centre[1], centre[0]]
    assert mask[centre[2], centre[1], centre[0] + round(10.0 / float(vol.spacing[0]))]  # 10 mm out: the ring
    rt = pydicom.dcmread(str(folder / "rt.dcm"))
    expected = polygon_area_on_grid(rt, int(rt.StructureSetROISequence[0].ROINumber), vol)
    got = float(mask.sum()) * vol.voxel_volume_mm3
    print(f"phantom ROI-1: rasterised {got:.1f} mm^3, polygons {expected:.1f} mm^3")
    assert got == pytest.approx(expected, rel=0.03)
    other = independent_masks(folder / "rt.dcm", folder)
    assert dice(other["ROI-1"], mask) >= 0.99


def test_import_dicompyler_breast_with_missing_ct_slices(shared_data):
    folder = shared_data / "dicompyler_breast_rtstruct"
    vol = read_volume(folder)
    assert vol.shape_kji[0] == 1
    rt = pydicom.dcmread(str(folder / "rtss.dcm"))
    assert len(rt.StructureSetROISequence) == 10
    warnings: list[str] = []
    lm = read_rtstruct(folder / "rtss.dcm", vol, warnings=warnings)
    assert "ROI 'Areola' has no contours; left out" in warnings
    assert "ROI 'BODY': 137 of 141 contours lie on slices the reference does not have; dropped, the rest " \
           "rasterised" in warnings
    assert "ROI 'Lt Lung': 165 of 165 contours lie on slices the reference does not have; dropped, the rest " \
           "rasterised" in warnings
    dropped = [w for w in warnings if "contours lie on slices the reference does not have" in w]
    assert len(dropped) == 9  # every ROI with contours but Areola
    assert not any("frame of reference" in w for w in warnings)
    assert [s.name for s in lm.segments] == ["BODY"]
    # the 4 BODY contours on the CT slice are those that reference it
    refs = [c for rc in rt.ROIContourSequence for c in rc.get("ContourSequence", [])
            if c.ContourImageSequence[0].ReferencedSOPInstanceUID == pydicom.dcmread(
                str(folder / "ct.0.dcm"), stop_before_pixels=True).SOPInstanceUID]
    assert len(refs) == 4
    body = lm.segment("BODY")
    expected = polygon_area_on_grid(rt, int(body.label_value), vol)
    got = float(lm.mask(body).sum()) * vol.voxel_volume_mm3
    print(f"breast BODY on ct.0: rasterised {got:.0f} mm^3, polygons {expected:.0f} mm^3")
    assert got == pytest.approx(expected, rel=0.03)
    other = independent_masks(folder / "rtss.dcm", folder)
    assert dice(other["BODY"], lm.mask(body)) >= 0.99


def test_read_refuses_a_non_rtstruct(shared_data):
    vol = read_volume(shared_data / "rtutils_phantom_rtstruct")
    with pytest.raises(InputError, match="not an RT Structure Set"):
        read_rtstruct(shared_data / "rtutils_phantom_rtstruct" / "ct_1.dcm", vol)
