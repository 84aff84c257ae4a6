"""DICOM SEG export and import (``medseg.io.dicom_seg``).

Oracles, independent of the code under test: synthetic CT series written by ``dicom_fixtures`` from
SimpleITK images on oblique, anisotropic and flipped grids, with label balls made from SimpleITK's
physical points; the written SEGs read back by highdicom frame by frame against each *file* of the
series (so a swapped or reversed axis shows); dciodvfy on every written SEG; the dcmqi SEGs and the
label map they were made from (``liver_seg.nrrd``); the real JPEG 2000 CT decoded by pydicom.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import generate_uid

from conftest import grid_centre_ras, make_sitk_image, sitk_physical_points_ras
from dicom_fixtures import as_read_by_dicom, write_ct_series
from medseg import __version__
from medseg.core.errors import InputError
from medseg.core.frames import volume_to_sitk
from medseg.core.labelmap import LabelMap, Segment
from medseg.core.terminology import term
from medseg.core.volume import Volume
from medseg.io.dicom_seg import read_dicom_seg, write_dicom_seg
from medseg.io.dicom_series import dicom_source_files, read_dicom_series
from medseg.io.volume_reader import read_volume

#: the non-consecutive label values of the synthetic label maps, and their segments
VALUES = (2, 5, 9)
SEGMENTS = (
    Segment("Segment_2", "Right lung", (0.8, 0.5, 0.4), 2, term("right_lung")),
    Segment("Segment_5", "Nodule 1", (0.1, 0.9, 0.2), 5, {}),  # a lesion without terminology
    Segment("Segment_9", "Liver", (0.2, 0.3, 1.0), 9, term("liver")),
)
EMPTY = Segment("Segment_7", "Nothing here", (1.0, 1.0, 0.0), 7, term("heart"))
LESIONS = {"Segment_5": "lung nodule"}
#: dciodvfy (dicom3tools 2022) predates the Label Map Segmentation IOD (DICOM 2024): on a LABELMAP SEG it
#: finds no IOD, and on a copy relabelled as (binary) Segmentation Storage it reports exactly what differs
#: between the two IODs. These are the only Error lines allowed on a LABELMAP SEG.
LABELMAP_AS_IS = (r"Error - Information Object Not found$",
                  r"Error - SegmentNumber not monotonically increasing from one by one .* SegmentNumber of 0$")
LABELMAP_AS_SEG = (r"Error - Unrecognized enumerated value <LABELMAP> for value 1 of attribute <Segmentation Type>$",
                   r"Error - Value is zero for value 1 of attribute <Segment Number>$",
                   r"Error - Missing attribute Type 1 Required Element=<SegmentIdentificationSequence> "
                   r"Module=<SegmentationMacro>$", LABELMAP_AS_IS[1])


# --------------------------------------------------------------------------- helpers
def dciodvfy(path: Path) -> list[str]:
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.fail("dciodvfy (dicom3tools) not found on PATH; it validates every written DICOM SEG")
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=300, check=False)
    return (proc.stdout + proc.stderr).splitlines()


def assert_dciodvfy_clean(path: Path, labelmap_encoding: bool, tmp_path: Path) -> list[str]:
    """No Error line from dciodvfy (LABELMAP: only the validator-version lines above); the warnings."""
    lines = dciodvfy(path)
    errors = [line for line in lines if line.startswith("Error")]
    if not labelmap_encoding:
        assert errors == [], "\n".join(lines)
        assert any(line.strip() == "Segmentation" for line in lines), "\n".join(lines)  # the IOD it checked
        return [line for line in lines if line.startswith("Warning")]
    assert all(any(re.match(p, e) for p in LABELMAP_AS_IS) for e in errors), "\n".join(lines)
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.7" and ds.SegmentationType == "LABELMAP"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"
    copy = tmp_path / f"{path.stem}_checked_as_binary_iod.dcm"
    ds.save_as(copy)
    lines_as_seg = dciodvfy(copy)
    errors = [line for line in lines_as_seg if line.startswith("Error")]
    assert all(any(re.match(p, e) for p in LABELMAP_AS_SEG) for e in errors), "\n".join(lines_as_seg)
    return [line for line in lines + lines_as_seg if line.startswith("Warning")]


def frames_by_file(seg_path: Path, files: list[Path], segment_numbers: list[int]) -> np.ndarray:
    """highdicom's pixels per source *file* (bool, files x rows x cols x segments)."""
    seg = hd.seg.segread(str(seg_path))
    uids = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    arr = seg.get_pixels_by_source_instance(uids, segment_numbers=segment_numbers, ignore_spatial_locations=True,
                                            assert_missing_frames_are_empty=True)
    return arr > 0


def assert_references(seg_path: Path, files: list[Path]) -> None:
    """Study, frame of reference, series and every per-frame source reference are the CT's."""
    seg = pydicom.dcmread(seg_path)
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    uids = {str(h.SOPInstanceUID) for h in headers}
    assert seg.StudyInstanceUID == headers[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == headers[0].FrameOfReferenceUID
    assert seg.SeriesInstanceUID != headers[0].SeriesInstanceUID
    (series,) = seg.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == headers[0].SeriesInstanceUID
    assert {str(i.ReferencedSOPInstanceUID) for i in series.ReferencedInstanceSequence} == uids
    for frame in seg.PerFrameFunctionalGroupsSequence:
        refs = [str(src.ReferencedSOPInstanceUID) for d in frame.DerivationImageSequence
                for src in d.SourceImageSequence]
        assert len(refs) == 1 and refs[0] in uids


def assert_segment_descriptions(seg_path: Path, kept: tuple[Segment, ...]) -> None:
    seg = hd.seg.segread(str(seg_path))
    assert seg.segment_numbers == list(range(1, len(kept) + 1))
    assert seg.Manufacturer == "MedSeg" and seg.ManufacturerModelName == "MedSeg"
    assert seg.SoftwareVersions == __version__ and seg.SeriesDescription == "MedSeg"
    for number, s in enumerate(kept, start=1):
        d = seg.get_segment_description(number)
        assert d.SegmentLabel == s.name
        assert d.SegmentAlgorithmType == "AUTOMATIC"
        (algo,) = d.SegmentationAlgorithmIdentificationSequence
        assert algo.AlgorithmName == "MedSeg" and algo.AlgorithmVersion == __version__
        assert algo.AlgorithmFamilyCodeSequence[0].CodingSchemeDesignator == "DCM"
        t = s.terminology or term("nodule")  # the lesion without terminology: its kind, "lung nodule"
        cat, typ = d.SegmentedPropertyCategoryCodeSequence[0], d.SegmentedPropertyTypeCodeSequence[0]
        assert (cat.CodingSchemeDesignator, cat.CodeValue, cat.CodeMeaning) == (
            t["category"]["scheme"], t["category"]["code"], t["category"]["meaning"])
        assert (typ.CodingSchemeDesignator, typ.CodeValue, typ.CodeMeaning) == (
            t["type"]["scheme"], t["type"]["code"], t["type"]["meaning"])
        if "type_modifier" in t:
            assert typ.SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == t["type_modifier"]["code"]
        expected_lab = hd.color.CIELabColor.from_rgb(*(255 * c for c in s.color)).value
        assert tuple(d.RecommendedDisplayCIELabValue) == tuple(expected_lab)


def ball_labels(img: sitk.Image) -> np.ndarray:
    """Balls of values 2, 5, 9 (KJI, in ``img``'s own k order) from SimpleITK's physical points."""
    pts = sitk_physical_points_ras(img)
    centre = grid_centre_ras(img)
    spacing = np.array(img.GetSpacing())
    size = np.array(img.GetSize())
    extent = float(np.min(spacing * size))
    d = np.array(img.GetDirection()).reshape(3, 3)
    axis_i_ras = d[:, 0] * np.array([-1, -1, 1])
    out = np.zeros(pts.shape[:3], dtype=np.uint8)
    for n, value in enumerate(VALUES):
        c = centre + (n - 1) * 0.3 * extent * axis_i_ras + np.array([0.0, 0.0, 0.1 * extent * (n - 1)])
        out[np.linalg.norm(pts - c, axis=-1) <= 0.17 * extent] = value
    out[0, 0, :3] = 9  # a corner voxel row: shows a flipped or swapped axis at once
    return out


@pytest.fixture(params=["BINARY", "LABELMAP"])
def encoding(request) -> bool:
    return request.param == "LABELMAP"


@pytest.fixture
def synthetic_ct(geometry_case, tmp_path):
    """(CT volume read back, its files in reader order, the files in the image's k order, labels in that order)."""
    img = make_sitk_image(geometry_case)
    arr = (np.arange(int(np.prod(img.GetSize()))).reshape(img.GetSize()[::-1]) % 2000 - 1000).astype(np.int16)
    ct_img = sitk.GetImageFromArray(arr)
    ct_img.CopyInformation(img)
    written = write_ct_series(ct_img, tmp_path / "ct")
    ct = read_dicom_series(tmp_path / "ct")
    labels_img = sitk.GetImageFromArray(ball_labels(ct_img))
    labels_img.CopyInformation(ct_img)
    # the label map is on the grid the reader returns (k reversed for a flipped grid, same points)
    as_read = as_read_by_dicom(labels_img)
    np.testing.assert_allclose(volume_to_sitk(ct).GetOrigin(), as_read.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(volume_to_sitk(ct).GetDirection(), as_read.GetDirection(), atol=1e-6)
    return ct, dicom_source_files(ct), written, sitk.GetArrayFromImage(labels_img), sitk.GetArrayFromImage(as_read)


# --------------------------------------------------------------------------- writing, synthetic grids
def test_write_exact_on_oblique_flipped_grids(synthetic_ct, encoding, tmp_path):
    ct, files, written, labels_by_file, labels_as_read = synthetic_ct
    lm = LabelMap(ct.with_array(labels_as_read), (*SEGMENTS, EMPTY))
    out = tmp_path / "seg.dcm"
    warnings = write_dicom_seg(lm, files, out, labelmap_encoding=encoding, lesions=LESIONS)
    assert any("'Nothing here'" in w and "no voxels" in w for w in warnings), warnings

    # highdicom, frame by written file (the fixture's k order, not the reader's)
    pixels = frames_by_file(out, written, [1, 2, 3])
    for number, value in enumerate(VALUES):
        np.testing.assert_array_equal(pixels[..., number], labels_by_file == value)
    n_frames = int(pydicom.dcmread(out, stop_before_pixels=True).NumberOfFrames)
    nonempty = [(k, v) for k in range(labels_by_file.shape[0]) for v in VALUES if np.any(labels_by_file[k] == v)]
    # empty frames are left out: one frame per (slice, segment) with voxels, or per slice with any
    expected_frames = len({k for k, _ in nonempty}) if encoding else len(nonempty)
    assert n_frames == expected_frames
    assert_references(out, written)
    assert_segment_descriptions(out, SEGMENTS)
    print(f"dciodvfy warnings ({'LABELMAP' if encoding else 'BINARY'}, synthetic CT):",
          *assert_dciodvfy_clean(out, encoding, tmp_path), sep="\n  ")

    # and MedSeg's reader puts it back exactly (segment numbers 1, 2, 3 as label values)
    read_warnings: list[str] = []
    back = read_dicom_seg(out, ct, warnings=read_warnings)
    assert read_warnings == []
    assert back.volume.same_grid(ct, atol=1e-9)
    assert [s.name for s in back.segments] == [s.name for s in SEGMENTS]
    assert [s.label_value for s in back.segments] == [1, 2, 3]
    for s, orig in zip(back.segments, SEGMENTS, strict=True):
        np.testing.assert_array_equal(back.mask(s), lm.mask(orig))
        np.testing.assert_allclose(s.color, orig.color, atol=1.5 / 255)
        assert s.terminology["type"] == (orig.terminology or term("nodule"))["type"]
    assert back.segments[0].terminology["type_modifier"]["meaning"] == "Right"


def test_write_refuses_label_map_off_the_series_grid(synthetic_ct, tmp_path):
    ct, files, _, _, labels_as_read = synthetic_ct
    shifted = ct.ijk_to_ras.copy()
    shifted[:3, 3] += 0.5
    lm = LabelMap(Volume(labels_as_read, shifted, "shifted"), SEGMENTS)
    with pytest.raises(InputError, match="source series' grid"):
        write_dicom_seg(lm, files, tmp_path / "seg.dcm")
    lm_ok = LabelMap(ct.with_array(labels_as_read), SEGMENTS)
    with pytest.raises(InputError, match="slices"):
        write_dicom_seg(lm_ok, files[:-1], tmp_path / "seg.dcm")
    with pytest.raises(InputError, match="no segment has voxels"):
        write_dicom_seg(LabelMap(ct.with_array(np.zeros_like(labels_as_read)), SEGMENTS), files, tmp_path / "seg.dcm")
    assert not (tmp_path / "seg.dcm").exists()


# --------------------------------------------------------------------------- real data: dcmqi SEGs
@pytest.fixture(scope="module")
def ct3(shared_data):
    return read_dicom_series(shared_data / "dcmqi_ct3slice/ct-3slice")


def test_import_dcmqi_liver_matches_nrrd(shared_data, ct3):
    warnings: list[str] = []
    lm = read_dicom_seg(shared_data / "dcmqi_ct3slice/liver.dcm", ct3, warnings=warnings)
    assert warnings == []
    assert [(s.name, s.label_value) for s in lm.segments] == [("Liver", 1)]
    assert lm.segments[0].terminology["type"]["meaning"] == "Liver"
    assert lm.voxel_counts() == {"Segment_1": 107098}
    nrrd = read_volume(shared_data / "dcmqi_ct3slice/liver_seg.nrrd")
    assert nrrd.same_grid(ct3, atol=1e-3)
    np.testing.assert_array_equal(lm.array == 1, nrrd.array == 1)
    # colour: the SEG's CIELab value, converted back to RGB
    seg = hd.seg.segread(str(shared_data / "dcmqi_ct3slice/liver.dcm"))
    rgb = hd.color.CIELabColor.from_dicom_value(seg.SegmentSequence[0].RecommendedDisplayCIELabValue).to_rgb()
    np.testing.assert_allclose(lm.segments[0].color, np.array(rgb) / 255.0, atol=1e-9)


def test_import_dcmqi_partial_overlaps_later_segment_wins(shared_data, ct3):
    path = shared_data / "dcmqi_ct3slice/partial_overlaps.dcm"
    warnings: list[str] = []
    lm = read_dicom_seg(path, ct3, warnings=warnings)
    names = ["GREEN", "ORANGE", "PURPLE", "LIGHT_BLUE", "DARK_BLUE"]
    assert [s.name for s in lm.segments] == names
    files = dicom_source_files(ct3)
    masks = frames_by_file(path, files, [1, 2, 3, 4, 5])  # (3, 512, 512, 5), reader's k order
    assert masks.sum(axis=(0, 1, 2)).tolist() == [9602, 11888, 10743, 6693, 4713]  # as the data README says
    assert int((masks.sum(axis=-1) > 2).sum()) == 28  # three segments share 28 voxels
    expected = np.zeros(masks.shape[:3], dtype=np.uint8)
    for n in range(5):
        expected[masks[..., n]] = n + 1
    np.testing.assert_array_equal(lm.array, expected)
    (overlap,) = [w for w in warnings if "overlap" in w]
    pairs = [(a, b) for a in range(5) for b in range(a + 1, 5) if np.any(masks[..., a] & masks[..., b])]
    assert pairs
    for a, b in pairs:
        n = int((masks[..., a] & masks[..., b]).sum())
        assert f"{names[a]!r} and {names[b]!r}: {n} voxels" in overlap
    assert "later segment" in overlap
    assert f"overlap in {int((masks.sum(axis=-1) > 1).sum())} voxels" in overlap


def test_import_refusals_and_foreign_frames(shared_data, ct3, tmp_path):
    liver = shared_data / "dcmqi_ct3slice/liver.dcm"
    # two of the three CT images: the third slice's frame references an image not in the series
    part = tmp_path / "ct2"
    part.mkdir()
    for name in ("01.dcm", "02.dcm"):
        shutil.copy(shared_data / "dcmqi_ct3slice/ct-3slice" / name, part / name)
    ct2 = read_dicom_series(part)
    warnings: list[str] = []
    lm = read_dicom_seg(liver, ct2, warnings=warnings)
    assert any("1 of 3 frames reference images that are not in the reference series" in w for w in warnings)
    full = read_dicom_seg(liver, ct3)
    k_of = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): k
            for k, f in enumerate(dicom_source_files(ct3))}
    kept = [k_of[str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)] for f in dicom_source_files(ct2)]
    np.testing.assert_array_equal(lm.array, full.array[kept])
    # a series of another frame of reference: refused with the reason
    img = make_sitk_image("axial_iso")
    write_ct_series(img, tmp_path / "other")
    with pytest.raises(InputError, match="frame of reference"):
        read_dicom_seg(liver, read_dicom_series(tmp_path / "other"))
    # not a SEG at all
    with pytest.raises(InputError, match="not a readable DICOM SEG"):
        read_dicom_seg(shared_data / "dcmqi_ct3slice/ct-3slice/01.dcm", ct3)


def test_round_trip_on_dcmqi_ct(ct3, encoding, tmp_path):
    arr = np.zeros(ct3.array.shape, dtype=np.uint8)
    arr[0:2, 100:200, 50:120] = 2
    arr[1:3, 300:310, 200:400] = 5
    arr[2, 10:20, 30:35] = 9
    arr[2, 500, 500:504] = 4  # a value no segment describes: left out, with a warning
    lm = LabelMap(ct3.with_array(arr), SEGMENTS)
    out = tmp_path / "seg.dcm"
    warnings = write_dicom_seg(lm, dicom_source_files(ct3), out, labelmap_encoding=encoding, lesions=LESIONS)
    assert any("label values [4] (4 voxels) belong to no segment" in w for w in warnings), warnings
    print(f"dciodvfy warnings ({'LABELMAP' if encoding else 'BINARY'}, dcmqi CT):",
          *assert_dciodvfy_clean(out, encoding, tmp_path), sep="\n  ")
    assert_references(out, dicom_source_files(ct3))
    back = read_dicom_seg(out, ct3)
    for s, orig in zip(back.segments, SEGMENTS, strict=True):
        np.testing.assert_array_equal(back.mask(s), lm.mask(orig))


# --------------------------------------------------------------------------- real data: JPEG 2000 CT
@pytest.fixture(scope="module")
def real_ct(shared_data, tmp_path_factory):
    """The TotalSegmentator DICOM CT as shipped, and a copy whose blanked UIDs are filled in."""
    src = shared_data / "totalsegmentator/example_ct_dicom"
    mended = tmp_path_factory.mktemp("real_ct")
    study, series = generate_uid(), generate_uid()
    for f in sorted(src.iterdir()):
        ds = pydicom.dcmread(f)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.save_as(mended / f.name)
    return src, mended


def test_real_jpeg2000_ct(real_ct, shared_data, encoding, tmp_path):
    src, mended = real_ct
    seg_img = sitk.ReadImage(str(shared_data / "totalsegmentator/example_seg_dicom.nii.gz"))
    # the shipped series has blanked study/series/instance UIDs: no SEG can reference it
    ct_src = read_dicom_series(src)
    everywhere = LabelMap(ct_src.with_array(np.full(ct_src.array.shape, 2, np.uint8)), SEGMENTS[:1])
    with pytest.raises(InputError, match="StudyInstanceUID"):
        write_dicom_seg(everywhere, dicom_source_files(ct_src), tmp_path / "refused.dcm")
    ct = read_dicom_series(mended)
    files = dicom_source_files(ct)
    # pydicom decodes the JPEG 2000 pixels: file k holds slice k of the volume (HU)
    for k in (0, len(files) - 1):
        ds = pydicom.dcmread(files[k])
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(hu, ct.array[k])
    # TotalSegmentator's labels (stored with a flipped y axis) onto the CT grid by nearest neighbour
    labels = sitk.Resample(seg_img, volume_to_sitk(ct), sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    arr = sitk.GetArrayFromImage(labels).astype(np.uint8)
    segs = (Segment("Segment_1", "Spleen", (0.6, 0.4, 0.3), 1, {}),
            Segment("Segment_5", "Liver", (0.9, 0.5, 0.4), 5, term("liver")),
            Segment("Segment_20", "Colon", (0.8, 0.7, 0.5), 20, {}))
    arr[~np.isin(arr, (1, 5, 20))] = 0
    counts = np.bincount(arr.ravel(), minlength=21)
    assert counts[1] > 0 and counts[5] > 0 and counts[20] > 0
    lm = LabelMap(ct.with_array(arr), segs)
    out = tmp_path / "seg.dcm"
    warnings = write_dicom_seg(lm, files, out, labelmap_encoding=encoding)
    assert not any("no voxels" in w for w in warnings)
    pixels = frames_by_file(out, files, [1, 2, 3])
    for n, s in enumerate(segs):
        np.testing.assert_array_equal(pixels[..., n], arr == s.label_value)
    assert_references(out, files)
    print(f"dciodvfy warnings ({'LABELMAP' if encoding else 'BINARY'}, real CT):",
          *assert_dciodvfy_clean(out, encoding, tmp_path), sep="\n  ")
    back = read_dicom_seg(out, ct)
    for s, orig in zip(back.segments, segs, strict=True):
        np.testing.assert_array_equal(back.mask(s), lm.mask(orig))
