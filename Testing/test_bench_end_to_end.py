"""The comparison machinery of ``benchmarks/bench_end_to_end.py`` (``benchmarks/_e2e_support.py``), untimed.

* Both pipelines (``medseg run --model`` and the MONAI bundle-style one) give the same label map on a
  tiny phantom with a tiny untrained, seeded UNet: a grid with a mirroring direction, different sizes
  and spacings per axis and a non-centred origin, resampled per axis by different factors, non-cubic
  windows, non-consecutive label values (2 and 7 on channels 1 and 2). The label files' geometry is
  checked against SimpleITK's reading of the input, and the MONAI side's meshes against the voxel
  extent of their label in RAS.
* The Slicer-style surface of the MONAI side on a voxelised ellipsoid (analytic volume), on a
  mirrored anisotropic grid: enclosed volume, place, outward winding.
* The check fails when it should: a label map shifted by one voxel, two label values swapped, a
  mesh 5 % too large, a label map on another grid.
* A side's peak memory is its own process's, not its parent's.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from benchmark_loader import load_benchmark
from medseg.core.frames import ijk_to_ras_from_sitk

REPO_ROOT = Path(__file__).resolve().parents[1]


e2e = load_benchmark("_e2e_support")

#: tiny phantom: 48 x 40 x 30 voxels (IJK) at 7.5 x 6.5 x 8.5 mm -> working grid 40 x 26 x 17 at 9 x 10 x 15 mm
SHAPE_KJI, SPACING = (30, 40, 48), (7.5, 6.5, 8.5)
WORK_SPACING, ROI = (9.0, 10.0, 15.0), (24, 16, 12)
#: a mirroring direction (i runs towards the patient's left) and an origin off the RAS centre
DIRECTION, ORIGIN = np.diag([-1.0, 1.0, 1.0]), (190.0, -150.0, -100.0)
TINY_ARGS: dict[str, Any] = {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "channels": [4, 8], "strides": [2],
             "num_res_units": 1}
TINY_LABELS = ((2, 1, "Soft", (0.9, 0.2, 0.2)), (7, 2, "Dense", (0.2, 0.9, 0.2)))


@pytest.fixture(scope="module")
def tiny_case(tmp_path_factory):
    """(input NRRD, model folder): the phantom and a seeded, untrained tiny UNet with its card."""
    from monai.networks.nets import UNet

    from medseg.data.phantom import make_chest_phantom
    from medseg.io.volume_writer import write_volume_nrrd
    from medseg.models.authoring import save_model_folder

    root = tmp_path_factory.mktemp("e2e")
    vol, _ = make_chest_phantom(SHAPE_KJI, SPACING, seed=4, direction=DIRECTION, origin=ORIGIN, name="tiny")
    write_volume_nrrd(vol, root / "ct.nrrd", compress=False)
    card = e2e.make_card("tiny-untrained", TINY_ARGS, TINY_LABELS, WORK_SPACING, ROI)
    torch.manual_seed(0)
    save_model_folder(root / "model", card, UNet(**TINY_ARGS).eval())
    return root / "ct.nrrd", root / "model"


def _physical_ras(image: sitk.Image, kji: np.ndarray) -> np.ndarray:
    """RAS mm of voxel indices (rows of K, J, I) by SimpleITK (LPS), x and y negated."""
    pts = np.array([image.TransformIndexToPhysicalPoint([int(i), int(j), int(k)]) for k, j, i in kji])
    return pts * np.array([-1.0, -1.0, 1.0])


def _stl_points_ras(path: Path) -> np.ndarray:
    import vtk
    from vtk.util import numpy_support as ns

    r = vtk.vtkSTLReader()
    r.SetFileName(str(path))
    r.Update()
    return ns.vtk_to_numpy(r.GetOutput().GetPoints().GetData()) * np.array([-1.0, -1.0, 1.0])  # LPS file


@pytest.mark.slow
def test_medseg_and_monai_pipelines_give_the_same_labels(tiny_case, tmp_path):
    ct, model = tiny_case
    ours = e2e.run_medseg_case(ct, tmp_path / "medseg", model_dir=model, device="cpu")
    base = e2e.run_monai_case(ct, tmp_path / "monai", model, device="cpu", sw_batch_size=3)
    # the same working grid on both sides (integer size ratios: both conventions agree exactly), voxel 0's
    # outer edge kept: origin + direction @ (s_out - s_in) / 2
    expected_origin = np.array(ORIGIN) + DIRECTION @ ((np.array(WORK_SPACING) - np.array(SPACING)) / 2)
    for side in (ours, base):
        assert side.work_grid["shape_ijk"] == [40, 26, 17]
        assert np.allclose(side.work_grid["spacing_mm"], WORK_SPACING)
        assert np.allclose(side.work_grid["origin_ras"], expected_origin, atol=1e-6), side.work_grid

    cmp = e2e.compare_outputs(ours, base)
    assert cmp.same_grid
    assert cmp.differing_voxels == 0, cmp.confusion
    assert cmp.agreement == 1.0
    assert set(cmp.dice) == {2, 7} and all(d == 1.0 for d in cmp.dice.values())
    n = int(np.prod(SHAPE_KJI))
    for value, (a, b) in cmp.voxels.items():
        assert a == b and 0.05 * n < a < 0.6 * n, (value, a, n)  # not empty, not everything
    label_problems = [p for p in cmp.problems if "mesh volumes" not in p]
    assert not label_problems

    # both label files lie on the input's grid, as SimpleITK reads the input
    src = sitk.ReadImage(str(ct))
    for side in (ours, base):
        arr, m = e2e.read_labels(Path(side.out_dir) / side.labels_file)
        assert arr.shape == SHAPE_KJI
        assert np.allclose(m, ijk_to_ras_from_sitk(src), atol=1e-6)
        assert set(np.unique(arr).tolist()) == {0, 2, 7}
    out = sitk.ReadImage(str(Path(base.out_dir) / base.labels_file))
    assert np.allclose(out.GetOrigin(), src.GetOrigin()) and np.allclose(out.GetDirection(), src.GetDirection())
    assert np.allclose(out.GetSpacing(), src.GetSpacing())

    # each MONAI mesh (an LPS file) spans its label's voxels in RAS, to within one voxel
    labels = sitk.GetArrayFromImage(out)
    for key, rel in base.meshes.items():
        kji = np.argwhere(labels == int(key))
        corners = _physical_ras(out, np.array([kji.min(0), kji.max(0)]))
        lo, hi = corners.min(0), corners.max(0)
        pts = _stl_points_ras(Path(base.out_dir) / rel)
        tol = np.array(SPACING)
        assert np.all(np.abs(pts.min(0) - lo) <= tol) and np.all(np.abs(pts.max(0) - hi) <= tol), (key, lo, hi)


def _ellipsoid(shape_kji, centre_kji, radii_kji) -> np.ndarray:
    k, j, i = np.ogrid[: shape_kji[0], : shape_kji[1], : shape_kji[2]]
    r = sum(((g - c) / a) ** 2 for g, c, a in zip((k, j, i), centre_kji, radii_kji, strict=True))
    return r <= 1.0


def _signed_volume(pd) -> float:
    from vtk.util import numpy_support as ns

    pts = ns.vtk_to_numpy(pd.GetPoints().GetData()).astype(np.float64)
    polys = ns.vtk_to_numpy(pd.GetPolys().GetConnectivityArray()).reshape(-1, 3)  # all triangles
    a, b, c = pts[polys[:, 0]], pts[polys[:, 1]], pts[polys[:, 2]]
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


def test_slicer_style_surface_of_an_ellipsoid_on_a_mirrored_grid():
    labels = np.zeros((30, 44, 52), dtype=np.uint8)
    inside = _ellipsoid(labels.shape, (14.0, 20.0, 27.0), (9.0, 14.0, 18.0))
    labels[inside] = 5
    labels[2:5, 2:5, 2:5] = 3  # another label: must not enter label 5's surface
    m = np.eye(4)
    m[:3, :3] = np.diag([-0.8, 1.1, 2.0])  # mirroring (det < 0), anisotropic
    m[:3, 3] = (40.0, -20.0, 7.0)
    box = tuple(slice(int(a.min()), int(a.max()) + 1) for a in np.nonzero(labels == 5))
    pd = e2e._slicer_surface(labels, 5, box, m)
    voxel_mm3 = 0.8 * 1.1 * 2.0
    true_mm3 = 4.0 / 3.0 * np.pi * (9.0 * 2.0) * (14.0 * 1.1) * (18.0 * 0.8)
    volume = _signed_volume(pd)
    assert volume > 0  # triangles wound outward on the mirrored grid
    assert volume == pytest.approx(inside.sum() * voxel_mm3, rel=0.02)
    assert volume == pytest.approx(true_mm3, rel=0.03)
    assert e2e._mass(pd)[0] == pytest.approx(volume, rel=1e-6)
    # in place: RAS centre = matrix @ (27, 20, 14) (IJK), extent = the radii in mm
    from vtk.util import numpy_support as ns

    pts = ns.vtk_to_numpy(pd.GetPoints().GetData())
    centre = (m @ np.array([27.0, 20.0, 14.0, 1.0]))[:3]
    assert np.allclose((pts.min(0) + pts.max(0)) / 2, centre, atol=1.0)
    assert np.allclose((pts.max(0) - pts.min(0)) / 2, [18.0 * 0.8, 14.0 * 1.1, 9.0 * 2.0], atol=1.5)


def _side(tmp: Path, name: str, labels: np.ndarray, matrix_lps_spacing=(1.0, 1.2, 1.5), scale_mesh: float = 1.0):
    """A ``SideResult`` with a label file (NRRD via SimpleITK) and one STL per label (scaled about its centre)."""
    import vtk

    out = tmp / name
    (out / "models").mkdir(parents=True)
    img = sitk.GetImageFromArray(labels)
    img.SetSpacing(matrix_lps_spacing)
    img.SetOrigin((5.0, -3.0, 2.0))
    sitk.WriteImage(img, str(out / "labels.nrrd"))
    m = ijk_to_ras_from_sitk(img)
    res = e2e.SideResult(name, str(out), "cpu", 1, labels_file="labels.nrrd")
    for v in (2, 7):
        box = tuple(slice(int(a.min()), int(a.max()) + 1) for a in np.nonzero(labels == v))
        pd = e2e._slicer_surface(labels, v, box, m)
        if scale_mesh != 1.0 and v == 7:
            c = np.array(pd.GetCenter())
            tf = vtk.vtkTransform()
            tf.Translate(*c)
            tf.Scale(*(scale_mesh ** (1.0 / 3.0),) * 3)
            tf.Translate(*(-c))
            tp = vtk.vtkTransformFilter()
            tp.SetInputData(pd)
            tp.SetTransform(tf)
            tp.Update()
            pd = tp.GetOutput()
        e2e._write_stl_lps(pd, out / "models" / f"l{v}.stl")
        res.meshes[str(v)] = f"models/l{v}.stl"
    return res


def test_the_check_fails_when_the_answers_differ(tmp_path):
    labels = np.zeros((24, 30, 36), dtype=np.uint8)
    labels[_ellipsoid(labels.shape, (11.0, 14.0, 16.0), (8.0, 10.0, 12.0))] = 2
    labels[_ellipsoid(labels.shape, (12.0, 15.0, 18.0), (4.0, 5.0, 6.0))] = 7
    ref = _side(tmp_path, "ref", labels)
    same = e2e.compare_outputs(ref, _side(tmp_path, "same", labels.copy()))
    assert same.ok and same.agreement == 1.0 and same.dice == {2: 1.0, 7: 1.0}
    assert same.voxel_mm3 == pytest.approx(1.0 * 1.2 * 1.5)

    shifted = e2e.compare_outputs(ref, _side(tmp_path, "shifted", np.roll(labels, 1, axis=2)))  # one voxel in i
    assert not shifted.ok and shifted.dice[7] < 0.99
    assert any(p.startswith("label 7: Dice") for p in shifted.problems)
    assert shifted.confusion[(7, 2)] > 0 and shifted.differing_voxels > 0

    swapped = labels.copy()
    swapped[labels == 2], swapped[labels == 7] = 7, 2
    sw = e2e.compare_outputs(ref, _side(tmp_path, "swapped", swapped))
    assert not sw.ok and sw.dice[2] < 0.5 and sw.dice[7] < 0.5

    big = e2e.compare_outputs(ref, _side(tmp_path, "big", labels.copy(), scale_mesh=1.05))
    assert big.dice == {2: 1.0, 7: 1.0}
    assert len(big.problems) == 1 and big.problems[0].startswith("label 7: mesh volumes"), big.problems
    va, vb = big.mesh_ml[7]
    assert vb / va == pytest.approx(1.05, rel=1e-3)

    other = e2e.compare_outputs(ref, _side(tmp_path, "other", labels.copy(), matrix_lps_spacing=(1.0, 1.2, 1.6)))
    assert not other.same_grid and not other.ok


@pytest.mark.slow
def test_peak_rss_of_a_child_process_is_its_own():
    """A side runs in a child of a big parent (the phantom's maker); ``ru_maxrss`` keeps the parent's size
    across fork + exec on Linux, so the benchmark reads the child's own high-water mark instead."""
    import subprocess

    import psutil

    held = np.ones(400 * 2**20, dtype=np.uint8)  # 400 MiB resident in this process
    parent_rss = psutil.Process().memory_info().rss
    code = ("import importlib.util, sys; s = importlib.util.spec_from_file_location('m', sys.argv[1]); "
            "m = importlib.util.module_from_spec(s); sys.modules['m'] = m; s.loader.exec_module(m); "
            "print(m.peak_rss_bytes())")
    out = subprocess.run([sys.executable, "-c", code, str(REPO_ROOT / "benchmarks" / "_e2e_support.py")],
                         capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(
                             REPO_ROOT / "MedSegExtension")})
    child_peak = int(out.stdout.split()[-1])
    assert 10 * 2**20 < child_peak < parent_rss - 300 * 2**20, (child_peak, parent_rss)
    assert int(held[::4096].sum()) == held.size // 4096
    assert e2e.peak_rss_bytes() >= parent_rss - 2**20  # this process: at least what it holds now


def test_the_classical_runs_lesions_are_matched_with_the_phantoms(tmp_path):
    """The benchmark writes the phantom's lung lesions beside its input (RAS centroids: the layout's centres,
    the phantom being RAS-aligned) and matches a run's lesion segments with them by centroid distance (the
    radius, at least the minimum): one just inside a lesion's radius is found, one just outside is not, and
    a segment that is not a lesion never counts."""
    from medseg.data.phantom_anatomy import lung_lesion_layout

    path = e2e.phantom_input(tmp_path, "small", log=lambda _m: None)
    truth = json.loads(e2e.lesions_path(path).read_text(encoding="utf-8"))
    layout = {name: np.asarray(centre) for name, _k, centre, _d, _s, _w in lung_lesion_layout()}
    assert [t["name"] for t in truth] == list(layout)
    for t in truth:  # within a voxel (2.8 x 2.8 x 3 mm) of the analytic centre
        assert np.linalg.norm(np.asarray(t["centroid_ras"]) - layout[t["name"]]) < 3.0, t
    mass = next(t for t in truth if t["kind"] == "lung mass")
    assert 30.0 < mass["diameter_mm"] < 38.0  # the 34 mm ball

    t = [{"name": "A", "centroid_ras": [0.0, 0.0, 0.0], "diameter_mm": 20.0},
         {"name": "B", "centroid_ras": [50.0, 0.0, 0.0], "diameter_mm": 4.0},
         {"name": "C", "centroid_ras": [0.0, 80.0, 0.0], "diameter_mm": 12.0}]
    segs = [{"is_lesion": True, "centroid_ras": [0.0, 9.9, 0.0]},       # A: 9.9 of 10 mm
            {"is_lesion": True, "centroid_ras": [50.0, 0.0, 4.9]},      # B: within the 5 mm minimum
            {"is_lesion": True, "centroid_ras": [0.0, 86.1, 0.0]},      # C: 6.1 of 6 mm: no
            {"is_lesion": False, "centroid_ras": [0.0, 80.0, 0.0]}]     # C's place, but not a lesion
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"segments": segs}), encoding="utf-8")
    found, missed, other = e2e.lesions_found(report, t, 5.0)
    assert found == ["A (20 mm)", "B (4 mm)"] and missed == ["C (12 mm)"] and other == 1
