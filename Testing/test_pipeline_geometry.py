"""End to end: a sphere at a known RAS point comes out at that point in every output file.

Oracle: voxel positions from SimpleITK (LPS) converted to RAS; the outputs are read back with
independent readers (SimpleITK for the seg.nrrd, raw JSON for the markups, raw VTK for the STL).
"""

import json

import numpy as np
import pytest
import SimpleITK as sitk
import vtk
from vtk.util.numpy_support import vtk_to_numpy

from conftest import grid_centre_ras, make_sitk_image, sitk_physical_points_ras, sphere_image
from medseg.cli import main


def _half_voxel(img: sitk.Image) -> float:
    return 0.5 * float(np.linalg.norm(img.GetSpacing()))


@pytest.fixture()
def sphere_case(tmp_path, geometry_case):
    img = make_sitk_image(geometry_case)
    centre = grid_centre_ras(img) + np.array([1.3, -2.1, 0.7])
    radius = 9.0
    sphere = sphere_image(geometry_case, centre, radius, inside=100, outside=0)
    folder = tmp_path / "päth with spaces"
    folder.mkdir()
    path = folder / "sphere.nrrd"
    sitk.WriteImage(sphere, str(path))
    return path, sphere, centre, radius


def test_sphere_lands_at_its_ras_point_in_every_file(sphere_case, tmp_path):
    path, sphere, centre, radius = sphere_case
    out = tmp_path / "out ü"
    rc = main(["-q", "run", str(path), "--task", "threshold", "--threshold", "50", "--out", str(out),
               "--formats", "stl,vtp", "--no-html"])
    assert rc == 0
    tol = _half_voxel(sphere)
    truth_mask = sitk.GetArrayFromImage(sphere) > 50
    pts = sitk_physical_points_ras(sphere)
    voxel_centroid = pts[truth_mask].mean(axis=0)
    assert np.linalg.norm(voxel_centroid - centre) < tol

    # segmentation: read with SimpleITK, positions via its own physical points
    seg = sitk.ReadImage(str(out / "segmentation.seg.nrrd"))
    seg_arr = sitk.GetArrayFromImage(seg)
    np.testing.assert_array_equal(seg_arr > 0, truth_mask)
    seg_centroid = sitk_physical_points_ras(seg)[seg_arr > 0].mean(axis=0)
    assert np.linalg.norm(seg_centroid - centre) < tol

    # report centroid
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    (lesion,) = [s for s in report["segments"] if s["name"] == "Lesion 1"]
    assert np.linalg.norm(np.array(lesion["centroid_ras"]) - centre) < tol
    assert lesion["voxel_count"] == int(truth_mask.sum())

    # markups: LPS file, convert by hand here (independent of medseg.frames)
    mk = json.loads((out / "boxes.mrk.json").read_text(encoding="utf-8"))
    (roi,) = mk["markups"]
    assert roi["coordinateSystem"] == "LPS"
    box_centre = np.array(roi["center"]) * [-1, -1, 1]
    assert np.linalg.norm(box_centre - centre) < tol
    size = np.array(roi["size"])
    assert np.all(size >= 2 * radius - 2 * np.array(sphere.GetSpacing()))

    # STL: raw points are LPS; header says so
    raw = (out / "models" / "Lesion_1.stl").read_bytes()
    assert b"SPACE=LPS" in raw[:80]
    reader = vtk.vtkSTLReader()
    reader.SetFileName(str(out / "models" / "Lesion_1.stl"))
    reader.Update()
    mass = vtk.vtkMassProperties()
    tri = vtk.vtkTriangleFilter()
    tri.SetInputData(reader.GetOutput())
    mass.SetInputConnection(tri.GetOutputPort())
    mass.Update()
    com = vtk.vtkCenterOfMass()
    com.SetInputData(reader.GetOutput())
    com.SetUseScalarsAsWeights(False)
    com.Update()
    mesh_centre = np.array(com.GetCenter()) * [-1, -1, 1]
    assert np.linalg.norm(mesh_centre - centre) < tol
    voxel_volume = truth_mask.sum() * np.prod(sphere.GetSpacing())
    assert mass.GetVolume() == pytest.approx(voxel_volume, rel=0.1)
    # the VTP carries the same surface
    r2 = vtk.vtkXMLPolyDataReader()
    r2.SetFileName(str(out / "models" / "Lesion_1.vtp"))
    r2.Update()
    p_vtp = vtk_to_numpy(r2.GetOutput().GetPoints().GetData())
    p_stl = vtk_to_numpy(reader.GetOutput().GetPoints().GetData())
    np.testing.assert_allclose(p_vtp.mean(axis=0), p_stl.mean(axis=0), atol=1e-3)
