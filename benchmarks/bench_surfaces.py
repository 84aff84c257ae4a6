"""Benchmark: label map -> per-segment closed smoothed surfaces in RAS.

Ours: ``medseg.surface.labelmap_to_meshes`` (both methods, default smoothing 0.5), at mesh quality
``full`` (the same full-resolution output as the baseline) and ``high`` (the default: decimated where
nothing visible is lost, :mod:`medseg.surface.decimation`), with triangle counts and STL sizes.
Baseline ("per-label pipeline", what Slicer's closed-surface conversion does one segment at a time):
for each label, binary mask of the whole (1-voxel padded) volume -> vtkDiscreteMarchingCubes ->
vtkWindowedSincPolyDataFilter (the same settings: 20 iterations, pass band 10**(-4*0.5)) ->
vtkTransformFilter (IJK->RAS) -> vtkPolyDataNormals (consistency on, splitting off).
The baseline does not crop to the label's bounding box (Slicer does not either).

Input: random non-overlapping ellipsoids (5 and 20 labels) in a 200 x 200 x 150 volume with an
oblique, anisotropic, mirrored IJK->RAS matrix (``--quick``: 80 x 80 x 60).

Before timing, both sides must give a closed, manifold surface per label (also once coincident
points are merged, as an STL reader does) whose enclosed volume is within 2 % of the voxel volume
(asserted). Times are the best of ``--repeat`` runs in this process; peak memory is
measured in a fresh child process per side (same input, built there from the same seed): the rise of the
resident-set high-water mark (``VmHWM``) during one call over the RSS just before it.

``--seg FILE`` times ours on a real label map instead (e.g. the ``segmentation.seg.nrrd`` of a full-size
run), per segment: triangles at full and high quality, volume error against the voxel volume.

The first lines say what ran where: CPU count, the CPUs this process may use, torch's intra-op threads
(only when torch is already imported; nothing here uses it) and VTK's SMP backend and threads inside
the meshing.

Usage: python benchmarks/bench_surfaces.py [--quick] [--repeat N] [--seg FILE]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import vtk
from vtk.util import numpy_support as ns

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "MedSegExtension"))

from medseg.core.labelmap import LabelMap, Segment
from medseg.core.mesh_arrays import triangles_of
from medseg.core.threads import usable_cpus
from medseg.core.volume import Volume
from medseg.surface import labelmap_to_meshes, mesh_stats, smoothing_pass_band
from medseg.surface.manifold import manifold_defects
from medseg.surface.meshing import build_meshes, vtk_threads

#: bytes of a binary STL: 80-byte header, triangle count, 50 bytes per triangle
STL_HEADER, STL_PER_TRIANGLE = 84, 50

SMOOTHING = 0.5
VOLUME_TOLERANCE = 0.02


# ----------------------------------------------------------------------------- input
def ellipsoid_labelmap(shape_kji: tuple[int, int, int], n_labels: int, radii: tuple[float, float],
                       seed: int = 0) -> LabelMap:
    """``n_labels`` random non-overlapping ellipsoids (semi-axes in ``radii`` voxels), uint8/uint16."""
    rng = np.random.default_rng(seed)
    arr = np.zeros(shape_kji, dtype=LabelMap.label_dtype(n_labels))
    size = np.array(shape_kji[::-1], float)  # i, j, k
    placed = []
    tries = 0
    while len(placed) < n_labels:
        tries += 1
        if tries > 100_000:
            raise RuntimeError(f"could not place {n_labels} ellipsoids in {shape_kji}")
        r = rng.uniform(radii[0], radii[1], 3)
        c = rng.uniform(r.max() + 2, size - r.max() - 2)
        if any(np.linalg.norm(c - c2) < r.max() + r2 + 2 for c2, r2 in placed):
            continue
        placed.append((c, r.max()))
        lo = np.maximum(np.floor(c - r).astype(int), 0)
        hi = np.minimum(np.ceil(c + r).astype(int) + 1, size.astype(int))
        k, j, i = np.ogrid[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]]
        inside = ((i - c[0]) / r[0]) ** 2 + ((j - c[1]) / r[1]) ** 2 + ((k - c[2]) / r[2]) ** 2 <= 1.0
        arr[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]][inside] = len(placed)
    t = np.deg2rad(25.0)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    direction = rot @ np.diag([1.0, -1.0, 1.0])  # oblique and mirrored (det < 0)
    vol = Volume.from_geometry(arr, (0.8, 0.8, 1.5), (-80.0, 60.0, -100.0), direction, "bench")
    segs = tuple(Segment(f"Segment_{v}", f"blob {v}", (0.8, 0.5, 0.3), v) for v in range(1, n_labels + 1))
    return LabelMap(vol, segs)


# ----------------------------------------------------------------------------- baseline
def baseline_per_label(labelmap: LabelMap) -> dict[str, vtk.vtkPolyData]:
    """One discrete-marching-cubes + windowed-sinc + transform + normals pipeline per label."""
    padded = np.pad(labelmap.array, 1)
    matrix = vtk.vtkMatrix4x4()
    m = labelmap.volume.ijk_to_ras
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(m[r, c]))
    transform = vtk.vtkTransform()
    transform.SetMatrix(matrix)
    out = {}
    k, j, i = padded.shape
    for seg in labelmap.segments:
        mask = (padded == seg.label_value).astype(np.uint8)
        image = vtk.vtkImageData()
        image.SetDimensions(i, j, k)
        image.SetOrigin(-1.0, -1.0, -1.0)
        image.GetPointData().SetScalars(ns.numpy_to_vtk(mask.ravel(), deep=1))
        mc = vtk.vtkDiscreteMarchingCubes()
        mc.SetInputData(image)
        mc.SetValue(0, 1)
        mc.ComputeNormalsOff()
        mc.ComputeGradientsOff()
        mc.ComputeScalarsOff()
        ws = vtk.vtkWindowedSincPolyDataFilter()
        ws.SetInputConnection(mc.GetOutputPort())
        ws.SetNumberOfIterations(20)
        ws.SetPassBand(smoothing_pass_band(SMOOTHING))
        ws.BoundarySmoothingOff()
        ws.FeatureEdgeSmoothingOff()
        ws.NonManifoldSmoothingOn()
        ws.NormalizeCoordinatesOn()
        tf = vtk.vtkTransformFilter()
        tf.SetInputConnection(ws.GetOutputPort())
        tf.SetTransform(transform)
        normals = vtk.vtkPolyDataNormals()
        normals.SetInputConnection(tf.GetOutputPort())
        normals.ConsistencyOn()
        normals.SplittingOff()
        normals.AutoOrientNormalsOn()  # the mirrored matrix turns the winding inside out
        normals.Update()
        out[seg.id] = normals.GetOutput()
    return out


# ----------------------------------------------------------------------------- measuring
def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def measure(fn: Callable[[], dict[str, vtk.vtkPolyData]], repeat: int):
    """(best wall seconds, best process-CPU seconds, over ``repeat`` runs; last result).

    CPU time is reported too because this machine's cores are shared: with VTK's Sequential SMP
    backend both sides are single-threaded, so CPU time is the contention-free cost."""
    wall = cpu = float("inf")
    result = None
    for _ in range(repeat):
        result = None
        t0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        wall = min(wall, time.perf_counter() - t0)
        cpu = min(cpu, time.process_time() - c0)
    return wall, cpu, result


def peak_in_child(side: str, quick: bool, n_labels: int) -> float:
    """Peak RSS rise (MiB) of one call of ``side`` in a fresh interpreter; nan if unavailable."""
    cmd = [sys.executable, __file__, "--child", side, "--labels", str(n_labels)] + (["--quick"] if quick else [])
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=600).stdout
        return float(out.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError):
        return float("nan")


def ours(labelmap: LabelMap, side: str) -> dict[str, vtk.vtkPolyData]:
    """``side`` is ``method:quality``."""
    method, quality = side.split(":")
    return labelmap_to_meshes(labelmap, method=method, smoothing=SMOOTHING, quality=quality)


def child(side: str, labelmap: LabelMap) -> None:
    fn = (lambda: baseline_per_label(labelmap)) if side == "baseline" else (lambda: ours(labelmap, side))
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    except OSError:
        print("nan")
        return
    before = _status_kb("VmRSS")
    result = fn()
    print((_status_kb("VmHWM") - before) / 1024.0)
    del result


def threads_line() -> str:
    torch = sys.modules.get("torch")
    with vtk_threads() as vtk_n:
        backend = vtk.vtkSMPTools.GetBackend()
    torch_text = f"torch {torch.get_num_threads()} threads" if torch is not None else "torch not used"
    return (f"os.cpu_count() {os.cpu_count()}, usable CPUs {usable_cpus()}, {torch_text}, "
            f"VTK SMP {backend} {vtk_n} thread(s) while meshing")


def stl_mb(meshes: dict[str, vtk.vtkPolyData]) -> float:
    return sum(STL_HEADER + STL_PER_TRIANGLE * p.GetNumberOfPolys() for p in meshes.values()) / 1e6


def real_labelmap(path: str, repeat: int) -> None:
    """Ours on a real label map: times at full and high quality, and per segment the triangles and
    the enclosed volume against the voxel volume."""
    from medseg.io.seg_nrrd import read_seg_nrrd

    lm = read_seg_nrrd(path)
    print(f"{path}: KJI {lm.array.shape}, spacing {tuple(float(x) for x in lm.volume.spacing)} mm, "
          f"{len(lm.segments)} segments")
    built = {}
    for quality in ("full", "high"):
        t, c, b = measure(lambda q=quality: build_meshes(lm, smoothing=SMOOTHING, quality=q), repeat)
        built[quality] = b
        check(quality, lm, b.meshes)
        print(f"  quality {quality:5s}: wall {t:6.2f} s  cpu {c:6.2f} s  "
              f"{sum(p.GetNumberOfPolys() for p in b.meshes.values())} triangles  STL {stl_mb(b.meshes):6.1f} MB")
    print("  segment        voxels mm3     full tris  high tris  volume error full / high")
    for seg in lm.segments:
        f, h = built["full"].segments.get(seg.id), built["high"].segments.get(seg.id)
        if f is None or h is None:
            continue
        print(f"  {seg.name[:14]:14s} {f.voxel_volume_mm3:12.1f} {f.triangles:10d} {h.triangles:10d}   "
              f"{100 * f.volume_error:+.3f} % / {100 * h.volume_error:+.3f} %")


def check(name: str, labelmap: LabelMap, meshes: dict[str, vtk.vtkPolyData]) -> float:
    """Assert every mesh is closed and manifold with volume within 2 % of the voxel volume; return
    the worst error."""
    counts = labelmap.voxel_counts()
    worst = 0.0
    for seg in labelmap.segments:
        st = mesh_stats(meshes[seg.id])
        expected = counts[seg.id] * labelmap.volume.voxel_volume_mm3
        err = abs(st["volume_mm3"] - expected) / expected
        assert st["closed"], f"{name}: {seg.id} is not closed ({st['boundary_edges']} boundary edges)"
        assert st["outward"], f"{name}: {seg.id} normals point inward"
        points, tris = triangles_of(meshes[seg.id])
        _, same_point = np.unique(points.astype(np.float32), axis=0, return_inverse=True)
        defects = manifold_defects(same_point.ravel()[tris])
        assert not any(defects.values()), f"{name}: {seg.id} is not manifold: {defects}"
        assert err <= VOLUME_TOLERANCE, f"{name}: {seg.id} volume off by {100 * err:.2f} %"
        worst = max(worst, err)
    return worst


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny smoke size (80 x 80 x 60)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per side (best is kept)")
    ap.add_argument("--seg", help="time ours on this label map (.seg.nrrd) instead of the synthetic one")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--labels", type=int, default=5, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    shape, radii = ((60, 80, 80), (7.0, 12.0)) if args.quick else ((150, 200, 200), (10.0, 24.0))
    if args.child:
        child(args.child, ellipsoid_labelmap(shape, args.labels, radii, seed=args.labels))
        return 0
    print(f"vtk {vtk.vtkVersion.GetVTKVersion()}, smoothing {SMOOTHING}")
    print(threads_line())
    if args.seg:
        real_labelmap(args.seg, args.repeat)
        return 0
    print(f"volume KJI {shape}")
    for n_labels in (5, 20):
        lm = ellipsoid_labelmap(shape, n_labels, radii, seed=n_labels)
        t_base, c_base, base = measure(lambda lm=lm: baseline_per_label(lm), args.repeat)
        e_base = check("baseline", lm, base)
        mb_base = stl_mb(base)
        del base
        m_base = peak_in_child("baseline", args.quick, n_labels)
        print(f"\n{n_labels} labels, {int((lm.array > 0).sum())} labelled voxels")
        print(f"  baseline per-label DMC+sinc      : wall {t_base:6.3f} s  cpu {c_base:6.3f} s  "
              f"peak +{m_base:5.1f} MiB  worst volume error {100 * e_base:.2f} %  STL {mb_base:5.1f} MB")
        for method in ("surface-nets", "flying-edges"):
            for quality in ("full", "high"):
                side = f"{method}:{quality}"
                t, c, meshes = measure(lambda lm=lm, side=side: ours(lm, side), args.repeat)
                e = check(side, lm, meshes)
                tris = sum(p.GetNumberOfPolys() for p in meshes.values())
                mb = stl_mb(meshes)
                del meshes
                m = peak_in_child(side, args.quick, n_labels)
                print(f"  ours {side:27s} : wall {t:6.3f} s  cpu {c:6.3f} s  "
                      f"peak +{m:5.1f} MiB  worst volume error {100 * e:.2f} %  {tris} triangles  STL {mb:5.1f} MB")
                print(f"    speed-up baseline/ours: wall {t_base / t:5.2f}x  cpu {c_base / c:5.2f}x   "
                      f"peak memory ours/baseline {m / m_base:4.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
